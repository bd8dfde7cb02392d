//! Properties of the whole translation: independent of input order, inputs never mutated, stable names.
use super::*;

/// A mix of everything, for the order and mutation checks.
fn mixed_inputs() -> Inputs {
    let imports = vec![
        import("demo", "web")
            .ip(VIP)
            .port("http", None, 80)
            .port("https", None, 443)
            .affinity("ClientIP", Some(0))
            .build(),
        import("demo", "dns").ip(VIP2).port("tcp", None, 53).udp("udp", 53).build(),
        import("prod", "web")
            .ip("198.19.0.3")
            .port("http", None, 80)
            .status_clusters(&["west", "c3"])
            .annotation(k8s::LOCALITY_ANNOTATION, "local")
            .build(),
        // Loses VIP:80/TCP to demo/web, which sorts first.
        import("demo", "web-copy").ip(VIP).port("http", None, 80).build(),
        import("demo", "headless").type_("Headless").build(),
        import("demo", "pending").port("http", None, 80).build(),
        web().port(Some("x"), Some("SCTP"), 1).build().with_ips(&["198.19.0.4"]).renamed("bad"),
    ];
    let mut slices = vec![
        slice("demo", "web", "east")
            .port("http", None, 8080)
            .port("https", None, 8443)
            .ready("198.18.0.1")
            .ready("198.18.0.300")
            .terminating("198.18.0.5")
            .build(),
        slice("demo", "web", "west")
            .port("https", None, 9443)
            .port("http", None, 9080)
            .ready("198.18.0.2")
            .not_ready("198.18.0.3")
            .build(),
        slice("demo", "web", "west")
            .named("web-west-2")
            .port("http", None, 9080)
            .ready("198.18.0.2")
            .ready("198.18.0.4")
            .build(),
        slice("demo", "dns", "east").port("tcp", None, 5353).udp("udp", 5353).terminating("198.18.1.1").build(),
        slice("demo", "web", "x").named("stray").without_label(k8s::LABEL_SOURCE_CLUSTER).build(),
        slice("demo", "", "")
            .named("gke-derived")
            .without_label(k8s::LABEL_SERVICE_NAME)
            .without_label(k8s::LABEL_SOURCE_CLUSTER)
            .label(k8s::LABEL_KUBERNETES_SERVICE_NAME, "gke-mcs-sliced")
            .port("http", None, 8080)
            .ready("198.18.4.1")
            .build(),
    ];
    // Seven clusters for prod/web: two are over the cap.
    for (i, cluster) in ["c1", "c2", "c3", "c4", "c5", "west", "east"].into_iter().enumerate() {
        slices
            .push(slice("prod", "web", cluster).port("http", None, 8080).ready(format!("198.18.2.{}", i + 1)).build());
    }
    let gke_imports = vec![
        gke_import("demo", "gke-endpoints", "gke-mcs-endpoints").ip("198.19.0.20").port("http", None, 80).build(),
        gke_import("demo", "gke-sliced", "gke-mcs-sliced").ip("198.19.0.21").port("http", None, 80).in_spec().build(),
        gke_import("demo", "gke-missing", "gke-mcs-missing").ip("198.19.0.22").port("http", None, 80).build(),
        gke_import("demo", "gke-bad", "x").ip("198.19.0.23").port("http", None, 0).build(),
        gke_import("demo", "web", "gke-mcs-web").ip(VIP).port("https", None, 443).build(),
    ];
    let endpoints = vec![
        endpoints("demo", "gke-mcs-endpoints")
            .subset(&[("http", None, 8080)], &["198.18.3.1", "198.18.3.2"], &["198.18.3.3"])
            .build(),
        endpoints("demo", "gke-mcs-sliced").subset(&[("http", None, 8080)], &["198.18.3.9"], &[]).build(),
    ];
    let imports = imports.into_iter().map(std::sync::Arc::new).collect();
    let gke_imports = gke_imports.into_iter().map(std::sync::Arc::new).collect();
    Inputs { imports, slices, gke_imports, endpoints }
}

#[test]
fn output_does_not_depend_on_input_order() {
    let inputs = mixed_inputs();
    let config = config();
    let expected = translate(&inputs, &config);
    assert_eq!(expected.0.services.len(), 8, "{:#?}", expected.0);
    assert_eq!(expected.1.skipped.len(), 6, "{:#?}", expected.1);
    assert_eq!(expected.1.excluded_clusters.len(), 2, "{:#?}", expected.1);
    assert_eq!(expected.1.warnings.len(), 4, "{:#?}", expected.1);
    let longest = [inputs.imports.len(), inputs.slices.len(), inputs.gke_imports.len(), inputs.endpoints.len()]
        .into_iter()
        .max()
        .unwrap_or_default();
    for rotation in 0..longest {
        for reverse in [false, true] {
            let mut reordered = inputs.clone();
            let (i, s, g, e) = (
                reordered.imports.len(),
                reordered.slices.len(),
                reordered.gke_imports.len(),
                reordered.endpoints.len(),
            );
            reordered.imports.rotate_left(rotation % i);
            reordered.slices.rotate_left(rotation % s);
            reordered.gke_imports.rotate_left(rotation % g);
            reordered.endpoints.rotate_left(rotation % e);
            if reverse {
                reordered.imports.reverse();
                reordered.gke_imports.reverse();
            } else {
                reordered.slices.reverse();
                reordered.endpoints.reverse();
            }
            assert_eq!(translate(&reordered, &config), expected, "rotation {rotation}, reverse {reverse}");
        }
    }
}

#[test]
fn inputs_are_not_mutated() {
    let inputs = mixed_inputs();
    let before = inputs.clone();
    for locality in [Locality::None, Locality::Local, Locality::Remote] {
        for cap in [0, 1, 5] {
            let config = Config { cluster_id: "east".into(), max_exporting_clusters: cap, locality };
            let _ = translate(&inputs, &config);
            assert_eq!(inputs.imports, before.imports, "imports");
            assert_eq!(inputs.slices, before.slices, "slices");
            assert_eq!(inputs.gke_imports, before.gke_imports, "GKE imports");
            assert_eq!(inputs.endpoints, before.endpoints, "Endpoints");
        }
    }
}

#[test]
fn names_and_numbers() {
    assert_eq!(Protocol::Tcp.number(), mcs_common::proto::TCP);
    assert_eq!(Protocol::Udp.number(), mcs_common::proto::UDP);
    assert_eq!(Protocol::Tcp.as_str(), "TCP");
    assert_eq!(Protocol::Udp.as_str(), "UDP");
    assert_eq!(Protocol::from_k8s(None), Some(Protocol::Tcp));
    assert_eq!(Protocol::from_k8s(Some("")), Some(Protocol::Tcp));
    assert_eq!(Protocol::from_k8s(Some("UDP")), Some(Protocol::Udp));
    assert_eq!(Protocol::from_k8s(Some("SCTP")), None);
    assert_eq!(SkipReason::Headless.as_str(), "headless");
    assert_eq!(SkipReason::NoIps.as_str(), "no-ips");
    assert_eq!(SkipReason::Invalid.as_str(), "invalid");
    assert_eq!(port_key(VIP, 80, Protocol::Udp).to_string(), "198.19.0.1:80/UDP");
}
