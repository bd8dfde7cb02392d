//! The deployment manifests under `deploy/`, checked without a cluster.
//!
//! - Every document of every manifest is parsed by its kind into the
//!   `k8s-openapi` type (or the agent's own `ServiceImport` type), with the
//!   failing field's path in the error. Those types ignore unknown fields, so
//!   strictness comes from a round trip: the typed object is serialized again
//!   and every field of the file must still be there, with the same value. A
//!   field that vanished is a typo or a field the API version lacks; the API
//!   server would reject or silently drop it.
//! - ServiceImports and ServiceExports are also validated against the CRDs in
//!   `deploy/crds` (unknown fields are what the API server would prune).
//! - The DaemonSet's arguments, with `$(VAR)` references resolved from its
//!   environment and the `ConfigMap`, are parsed by the agent's own CLI.
//! - The `ClusterRole` grants get, list and watch on exactly what the agent reads.
//! - The CRDs serve v1alpha1 and v1beta1 with one schema, store v1beta1, and
//!   have every field the agent reads.
//! - Every manifest under `deploy/examples` loads through the agent's manifest
//!   reader without an error, and the mcs-basic example translates to the
//!   target ports its exporting clusters' Services name.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Container, Namespace, ResourceQuota, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use mcs_agent::{
    cli::{Cli, Command},
    k8s::ServiceImport,
    manifests,
    run::SourceKind,
    translate::{self, Protocol},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Reading documents.

/// One YAML document of a manifest file.
#[derive(Clone, Debug)]
struct Doc {
    /// The file, relative to the repository.
    file: String,
    /// 1-based number of the document in the file.
    index: usize,
    value: Value,
}

impl Doc {
    fn str_at(&self, pointer: &str) -> &str {
        self.value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
    }

    fn api_version(&self) -> &str {
        self.str_at("/apiVersion")
    }

    fn kind(&self) -> &str {
        self.str_at("/kind")
    }

    /// `file document N (Kind name)`, for messages.
    fn at(&self) -> String {
        format!("{} document {} ({} {})", self.file, self.index, self.kind(), self.str_at("/metadata/name"))
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_owned()
}

fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| ["yaml", "yml", "json"].contains(&e))
}

/// Every manifest file under `dir` (recursively), sorted.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())).path();
            if path.is_dir() {
                pending.push(path);
            } else if is_manifest(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

/// Plain scalars that YAML 1.1 (the Kubernetes YAML reader) takes as booleans
/// but YAML 1.2 (`serde_yaml`, this test) takes as strings.
const YAML11_BOOLEANS: [&str; 10] = ["y", "n", "yes", "no", "on", "off", "Y", "N", "Yes", "No"];

/// The documents of one file; panics on a YAML error or an ambiguous scalar.
fn load(path: &Path) -> Vec<Doc> {
    let file = relative(path);
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {file}: {e}"));
    for (number, line) in text.lines().enumerate() {
        let content = line.split(" #").next().unwrap_or_default().trim();
        let scalar = content.rsplit_once(": ").map(|(_, v)| v).or_else(|| content.strip_prefix("- "));
        if let Some(scalar) = scalar {
            let scalar = scalar.trim();
            assert!(
                !YAML11_BOOLEANS.iter().any(|b| b.eq_ignore_ascii_case(scalar)),
                "{file}:{}: `{scalar}` is a boolean to kubectl (YAML 1.1) but a string to YAML 1.2 readers: quote it",
                number + 1
            );
        }
    }
    let mut docs = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{file} document {}: not valid YAML: {e}", index + 1));
        if !value.is_null() {
            docs.push(Doc { file: file.clone(), index: index + 1, value });
        }
    }
    docs
}

fn load_dir(dir: &Path) -> Vec<Doc> {
    let files = manifest_files(dir);
    assert!(!files.is_empty(), "no manifests under {}", dir.display());
    files.iter().flat_map(|f| load(f)).collect()
}

// ---------------------------------------------------------------------------
// Strict parsing: typed, then round-tripped.

/// The fields of `original` that are missing from `back` or changed there,
/// as paths. Extra fields in `back` (defaults the type always writes) are fine.
fn lost_fields(original: &Value, back: &Value) -> Vec<String> {
    fn walk(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
        match (original, back) {
            (Value::Object(a), Value::Object(b)) => {
                for (key, value) in a {
                    let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    match b.get(key) {
                        Some(other) => walk(value, other, &here, out),
                        None if value.is_null() => {}
                        None => out.push(here),
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (value, other)) in a.iter().zip(b).enumerate() {
                    walk(value, other, &format!("{path}[{i}]"), out);
                }
            }
            (Value::Number(a), Value::Number(b)) => {
                let same = match (a.as_i64(), b.as_i64()) {
                    (Some(x), Some(y)) => x == y,
                    _ => a.as_f64().zip(b.as_f64()).is_some_and(|(x, y)| x.total_cmp(&y).is_eq()),
                };
                if !same {
                    out.push(format!("{path} ({a} became {b})"));
                }
            }
            (a, b) if a != b => out.push(format!("{path} ({a} became {b})")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(original, back, "", &mut out);
    out
}

/// Parses `value` as `T`, then checks that serializing it again keeps every
/// field. `Err` names the field.
fn strict_value<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("cannot serialize it again: {e}"))?;
    let lost = lost_fields(value, &back);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(format!(
            "fields lost or changed in a round trip through {} (lost: a typo or a field of another API version; \
             changed: a value of another type): {}",
            std::any::type_name::<T>(),
            lost.join(", ")
        ))
    }
}

fn strict<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    strict_value(&doc.value).unwrap_or_else(|e| panic!("{}: {e}", doc.at()))
}

/// A `ServiceExport`: nothing reads it but the MCS controller, so it is
/// defined here, after the CRD.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceExport {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<ServiceExportSpec>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceExportSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exported_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exported_annotations: Option<BTreeMap<String, String>>,
}

/// A kustomization: only the fields this repository uses.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KustomizeImage {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_tag: Option<String>,
}

/// Everything under `deploy/`, parsed.
#[derive(Default)]
struct Parsed {
    namespaces: Vec<(Doc, Namespace)>,
    service_accounts: Vec<(Doc, ServiceAccount)>,
    cluster_roles: Vec<(Doc, ClusterRole)>,
    cluster_role_bindings: Vec<(Doc, ClusterRoleBinding)>,
    config_maps: Vec<(Doc, ConfigMap)>,
    resource_quotas: Vec<(Doc, ResourceQuota)>,
    daemon_sets: Vec<(Doc, DaemonSet)>,
    deployments: Vec<(Doc, Deployment)>,
    services: Vec<(Doc, Service)>,
    endpoint_slices: Vec<(Doc, EndpointSlice)>,
    crds: Vec<(Doc, CustomResourceDefinition)>,
    service_imports: Vec<(Doc, ServiceImport)>,
    service_exports: Vec<(Doc, ServiceExport)>,
    kustomizations: Vec<(Doc, Kustomization)>,
}

impl Parsed {
    fn add(&mut self, doc: &Doc) {
        match (doc.api_version(), doc.kind()) {
            ("v1", "Namespace") => self.namespaces.push((doc.clone(), strict(doc))),
            ("v1", "ServiceAccount") => self.service_accounts.push((doc.clone(), strict(doc))),
            ("v1", "ConfigMap") => self.config_maps.push((doc.clone(), strict(doc))),
            ("v1", "ResourceQuota") => self.resource_quotas.push((doc.clone(), strict(doc))),
            ("v1", "Service") => self.services.push((doc.clone(), strict(doc))),
            ("apps/v1", "DaemonSet") => self.daemon_sets.push((doc.clone(), strict(doc))),
            ("apps/v1", "Deployment") => self.deployments.push((doc.clone(), strict(doc))),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => self.cluster_roles.push((doc.clone(), strict(doc))),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push((doc.clone(), strict(doc)));
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => self.endpoint_slices.push((doc.clone(), strict(doc))),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => self.crds.push((doc.clone(), strict(doc))),
            ("multicluster.x-k8s.io/v1alpha1" | "multicluster.x-k8s.io/v1beta1", "ServiceImport") => {
                self.service_imports.push((doc.clone(), strict(doc)));
            }
            ("multicluster.x-k8s.io/v1alpha1" | "multicluster.x-k8s.io/v1beta1", "ServiceExport") => {
                self.service_exports.push((doc.clone(), strict(doc)));
            }
            ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
                self.kustomizations.push((doc.clone(), strict(doc)));
            }
            (api_version, kind) => {
                panic!("{}: apiVersion {api_version:?} kind {kind:?} is not checked by this test: add it", doc.at())
            }
        }
    }
}

fn parse_all(dir: &Path) -> Parsed {
    let mut parsed = Parsed::default();
    for doc in load_dir(dir) {
        parsed.add(&doc);
    }
    parsed
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Validation of custom resources against a CRD schema (a subset of OpenAPI
// v3: the keywords the MCS CRDs use; any other keyword met on the way is an
// error, so the check never silently passes what it does not understand).

fn validate(schema: &JSONSchemaProps, value: &Value, path: &str, errors: &mut Vec<String>) {
    let here = if path.is_empty() { "<root>" } else { path };
    let unsupported = [
        ("pattern", schema.pattern.is_some()),
        ("format date-time", schema.format.as_deref() == Some("date-time")),
        ("allOf/anyOf/oneOf/not", schema.all_of.is_some() || schema.any_of.is_some() || schema.one_of.is_some()),
        ("x-kubernetes-validations", schema.x_kubernetes_validations.is_some()),
    ];
    for (keyword, used) in unsupported {
        if used {
            errors.push(format!("{here}: the schema uses {keyword}, which this test does not check"));
        }
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        errors.push(format!("{here}: {value} is not one of the allowed values"));
    }
    match (schema.type_.as_deref(), value) {
        (Some("object"), Value::Object(map)) => {
            for required in schema.required.iter().flatten() {
                if !map.contains_key(required) {
                    errors.push(format!("{here}: required field {required} is missing"));
                }
            }
            for (key, field) in map {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                // The API server checks these itself; they are parsed strictly elsewhere.
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(property) = schema.properties.as_ref().and_then(|p| p.get(key)) {
                    validate(property, field, &child, errors);
                } else if let Some(JSONSchemaPropsOrBool::Schema(additional)) = &schema.additional_properties {
                    validate(additional, field, &child, errors);
                } else if !matches!(schema.additional_properties, Some(JSONSchemaPropsOrBool::Bool(true)))
                    && schema.x_kubernetes_preserve_unknown_fields != Some(true)
                {
                    errors.push(format!("{child}: not in the CRD's schema (the API server would drop it)"));
                }
            }
        }
        (Some("array"), Value::Array(items)) => validate_array(schema, items, path, errors),
        (Some("string"), Value::String(s)) => {
            let length = i64::try_from(s.chars().count()).expect("a manifest string fits i64");
            if schema.max_length.is_some_and(|max| length > max) || schema.min_length.is_some_and(|min| length < min) {
                errors.push(format!("{here}: length {length} is out of range"));
            }
        }
        (Some("integer"), Value::Number(n)) => match n.as_i64() {
            None => errors.push(format!("{here}: {n} is not an integer")),
            Some(i) => {
                let int32 = schema.format.as_deref() == Some("int32");
                #[expect(clippy::cast_precision_loss, reason = "manifest integers are far below 2^52")]
                let as_float = i as f64;
                if (int32 && i32::try_from(i).is_err())
                    || schema.minimum.is_some_and(|min| as_float < min)
                    || schema.maximum.is_some_and(|max| as_float > max)
                {
                    errors.push(format!("{here}: {i} is out of range"));
                }
            }
        },
        (Some("boolean"), Value::Bool(_)) | (Some("number"), Value::Number(_)) => {}
        (Some(expected), other) => errors.push(format!("{here}: expected {expected}, found {other}")),
        (None, _) => errors.push(format!("{here}: the schema has no type")),
    }
}

fn validate_array(schema: &JSONSchemaProps, items: &[Value], path: &str, errors: &mut Vec<String>) {
    let count = i64::try_from(items.len()).expect("a manifest list fits i64");
    if schema.max_items.is_some_and(|max| count > max) || schema.min_items.is_some_and(|min| count < min) {
        errors.push(format!("{path}: {count} items is out of range"));
    }
    let Some(JSONSchemaPropsOrArray::Schema(item_schema)) = &schema.items else {
        errors.push(format!("{path}: the schema has no single items schema"));
        return;
    };
    for (i, item) in items.iter().enumerate() {
        validate(item_schema, item, &format!("{path}[{i}]"), errors);
    }
    if schema.x_kubernetes_list_type.as_deref() == Some("map") {
        let keys = schema.x_kubernetes_list_map_keys.clone().unwrap_or_default();
        let mut seen = BTreeSet::new();
        for item in items {
            let key: Vec<String> =
                keys.iter().map(|k| item.get(k).map(ToString::to_string).unwrap_or_default()).collect();
            if !seen.insert(key.clone()) {
                errors.push(format!("{path}: two items share the map key {key:?}"));
            }
        }
    }
}

/// The schema of `version` of the CRD for `kind`.
fn crd_schema<'a>(parsed: &'a Parsed, kind: &str, version: &str) -> &'a JSONSchemaProps {
    let (_, crd) = parsed
        .crds
        .iter()
        .find(|(_, crd)| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("deploy/crds has no CRD for {kind}"));
    let found = crd.spec.versions.iter().find(|v| v.name == version);
    let found = found.unwrap_or_else(|| panic!("the {kind} CRD has no version {version}"));
    found.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("every version has a schema")
}

fn validate_custom_resource(parsed: &Parsed, doc: &Doc) -> Vec<String> {
    let version = doc.api_version().rsplit('/').next().unwrap_or_default();
    let mut errors = Vec::new();
    validate(crd_schema(parsed, doc.kind(), version), &doc.value, "", &mut errors);
    errors
}

/// The schema at `path` (`spec.ports[].port`: `[]` steps into items).
fn schema_at<'a>(root: &'a JSONSchemaProps, path: &str) -> &'a JSONSchemaProps {
    let mut schema = root;
    for step in path.split('.') {
        let (field, into_items) = step.strip_suffix("[]").map_or((step, false), |f| (f, true));
        schema = schema
            .properties
            .as_ref()
            .and_then(|p| p.get(field))
            .unwrap_or_else(|| panic!("the schema has no field {path} (missing {field})"));
        if into_items {
            let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items else {
                panic!("{path}: {field} is not a list with an items schema");
            };
            schema = items;
        }
    }
    schema
}

// ---------------------------------------------------------------------------
// The tests.

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

/// Resolves `$(VAR)` references as the kubelet does (`$$` escapes a `$`);
/// a reference to a variable the container does not define is an error
/// (the kubelet would pass it through literally).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(') {
            let end = reference.find(')').ok_or_else(|| format!("unterminated $( in {arg:?}"))?;
            let var = &reference[..end];
            out.push_str(env.get(var).ok_or_else(|| format!("{arg:?} refers to undefined variable {var}"))?);
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The container's environment: literal values, `ConfigMap` keys (which must
/// exist), and downward-API fields as samples.
fn container_env(container: &Container, pod_namespace: &str, parsed: &Parsed) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            value.clone()
        } else if let Some(from) = &var.value_from {
            if let Some(selector) = &from.config_map_key_ref {
                let (_, config_map) = parsed
                    .config_maps
                    .iter()
                    .find(|(_, cm)| name(&cm.metadata) == selector.name && namespace(&cm.metadata) == pod_namespace)
                    .unwrap_or_else(|| panic!("env {}: no ConfigMap {pod_namespace}/{}", var.name, selector.name));
                let data = config_map.data.as_ref();
                data.and_then(|d| d.get(&selector.key))
                    .unwrap_or_else(|| {
                        panic!("env {}: ConfigMap {} has no key {}", var.name, selector.name, selector.key)
                    })
                    .clone()
            } else if let Some(field) = &from.field_ref {
                format!("sample-{}", field.field_path.replace('.', "-"))
            } else {
                panic!("env {}: a valueFrom this test cannot resolve", var.name)
            }
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    env
}

#[test]
fn expand_resolves_like_the_kubelet() {
    let env = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
    assert_eq!(expand("--a=$(A)", &env).as_deref(), Ok("--a=x"));
    assert_eq!(expand("$$(A) $A", &env).as_deref(), Ok("$(A) $A"));
    assert!(expand("--b=$(B)", &env).is_err(), "an undefined variable is an error");
}

#[test]
fn daemonset_arguments_are_accepted_by_the_agent() {
    let parsed = parse_all(&deploy_dir().join("agent"));
    let (doc, daemon_set) = &parsed.daemon_sets[0];
    let at = doc.at();
    let pod_namespace = namespace(&daemon_set.metadata);
    let pod = daemon_set.spec.template.spec.as_ref().expect("pod spec");
    let container = &pod.containers[0];
    let env = container_env(container, pod_namespace, &parsed);
    let args: Vec<String> =
        container.args.iter().flatten().map(|a| expand(a, &env).unwrap_or_else(|e| panic!("{at}: {e}"))).collect();
    assert!(container.command.is_none(), "{at}: the image's entrypoint is the agent");

    // The parser is strict: an unknown flag is refused (so acceptance below means something).
    let mut wrong = args.clone();
    wrong.push("--no-such-flag".into());
    assert!(Cli::try_parse_from(std::iter::once("mcs-agent".to_owned()).chain(wrong)).is_err());

    let cli = Cli::try_parse_from(std::iter::once("mcs-agent".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("{at}: mcs-agent refuses {args:?}:\n{e}"));
    let Command::Run(run) = cli.command else { panic!("{at}: the DaemonSet must run `mcs-agent run`") };
    assert_eq!(run.source, SourceKind::Kubernetes, "{at}");
    let config_map = &parsed.config_maps.iter().find(|(_, cm)| name(&cm.metadata) == "mcs-agent").expect("ConfigMap").1;
    let data = config_map.data.as_ref().expect("ConfigMap data");
    assert_eq!(run.translate.cluster_id, data["cluster-id"], "{at}: cluster id from the ConfigMap");
    assert!(!run.translate.cluster_id.is_empty(), "{at}: a cluster id is set");
    assert_eq!(run.translate.max_exporting_clusters, 5, "{at}: the exporter cap");
    assert!(!run.interfaces.is_empty() && run.interfaces.iter().all(|i| !i.is_empty()), "{at}: {:?}", run.interfaces);
    assert!(!run.interfaces.iter().any(|i| i == "eth0" || i == "*"), "{at}: never the uplink nor every interface");
    assert_eq!(run.pin_path, Path::new("/sys/fs/bpf/mcs"), "{at}");

    // The pin path is on the node's bpffs.
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| run.pin_path.starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{at}: no volume mounted over {}", run.pin_path.display()));
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mounted volume exists");
    let host_path = volume.host_path.as_ref().unwrap_or_else(|| panic!("{at}: {} is not a hostPath", volume.name));
    assert_eq!((host_path.path.as_str(), mount.mount_path.as_str()), ("/sys/fs/bpf", "/sys/fs/bpf"), "{at}");
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"), "{at}");

    // Metrics, probes and scrape annotations agree on the port.
    let metrics_port: u16 = run.metrics_addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("metrics port");
    let named: BTreeMap<&str, i32> =
        container.ports.iter().flatten().filter_map(|p| Some((p.name.as_deref()?, p.container_port))).collect();
    for (probe_name, probe) in [("readiness", &container.readiness_probe), ("liveness", &container.liveness_probe)] {
        let http =
            probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{at}: {probe_name} probe"));
        let port = match http.port.clone() {
            IntOrString::Int(port) => port,
            IntOrString::String(port_name) => named[port_name.as_str()],
        };
        assert_eq!(port, i32::from(metrics_port), "{at}: {probe_name} probe port");
        let expected_path = if probe_name == "readiness" { "/readyz" } else { "/healthz" };
        assert_eq!(http.path.as_deref(), Some(expected_path), "{at}: {probe_name} probe path");
    }
    let annotations = daemon_set.spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    let annotations = annotations.expect("pod annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn daemonset_runs_on_every_node_with_only_the_capabilities_it_needs() {
    let parsed = parse_all(&deploy_dir().join("agent"));
    let (doc, daemon_set) = &parsed.daemon_sets[0];
    let at = doc.at();
    let spec = &daemon_set.spec;
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "{at}: the programs attach to the node's interfaces");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"), "{at}");
    assert!(pod.host_pid.is_none() && pod.host_ipc.is_none(), "{at}: no host PID or IPC namespace");
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none());
    assert!(tolerates_all, "{at}: tolerates every taint");
    assert!(pod.termination_grace_period_seconds.is_some(), "{at}: terminationGracePeriodSeconds");

    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{at}");
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)), "{at}");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)), "{at}: never two agents on one node");

    assert_eq!(pod.containers.len(), 1, "{at}");
    assert!(pod.init_containers.is_none(), "{at}: no (privileged) init container");
    let container = &pod.containers[0];
    let security = container.security_context.as_ref().expect("securityContext");
    assert_ne!(security.privileged, Some(true), "{at}: not privileged");
    assert_eq!(security.allow_privilege_escalation, Some(false), "{at}");
    assert_eq!(security.read_only_root_filesystem, Some(true), "{at}");
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]), "{at}: drop everything first");
    let added: BTreeSet<&str> = capabilities.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]), "{at}: added capabilities");
    assert!(container.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some_and(|l| l.contains_key("memory")));

    // A critical priority class is admitted by a quota of its namespace (GKE
    // refuses such pods elsewhere).
    let priority = pod.priority_class_name.as_deref().unwrap_or_default();
    if priority.starts_with("system-") {
        let admitted = parsed.resource_quotas.iter().any(|(_, quota)| {
            namespace(&quota.metadata) == namespace(&daemon_set.metadata)
                && quota.spec.as_ref().and_then(|s| s.scope_selector.as_ref()).is_some_and(|selector| {
                    selector.match_expressions.iter().flatten().any(|e| {
                        e.scope_name == "PriorityClass"
                            && e.operator == "In"
                            && e.values.iter().flatten().any(|v| v == priority)
                    })
                })
        });
        assert!(admitted, "{at}: no ResourceQuota admits priority class {priority}");
    }

    // The pod's service account is the one the ClusterRoleBinding names.
    let account = pod.service_account_name.as_deref().expect("serviceAccountName");
    let pod_namespace = namespace(&daemon_set.metadata);
    assert!(
        parsed
            .service_accounts
            .iter()
            .any(|(_, sa)| name(&sa.metadata) == account && namespace(&sa.metadata) == pod_namespace),
        "{at}: ServiceAccount {pod_namespace}/{account} is defined"
    );
    assert!(
        parsed.namespaces.iter().any(|(_, ns)| name(&ns.metadata) == pod_namespace),
        "{at}: its Namespace is defined"
    );
    let (_, binding) = &parsed.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, name(&parsed.cluster_roles[0].1.metadata));
    let subjects: Vec<(&str, &str, Option<&str>)> =
        binding.subjects.iter().flatten().map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref())).collect();
    assert_eq!(subjects, [("ServiceAccount", account, Some(pod_namespace))], "binding subjects");
}

#[test]
fn cluster_role_only_reads_what_the_agent_reads() {
    let parsed = parse_all(&deploy_dir().join("agent"));
    assert_eq!(parsed.cluster_roles.len(), 1, "one ClusterRole");
    let (doc, role) = &parsed.cluster_roles[0];
    let at = doc.at();
    assert!(role.aggregation_rule.is_none(), "{at}: no aggregation");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{at}: verbs of {rule:?}");
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none(), "{at}: {rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert!(granted.insert((group.as_str(), resource.as_str())), "{at}: {group}/{resource} granted twice");
            }
        }
    }
    let expected = BTreeSet::from([
        ("multicluster.x-k8s.io", "serviceimports"),
        ("net.gke.io", "serviceimports"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "endpoints"),
    ]);
    assert_eq!(granted, expected, "{at}: exactly the resources the agent reads");
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
            per_cluster.entry(backend.cluster.as_str()).or_default().insert(backend.port);
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
