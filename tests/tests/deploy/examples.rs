//! The examples load through the agent, and mcs-basic translates to each cluster's target ports.
#![allow(clippy::wildcard_imports, reason = "the test crate's shared imports and helpers")]
use super::*;

#[test]
fn examples_load_through_the_agent_without_errors() {
    let files = manifest_files(&deploy_dir().join("examples"));
    assert!(files.len() >= 10, "the examples are found: {files:?}");
    let mut imports = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let (inputs, errors) = manifests::parse_str(file, &text);
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", relative(file));
        imports += inputs.imports.len();
    }
    assert!(imports >= 2, "the demo and mcs-basic imports are read");
}

/// `cluster -> port name -> target port` from the exported Services in
/// `examples/mcs-basic/export`, checked against each Deployment's container ports.
fn mcs_basic_target_ports() -> BTreeMap<String, BTreeMap<String, u16>> {
    let mut clusters = BTreeMap::new();
    for file in manifest_files(&deploy_dir().join("examples/mcs-basic/export")) {
        let cluster = file.file_stem().and_then(|s| s.to_str()).expect("file name").to_owned();
        let mut parsed = Parsed::default();
        for doc in load(&file) {
            parsed.add(&doc);
        }
        let at = relative(&file);
        assert_eq!((parsed.deployments.len(), parsed.services.len(), parsed.service_exports.len()), (1, 1, 1), "{at}");
        let service = &parsed.services[0].1;
        let export = &parsed.service_exports[0].1;
        assert_eq!(
            (name(&export.metadata), namespace(&export.metadata)),
            (name(&service.metadata), namespace(&service.metadata)),
            "{at}: the export names its Service"
        );
        let pod = parsed.deployments[0].1.spec.template.spec.as_ref().expect("pod spec");
        let container_ports: BTreeMap<&str, i32> = pod.containers[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.as_deref()?, p.container_port)))
            .collect();
        let mut targets = BTreeMap::new();
        for port in service.spec.as_ref().and_then(|s| s.ports.as_ref()).expect("Service ports") {
            let port_name = port.name.clone().expect("named ports");
            let Some(IntOrString::Int(target)) = port.target_port else { panic!("{at}: numeric targetPort") };
            assert_eq!(container_ports.get(port_name.as_str()), Some(&target), "{at}: {port_name} reaches the pods");
            targets.insert(port_name, u16::try_from(target).expect("port"));
        }
        clusters.insert(cluster, targets);
    }
    clusters
}

#[test]
fn mcs_basic_translates_to_each_clusters_target_ports() {
    let targets = mcs_basic_target_ports();
    assert_eq!(targets.keys().map(String::as_str).collect::<Vec<_>>(), ["central", "east", "west"]);
    let distinct: BTreeSet<u16> = targets.values().flat_map(|t| t.values().copied()).collect();
    assert_eq!(distinct.len(), 6, "every cluster uses its own target ports: {targets:?}");

    let (inputs, errors) =
        manifests::load_dir(&deploy_dir().join("examples/mcs-basic/import")).expect("reading the import directory");
    assert!(errors.is_empty(), "{errors:?}");
    let config = translate::Config { cluster_id: "east".into(), ..translate::Config::default() };
    let (desired, report) = translate::translate(&inputs, &config);
    assert!(report.skipped.is_empty() && report.excluded_clusters.is_empty(), "{report:?}");

    let vip = Ipv4Addr::new(198, 19, 0, 20);
    let mut seen = Vec::new();
    for (key, service) in &desired.services {
        assert_eq!((key.ip, key.protocol), (vip, Protocol::Tcp), "{key:?}");
        let port_name = service.port_name.clone();
        let expected_port = match port_name.as_str() {
            "http" => 80,
            "https" => 443,
            other => panic!("unexpected port {other}"),
        };
        assert_eq!(key.port, expected_port, "{port_name}");
        let mut per_cluster: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
        for backend in &service.backends {
            let octets = backend.ip.octets();
            assert_eq!(octets[..2], [198, 18], "{backend:?}: pod addresses in 198.18.0.0/16");
            per_cluster.entry(&*backend.cluster).or_default().insert(backend.port);
        }
        assert_eq!(service.backends.len(), 6, "{port_name}: two pods in each of three clusters");
        for (cluster, ports) in &targets {
            assert_eq!(
                per_cluster.get(cluster.as_str()),
                Some(&BTreeSet::from([ports[&port_name]])),
                "{port_name} in {cluster}: the Service's targetPort"
            );
        }
        seen.push(port_name);
    }
    seen.sort();
    assert_eq!(seen, ["http", "https"], "both ports are programmed");
}
