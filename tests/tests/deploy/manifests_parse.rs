//! Every manifest parses strictly, and every kustomization lists its directory.
#![allow(clippy::wildcard_imports, reason = "the test crate's shared imports and helpers")]
use super::*;

#[test]
fn every_manifest_under_deploy_parses_strictly() {
    let parsed = parse_all(&deploy_dir());
    let total = parsed.namespaces.len()
        + parsed.service_accounts.len()
        + parsed.cluster_roles.len()
        + parsed.cluster_role_bindings.len()
        + parsed.config_maps.len()
        + parsed.resource_quotas.len()
        + parsed.daemon_sets.len()
        + parsed.deployments.len()
        + parsed.services.len()
        + parsed.endpoint_slices.len()
        + parsed.crds.len()
        + parsed.service_imports.len()
        + parsed.service_exports.len()
        + parsed.kustomizations.len();
    assert_eq!(total, load_dir(&deploy_dir()).len(), "every document was checked");
    assert_eq!(parsed.daemon_sets.len(), 1, "one DaemonSet");
    assert_eq!(parsed.crds.len(), 2, "two CRDs");
    assert!(parsed.service_imports.len() >= 2, "the examples hold ServiceImports");
    assert!(parsed.service_exports.len() >= 3, "the examples hold ServiceExports");

    let mut errors = Vec::new();
    for (doc, _) in &parsed.service_imports {
        errors.extend(validate_custom_resource(&parsed, doc).into_iter().map(|e| format!("{}: {e}", doc.at())));
    }
    for (doc, _) in &parsed.service_exports {
        errors.extend(validate_custom_resource(&parsed, doc).into_iter().map(|e| format!("{}: {e}", doc.at())));
    }
    assert!(errors.is_empty(), "custom resources that the CRDs reject:\n{}", errors.join("\n"));
}

#[test]
fn strictness_catches_unknown_and_mistyped_fields() {
    // The checks above must be able to fail: a typo in a DaemonSet field, an
    // annotation that is a number, a field the ServiceImport CRD does not
    // have, and a timeout out of range.
    let mut daemon_set = load(&deploy_dir().join("agent/daemonset.yaml")).remove(0).value;
    daemon_set["spec"]["template"]["spec"]["hostNetwrok"] = json!(true);
    let err = strict_value::<DaemonSet>(&daemon_set).expect_err("a misspelt field is caught");
    assert!(err.contains("spec.template.spec.hostNetwrok"), "{err}");

    let mut daemon_set = load(&deploy_dir().join("agent/daemonset.yaml")).remove(0).value;
    daemon_set["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = json!(9464);
    let err = strict_value::<DaemonSet>(&daemon_set).expect_err("a numeric annotation is caught");
    assert!(err.contains("spec.template.metadata.annotations"), "{err}");

    let parsed = parse_all(&deploy_dir().join("crds"));
    let import = &load(&deploy_dir().join("examples/mcs-basic/import/serviceimport.yaml"))[0];
    let mut bad = import.clone();
    bad.value["spec"]["clusterSetIP"] = json!("198.19.0.20");
    bad.value["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 0}});
    bad.value["spec"]["ips"] = json!(["198.19.0.20", "198.19.0.21", "198.19.0.22"]);
    let errors = validate_custom_resource(&parsed, &bad).join("\n");
    assert!(errors.contains("spec.clusterSetIP: not in the CRD's schema"), "{errors}");
    assert!(errors.contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range"), "{errors}");
    assert!(errors.contains("spec.ips: 3 items is out of range"), "{errors}");
    assert!(validate_custom_resource(&parsed, import).is_empty(), "the unmodified import is valid");
}

#[test]
fn kustomizations_list_every_manifest_of_their_directory() {
    for dir in ["agent", "crds"] {
        let dir = deploy_dir().join(dir);
        let parsed = parse_all(&dir);
        assert_eq!(parsed.kustomizations.len(), 1, "{}: one kustomization", dir.display());
        let (doc, kustomization) = &parsed.kustomizations[0];
        let listed: BTreeSet<String> = kustomization.resources.iter().cloned().collect();
        let present: BTreeSet<String> = manifest_files(&dir)
            .iter()
            .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
            .filter(|f| f != "kustomization.yaml")
            .collect();
        assert_eq!(listed, present, "{}: resources", doc.at());
        for image in &kustomization.images {
            let uses = parsed.daemon_sets.iter().any(|(_, ds)| {
                let pod = ds.spec.template.spec.as_ref();
                pod.is_some_and(|p| {
                    p.containers.iter().any(|c| c.image.as_deref().is_some_and(|i| i.starts_with(&image.name)))
                })
            });
            assert!(uses, "{}: image {} is used", doc.at(), image.name);
        }
    }
}
