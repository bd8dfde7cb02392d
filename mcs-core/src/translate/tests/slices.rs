//! Which `EndpointSlice`s count for an import: labels, namespace, address type, controller.
use super::*;

#[test]
fn which_slices_count() {
    run(vec![Case {
        name: "only MCS slices of the import in its namespace, not FQDN, IPv6 or controller-managed",
        imports: vec![web().port("http", None, 80).build()],
        slices: vec![
            slice("demo", "web", "east").named("good").port("http", None, 8080).ready("198.18.0.1").build(),
            // The local cluster's slice is just another cluster's.
            slice("demo", "web", "west").named("local").port("http", None, 8080).ready("198.18.0.2").build(),
            slice("demo", "web", "x")
                .named("no-cluster")
                .without_label(k8s::LABEL_SOURCE_CLUSTER)
                .port("http", None, 8080)
                .ready("198.18.1.1")
                .build(),
            slice("demo", "web", "").named("empty-cluster").port("http", None, 8080).ready("198.18.1.2").build(),
            slice("demo", "web", "east")
                .named("no-service")
                .without_label(k8s::LABEL_SERVICE_NAME)
                .port("http", None, 8080)
                .ready("198.18.1.3")
                .build(),
            slice("demo", "web", "east")
                .named("plain")
                .without_label(k8s::LABEL_SERVICE_NAME)
                .without_label(k8s::LABEL_SOURCE_CLUSTER)
                .label("kubernetes.io/service-name", "web")
                .port("http", None, 8080)
                .ready("198.18.1.4")
                .build(),
            slice("other", "web", "east").named("other-ns").port("http", None, 8080).ready("198.18.1.5").build(),
            slice("demo", "api", "east").named("other-svc").port("http", None, 8080).ready("198.18.1.6").build(),
            slice("demo", "web", "east")
                .named("managed")
                .label(k8s::LABEL_MANAGED_BY, k8s::MANAGED_BY_ENDPOINTSLICE_CONTROLLER)
                .port("http", None, 8080)
                .ready("198.18.1.7")
                .build(),
            slice("demo", "web", "east")
                .named("fqdn")
                .address_type("FQDN")
                .port("http", None, 8080)
                .ready("pod.example")
                .build(),
            slice("demo", "web", "east")
                .named("v6")
                .address_type("IPv6")
                .port("http", None, 8080)
                .ready("fd00::1")
                .build(),
            slice("demo", "web", "east")
                .named("odd-type")
                .address_type("IPv5")
                .port("http", None, 8080)
                .ready("198.18.1.8")
                .build(),
        ],
        want: vec![(
            port_key(VIP, 80, Protocol::Tcp),
            desired_port("demo", "web")
                .port_name("http")
                .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)])
                .build(),
        )],
        warnings: vec![
            "EndpointSlice demo/empty-cluster: has label multicluster.kubernetes.io/service-name but no multicluster.kubernetes.io/source-cluster label",
            "EndpointSlice demo/no-cluster: has label",
            "EndpointSlice demo/odd-type addressType: unknown address type \"IPv5\"",
        ],
        ..Case::default()
    }]);
}

#[test]
fn namespaces_and_status_clusters() {
    run(vec![
        Case {
            name: "imports of one name in two namespaces never share backends",
            imports: vec![
                import("demo", "web").ip(VIP).port("http", None, 80).build(),
                import("prod", "web").ip(VIP2).port("http", None, 80).build(),
            ],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("prod", "web", "east").port("http", None, 8080).ready("198.18.0.2").build(),
                slice("prod", "web", "west").port("http", None, 8080).ready("198.18.0.3").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
                ),
                (
                    port_key(VIP2, 80, Protocol::Tcp),
                    desired_port("prod", "web")
                        .port_name("http")
                        .ready(&[("east", "198.18.0.2", 8080), ("west", "198.18.0.3", 8080)])
                        .build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "status.clusters only ranks: unlisted present clusters count too",
            imports: vec![web().port("http", None, 80).status_clusters(&["west"]).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("demo", "web", "west").port("http", None, 8080).ready("198.18.0.2").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)])
                    .build(),
            )],
            ..Case::default()
        },
    ]);
}
