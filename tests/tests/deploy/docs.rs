//! Reading the manifests under `deploy/`, and parsing them strictly: typed, then round-tripped.
#![allow(clippy::wildcard_imports, reason = "the test crate's shared imports and helpers")]
use super::*;

// Reading documents.

/// One YAML document of a manifest file.
#[derive(Clone, Debug)]
pub(super) struct Doc {
    /// The file, relative to the repository.
    pub(super) file: String,
    /// 1-based number of the document in the file.
    pub(super) index: usize,
    pub(super) value: Value,
}

impl Doc {
    pub(super) fn str_at(&self, pointer: &str) -> &str {
        self.value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
    }

    pub(super) fn api_version(&self) -> &str {
        self.str_at("/apiVersion")
    }

    pub(super) fn kind(&self) -> &str {
        self.str_at("/kind")
    }

    /// `file document N (Kind name)`, for messages.
    pub(super) fn at(&self) -> String {
        format!("{} document {} ({} {})", self.file, self.index, self.kind(), self.str_at("/metadata/name"))
    }
}

pub(super) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_owned()
}

pub(super) fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| ["yaml", "yml", "json"].contains(&e))
}

/// Every manifest file under `dir` (recursively), sorted.
pub(super) fn manifest_files(dir: &Path) -> Vec<PathBuf> {
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

pub(super) fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

/// Plain scalars that YAML 1.1 (the Kubernetes YAML reader) takes as booleans
/// but YAML 1.2 (`serde_norway`, this test) takes as strings.
pub(super) const YAML11_BOOLEANS: [&str; 10] = ["y", "n", "yes", "no", "on", "off", "Y", "N", "Yes", "No"];

/// The documents of one file; panics on a YAML error or an ambiguous scalar.
pub(super) fn load(path: &Path) -> Vec<Doc> {
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
    for (index, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{file} document {}: not valid YAML: {e}", index + 1));
        if !value.is_null() {
            docs.push(Doc { file: file.clone(), index: index + 1, value });
        }
    }
    docs
}

pub(super) fn load_dir(dir: &Path) -> Vec<Doc> {
    let files = manifest_files(dir);
    assert!(!files.is_empty(), "no manifests under {}", dir.display());
    files.iter().flat_map(|f| load(f)).collect()
}

// Strict parsing: typed, then round-tripped.

/// The fields of `original` that are missing from `back` or changed there,
/// as paths. Extra fields in `back` (defaults the type always writes) are fine.
pub(super) fn lost_fields(original: &Value, back: &Value) -> Vec<String> {
    pub(super) fn walk(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
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
pub(super) fn strict_value<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
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

pub(super) fn strict<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    strict_value(&doc.value).unwrap_or_else(|e| panic!("{}: {e}", doc.at()))
}

/// A `ServiceExport`: nothing reads it but the MCS controller, so it is
/// defined here, after the CRD.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ServiceExport {
    pub(super) api_version: String,
    pub(super) kind: String,
    pub(super) metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) spec: Option<ServiceExportSpec>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ServiceExportSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) exported_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) exported_annotations: Option<BTreeMap<String, String>>,
}

/// A kustomization: only the fields this repository uses.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Kustomization {
    pub(super) api_version: String,
    pub(super) kind: String,
    #[serde(default)]
    pub(super) resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) images: Vec<KustomizeImage>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct KustomizeImage {
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) new_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) new_tag: Option<String>,
}

/// Everything under `deploy/`, parsed.
#[derive(Default)]
pub(super) struct Parsed {
    pub(super) namespaces: Vec<(Doc, Namespace)>,
    pub(super) service_accounts: Vec<(Doc, ServiceAccount)>,
    pub(super) cluster_roles: Vec<(Doc, ClusterRole)>,
    pub(super) cluster_role_bindings: Vec<(Doc, ClusterRoleBinding)>,
    pub(super) config_maps: Vec<(Doc, ConfigMap)>,
    pub(super) resource_quotas: Vec<(Doc, ResourceQuota)>,
    pub(super) daemon_sets: Vec<(Doc, DaemonSet)>,
    pub(super) deployments: Vec<(Doc, Deployment)>,
    pub(super) services: Vec<(Doc, Service)>,
    pub(super) endpoint_slices: Vec<(Doc, EndpointSlice)>,
    pub(super) crds: Vec<(Doc, CustomResourceDefinition)>,
    pub(super) service_imports: Vec<(Doc, ServiceImport)>,
    pub(super) service_exports: Vec<(Doc, ServiceExport)>,
    pub(super) kustomizations: Vec<(Doc, Kustomization)>,
}

impl Parsed {
    pub(super) fn add(&mut self, doc: &Doc) {
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

pub(super) fn parse_all(dir: &Path) -> Parsed {
    let mut parsed = Parsed::default();
    for doc in load_dir(dir) {
        parsed.add(&doc);
    }
    parsed
}

pub(super) fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

pub(super) fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

pub(super) fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}
