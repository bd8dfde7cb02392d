//! The CRDs: both versions with one schema, and every field the agent reads.
#![allow(clippy::wildcard_imports, reason = "the test crate's shared imports and helpers")]
use super::*;

#[test]
fn crds_serve_both_versions_with_one_schema_and_store_v1beta1() {
    let parsed = parse_all(&deploy_dir().join("crds"));
    let mut kinds = BTreeSet::new();
    for (doc, crd) in &parsed.crds {
        let at = doc.at();
        assert_eq!(crd.spec.group, "multicluster.x-k8s.io", "{at}");
        assert_eq!(crd.spec.scope, "Namespaced", "{at}");
        let plural = &crd.spec.names.plural;
        assert_eq!(name(&crd.metadata), format!("{plural}.multicluster.x-k8s.io"), "{at}: metadata.name");
        let versions: Vec<(&str, bool, bool)> =
            crd.spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
        assert_eq!(versions, [("v1alpha1", true, false), ("v1beta1", true, true)], "{at}: versions");
        // With no conversion webhook the API server only rewrites apiVersion:
        // that is only right when both versions have the same schema.
        let schemas: Vec<Value> =
            crd.spec.versions.iter().map(|v| serde_json::to_value(&v.schema).expect("schema")).collect();
        assert_eq!(schemas[0], schemas[1], "{at}: v1alpha1 and v1beta1 schemas differ");
        assert!(crd.spec.conversion.is_none(), "{at}: no conversion webhook");
        kinds.insert(crd.spec.names.kind.clone());
    }
    assert_eq!(kinds, BTreeSet::from(["ServiceExport".to_owned(), "ServiceImport".to_owned()]));
}

#[test]
fn service_import_crd_has_every_field_the_agent_reads() {
    let parsed = parse_all(&deploy_dir().join("crds"));
    for version in ["v1alpha1", "v1beta1"] {
        let schema = crd_schema(&parsed, "ServiceImport", version);
        let expected_types = [
            ("spec.type", "string"),
            ("spec.ips", "array"),
            ("spec.ips[]", "string"),
            ("spec.ipFamilies[]", "string"),
            ("spec.ports[].name", "string"),
            ("spec.ports[].protocol", "string"),
            ("spec.ports[].appProtocol", "string"),
            ("spec.ports[].port", "integer"),
            ("spec.sessionAffinity", "string"),
            ("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "integer"),
            ("status.clusters[].cluster", "string"),
        ];
        for (path, expected) in expected_types {
            let found = path.strip_suffix("[]").map_or_else(
                || schema_at(schema, path),
                |list| {
                    let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema_at(schema, list).items else {
                        panic!("{version} {list} has no items schema");
                    };
                    items
                },
            );
            assert_eq!(found.type_.as_deref(), Some(expected), "{version} {path}");
        }
        assert_eq!(schema_at(schema, "spec.ips").max_items, Some(2), "{version}: one ClusterSetIP per family");
        assert_eq!(schema_at(schema, "spec.ipFamilies").max_items, Some(2), "{version}");
        let timeout = schema_at(schema, "spec.sessionAffinityConfig.clientIP.timeoutSeconds");
        assert_eq!((timeout.minimum, timeout.maximum), (Some(1.0), Some(86_400.0)), "{version}: timeout range");
        let types: Vec<&Value> = schema_at(schema, "spec.type").enum_.iter().flatten().map(|j| &j.0).collect();
        assert_eq!(types, [&json!("ClusterSetIP"), &json!("Headless")], "{version}: spec.type values");
        let port = schema_at(schema, "spec.ports[].port");
        assert_eq!(port.format.as_deref(), Some("int32"), "{version}");
        let required: Vec<&str> = schema_at(schema, "spec").required.iter().flatten().map(String::as_str).collect();
        assert_eq!(required, ["ports", "type"], "{version}: spec.required");

        // An import using every field the agent reads, read by the agent's
        // own type (so it knows each field) and accepted by the schema.
        let full = json!({
            "apiVersion": format!("multicluster.x-k8s.io/{version}"),
            "kind": "ServiceImport",
            "metadata": {"namespace": "ns", "name": "svc"},
            "spec": {
                "type": "ClusterSetIP",
                "ips": ["198.19.0.1"],
                "ipFamilies": ["IPv4"],
                "ports": [{"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 80}],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}
            },
            "status": {"clusters": [{"cluster": "east"}, {"cluster": "west"}]}
        });
        strict_value::<ServiceImport>(&full).unwrap_or_else(|e| panic!("the agent's type lost a field: {e}"));
        let doc = Doc { file: "<full import>".into(), index: 1, value: full };
        let errors = validate_custom_resource(&parsed, &doc);
        assert!(errors.is_empty(), "{version}: {errors:?}");
    }
}
