//! The Kubernetes objects the agent reads.
//!
//! - `ServiceImport` (`multicluster.x-k8s.io/v1alpha1` and `/v1beta1`, one
//!   schema) is defined here as plain serde structs: unknown fields are
//!   ignored, but a known field of the wrong type is an error.
//! - GKE's `ServiceImport` (`net.gke.io/v1`, [`GkeServiceImport`]) likewise;
//! - `EndpointSlice` and core/v1 `Endpoints` come from `k8s-openapi`
//!   ([`k8s_openapi::api::discovery::v1::EndpointSlice`],
//!   [`k8s_openapi::api::core::v1::Endpoints`]); a slice is kept as a
//!   [`Slice`], the part of it the translation reads.
//!
//! Values are kept as loosely typed as the API allows (ports are `i64`,
//! protocols are strings) so that out-of-range or unknown values reach the
//! translation, which rejects them with a reason that names the field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize};

/// API group of the MCS API.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// `apiVersion`s of `ServiceImport` that are read (they share one schema).
pub const SERVICE_IMPORT_API_VERSIONS: [&str; 2] = ["multicluster.x-k8s.io/v1alpha1", "multicluster.x-k8s.io/v1beta1"];
/// `kind` of a `ServiceImport`.
pub const SERVICE_IMPORT_KIND: &str = "ServiceImport";
/// `apiVersion` of the `EndpointSlice`s that are read.
pub const ENDPOINT_SLICE_API_VERSION: &str = "discovery.k8s.io/v1";
/// `kind` of an `EndpointSlice`.
pub const ENDPOINT_SLICE_KIND: &str = "EndpointSlice";
/// `apiVersion` of core/v1 `Endpoints` (a GKE import's derived service).
pub const ENDPOINTS_API_VERSION: &str = "v1";
/// `kind` of core/v1 `Endpoints`.
pub const ENDPOINTS_KIND: &str = "Endpoints";

/// Label on an `EndpointSlice`: the name of the `ServiceImport` it belongs to.
pub const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// Label on an `EndpointSlice`: the id of the cluster its endpoints are in.
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";
/// Label on an `EndpointSlice`: the controller that manages it.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on the slices of ordinary (single-cluster)
/// Services; such slices are never read as MCS slices.
pub const MANAGED_BY_ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// `spec.type` of an import that gets a `ClusterSetIP`.
pub const TYPE_CLUSTER_SET_IP: &str = "ClusterSetIP";
/// `spec.type` of a headless import.
pub const TYPE_HEADLESS: &str = "Headless";
/// `spec.sessionAffinity` value that turns on client-IP affinity.
pub const SESSION_AFFINITY_CLIENT_IP: &str = "ClientIP";
/// `spec.sessionAffinity` value that turns affinity off.
pub const SESSION_AFFINITY_NONE: &str = "None";

/// `addressType` of an `EndpointSlice` of IPv4 addresses.
pub const ADDRESS_TYPE_IPV4: &str = "IPv4";
/// `addressType` of an `EndpointSlice` of IPv6 addresses.
pub const ADDRESS_TYPE_IPV6: &str = "IPv6";
/// `addressType` of an `EndpointSlice` of domain names.
pub const ADDRESS_TYPE_FQDN: &str = "FQDN";

/// An entry of `spec.ipFamilies`.
pub const IP_FAMILY_IPV4: &str = "IPv4";
/// An entry of `spec.ipFamilies`.
pub const IP_FAMILY_IPV6: &str = "IPv6";

/// The namespace an object without `metadata.namespace` is in (as `kubectl
/// apply` would put it with the default context).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Whether `api_version`/`kind` name a `ServiceImport` this module can read.
#[must_use]
pub fn is_service_import(api_version: &str, kind: &str) -> bool {
    kind == SERVICE_IMPORT_KIND && SERVICE_IMPORT_API_VERSIONS.contains(&api_version)
}

/// Whether `api_version`/`kind` name a GKE `ServiceImport` (`net.gke.io/v1`).
#[must_use]
pub fn is_gke_service_import(api_version: &str, kind: &str) -> bool {
    kind == SERVICE_IMPORT_KIND && api_version == GKE_SERVICE_IMPORT_API_VERSION
}

/// Whether `api_version`/`kind` name a core/v1 `Endpoints` object.
#[must_use]
pub fn is_endpoints(api_version: &str, kind: &str) -> bool {
    kind == ENDPOINTS_KIND && api_version == ENDPOINTS_API_VERSION
}

/// Whether `api_version`/`kind` name an `EndpointSlice` this module can read.
#[must_use]
pub fn is_endpoint_slice(api_version: &str, kind: &str) -> bool {
    kind == ENDPOINT_SLICE_KIND && api_version == ENDPOINT_SLICE_API_VERSION
}

/// The namespace of an object: `metadata.namespace`, or [`DEFAULT_NAMESPACE`]
/// when it is unset or empty.
#[must_use]
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(DEFAULT_NAMESPACE)
}

/// The name of an object, empty when unset.
#[must_use]
pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// The value of label `key`, if the metadata has it. Private: a kept
/// [`Slice`] keeps its labels apart from its metadata, so callers read labels
/// through [`Object::label`], which knows where each object keeps them.
#[must_use]
fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// An object the agent reads: its metadata, and the namespace, name and
/// labels read from it the way the API server does.
pub trait Object {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;

    /// The value of label `key`, if the object has it (a [`Slice`] keeps its
    /// labels apart from its metadata, so every implementation says where
    /// they are).
    fn label(&self, key: &str) -> Option<&str>;

    /// The namespace (see [`namespace_of`]).
    fn namespace(&self) -> &str {
        namespace_of(self.meta())
    }

    /// The name, empty when unset.
    fn name(&self) -> &str {
        name_of(self.meta())
    }
}

/// A shared object is read as the object.
impl<T: Object> Object for std::sync::Arc<T> {
    fn meta(&self) -> &ObjectMeta {
        (**self).meta()
    }

    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

impl Object for ServiceImport {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn label(&self, key: &str) -> Option<&str> {
        label(&self.metadata, key)
    }
}

impl Object for GkeServiceImport {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn label(&self, key: &str) -> Option<&str> {
        label(&self.metadata, key)
    }
}

impl Object for k8s_openapi::api::discovery::v1::EndpointSlice {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn label(&self, key: &str) -> Option<&str> {
        label(&self.metadata, key)
    }
}

impl Object for k8s_openapi::api::core::v1::Endpoints {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn label(&self, key: &str) -> Option<&str> {
        label(&self.metadata, key)
    }
}

impl Object for Slice {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }
}

/// The labels of a slice the translation reads; [`SliceLabels`] keeps these
/// and drops the others.
pub const SLICE_LABELS_READ: [&str; 4] =
    [LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, LABEL_MANAGED_BY, LABEL_KUBERNETES_SERVICE_NAME];

/// The labels of a [`Slice`] that the translation reads ([`SLICE_LABELS_READ`]),
/// in the order of that list.
///
/// A `BTreeMap<String, String>` of two labels is a 544-byte tree node and
/// four strings; this is one allocation of a few entries (the keys are the
/// list's own `&'static str`s) and the values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceLabels(Box<[(&'static str, Box<str>)]>);

impl SliceLabels {
    /// The labels of `labels` the translation reads.
    #[must_use]
    pub fn keep(labels: Option<&std::collections::BTreeMap<String, String>>) -> Self {
        let Some(labels) = labels else { return Self::default() };
        Self(SLICE_LABELS_READ.iter().filter_map(|&key| Some((key, labels.get(key)?.as_str().into()))).collect())
    }

    /// The value of label `key`, if the slice has it (and it is one of
    /// [`SLICE_LABELS_READ`]).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
    }
}

/// An `EndpointSlice` as the agent keeps it: what the translation reads, in
/// a fraction of the memory.
///
/// A `k8s-openapi` `Endpoint` is about 350 bytes before any of its strings
/// (its target reference alone is seven optional strings), and the agent
/// keeps every slice of the ClusterSet; an endpoint here is 32 bytes. The
/// translation reads an endpoint's first address (the API says an
/// endpoint's addresses are fungible; kube-proxy reads only the first) and
/// its three conditions, and a slice's labels, address type and ports. Of
/// the metadata, the namespace, name and `resourceVersion` are kept, and the
/// labels the translation reads ([`Slice::kept_metadata`]); other labels,
/// annotations, owner references, `uid`, timestamps and server-side apply's
/// `managedFields` are dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slice {
    /// The object's namespace, name and `resourceVersion`.
    pub metadata: ObjectMeta,
    /// The labels the translation reads.
    pub labels: SliceLabels,
    /// `addressType`: `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    /// `ports`, as in the object.
    pub ports: Option<Vec<k8s_openapi::api::discovery::v1::EndpointPort>>,
    /// `endpoints`, in the object's order (a missing list is empty).
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a [`Slice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// `addresses[0]`; `None` when the list is empty.
    pub address: Option<EndpointAddress>,
    /// `conditions.ready`.
    pub ready: Option<bool>,
    /// `conditions.serving`.
    pub serving: Option<bool>,
    /// `conditions.terminating`.
    pub terminating: Option<bool>,
}

/// An endpoint's first address: parsed when it is IPv4, as written otherwise
/// (for the warning that names it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointAddress {
    /// An IPv4 address.
    V4(std::net::Ipv4Addr),
    /// Anything else, as written.
    Other(Box<str>),
}

impl EndpointAddress {
    /// Reads an address as the API writes it.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        text.parse().map_or_else(|_| Self::Other(text.into()), Self::V4)
    }
}

impl SliceEndpoint {
    /// The kept form of an endpoint with this first address and these conditions.
    #[must_use]
    pub fn new(
        first_address: Option<&str>,
        conditions: Option<&k8s_openapi::api::discovery::v1::EndpointConditions>,
    ) -> Self {
        Self {
            address: first_address.map(EndpointAddress::parse),
            ready: conditions.and_then(|c| c.ready),
            serving: conditions.and_then(|c| c.serving),
            terminating: conditions.and_then(|c| c.terminating),
        }
    }
}

impl From<&k8s_openapi::api::discovery::v1::Endpoint> for SliceEndpoint {
    fn from(e: &k8s_openapi::api::discovery::v1::Endpoint) -> Self {
        Self::new(e.addresses.first().map(String::as_str), e.conditions.as_ref())
    }
}

impl Slice {
    /// What is kept of a slice's metadata: its namespace, name and
    /// `resourceVersion`, and apart from them the labels the translation
    /// reads.
    #[must_use]
    pub fn kept_metadata(metadata: ObjectMeta) -> (ObjectMeta, SliceLabels) {
        let labels = SliceLabels::keep(metadata.labels.as_ref());
        let metadata = ObjectMeta {
            namespace: metadata.namespace,
            name: metadata.name,
            resource_version: metadata.resource_version,
            ..ObjectMeta::default()
        };
        (metadata, labels)
    }

    /// What is kept of a slice's ports: all of them, without spare capacity
    /// (a decoded list grows in steps; a slice has one or two ports).
    #[must_use]
    pub fn kept_ports(
        mut ports: Vec<k8s_openapi::api::discovery::v1::EndpointPort>,
    ) -> Vec<k8s_openapi::api::discovery::v1::EndpointPort> {
        ports.shrink_to_fit();
        ports
    }

    /// The kept form of a slice with these fields (its endpoints only read).
    fn keep(
        metadata: ObjectMeta,
        address_type: String,
        ports: Option<Vec<k8s_openapi::api::discovery::v1::EndpointPort>>,
        endpoints: Option<&[k8s_openapi::api::discovery::v1::Endpoint]>,
    ) -> Self {
        let (metadata, labels) = Self::kept_metadata(metadata);
        Self {
            metadata,
            labels,
            address_type,
            ports: ports.map(Self::kept_ports),
            endpoints: endpoints.into_iter().flatten().map(SliceEndpoint::from).collect(),
        }
    }
}

impl From<&k8s_openapi::api::discovery::v1::EndpointSlice> for Slice {
    fn from(s: &k8s_openapi::api::discovery::v1::EndpointSlice) -> Self {
        Self::keep(s.metadata.clone(), s.address_type.clone(), s.ports.clone(), s.endpoints.as_deref())
    }
}

impl From<k8s_openapi::api::discovery::v1::EndpointSlice> for Slice {
    fn from(s: k8s_openapi::api::discovery::v1::EndpointSlice) -> Self {
        Self::keep(s.metadata, s.address_type, s.ports, s.endpoints.as_deref())
    }
}

/// A `ServiceImport` of the MCS API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImport {
    /// `multicluster.x-k8s.io/v1alpha1` or `multicluster.x-k8s.io/v1beta1`.
    pub api_version: String,
    /// `ServiceImport`.
    pub kind: String,
    /// Standard object metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    /// What the importing cluster should expose.
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: ServiceImportSpec,
    /// The exporting clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceImportStatus>,
}

/// `ServiceImport.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// `ClusterSetIP` or `Headless`; empty means `ClusterSetIP`.
    #[serde(rename = "type", default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    /// The `ClusterSetIPs`, at most one per family, in `ip_families` order.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// `IPv4` / `IPv6`, one per entry of `ips`.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<String>,
    /// The service ports.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// `None` or `ClientIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// Settings of `ClientIP` affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
}

/// An entry of `ServiceImport.spec.ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The port's name; matched against the names of the slices' ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (the default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Application protocol; no dataplane effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The service port. Wider than a port on purpose: range errors are
    /// reported by the translation, which names the field.
    pub port: i64,
}

/// `ServiceImport.spec.sessionAffinityConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    /// Settings of `ClientIP` affinity.
    #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `ServiceImport.spec.sessionAffinityConfig.clientIP`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// Affinity timeout, 1..=86400; unset means 10800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// `ServiceImport.status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportStatus {
    /// The exporting clusters, oldest export first.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

/// An entry of `ServiceImport.status.clusters`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The cluster id.
    pub cluster: String,
}

/// API group of GKE's multi-cluster Services.
pub const GKE_GROUP: &str = "net.gke.io";
/// `apiVersion` of GKE's `ServiceImport`.
pub const GKE_SERVICE_IMPORT_API_VERSION: &str = "net.gke.io/v1";
/// Annotation of a GKE `ServiceImport` naming its derived Service (and so its
/// core/v1 `Endpoints` and `EndpointSlice`s).
pub const GKE_DERIVED_SERVICE_ANNOTATION: &str = "net.gke.io/derived-service";
/// `kubernetes.io/service-name`: the label of slices of an ordinary Service.
pub const LABEL_KUBERNETES_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The project's annotation on a `ServiceImport` choosing its locality
/// preference: `none`, `local` or `remote`.
pub const LOCALITY_ANNOTATION: &str = "mcs-ebpf.dev/locality";

/// A `ServiceImport` of GKE's multi-cluster Services (`net.gke.io/v1`). GKE
/// puts `ips` and `ports` under `status` (its documented example) or `spec`;
/// both are read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GkeServiceImport {
    /// `net.gke.io/v1`.
    pub api_version: String,
    /// `ServiceImport`.
    pub kind: String,
    /// Standard object metadata; carries the derived-service annotation.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    /// `ips`, `ports`, `type`, `sessionAffinity` when GKE puts them here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServiceImportSpec>,
    /// `ips`, `ports`, `type`, `sessionAffinity` in GKE's documented example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceImportSpec>,
}

/// Reads an explicit `null` as the type's default, as the API server does.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<ServiceImport, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_kept_slice_has_what_the_translation_reads_and_drops_the_rest() {
        let object: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "namespace": "demo", "name": "web-east",
                "labels": {"multicluster.kubernetes.io/service-name": "web", "app": "web",
                           "multicluster.kubernetes.io/source-cluster": "east"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-03T00:00:00Z"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u1"}],
                "uid": "u2", "resourceVersion": "42", "generation": 3,
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["198.18.0.1", "198.18.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "nodeName": "n1", "zone": "z", "targetRef": {"kind": "Pod", "name": "p", "namespace": "demo", "uid": "u"}},
                {"addresses": ["2001:2::1"]},
                {"addresses": []}
            ]
        }))
        .expect("the test's slice is a valid EndpointSlice");
        let kept = Slice::from(&object);
        assert_eq!(kept, Slice::from(object.clone()), "by reference and by value alike");
        assert_eq!(
            kept.metadata,
            ObjectMeta {
                namespace: Some("demo".into()),
                name: Some("web-east".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            "labels (kept apart), annotations, owner references, uid, generation and managedFields are dropped"
        );
        assert_eq!(
            (kept.label(LABEL_SERVICE_NAME), kept.label(LABEL_SOURCE_CLUSTER), kept.label(LABEL_MANAGED_BY)),
            (Some("web"), Some("east"), None)
        );
        assert_eq!(kept.label("app"), None, "a label the translation does not read is dropped");
        assert_eq!(kept.labels.0.len(), 2, "{:?}", kept.labels);
        assert_eq!(
            (kept.address_type.as_str(), kept.ports, name_of(&kept.metadata)),
            ("IPv4", object.ports, "web-east")
        );
        let endpoint = |address, (ready, serving, terminating)| SliceEndpoint { address, ready, serving, terminating };
        assert_eq!(
            kept.endpoints,
            vec![
                endpoint(Some(EndpointAddress::V4([198, 18, 0, 1].into())), (Some(false), Some(true), Some(true))),
                endpoint(Some(EndpointAddress::Other("2001:2::1".into())), (None, None, None)),
                endpoint(None, (None, None, None)),
            ]
        );
        assert!(Slice::from(k8s_openapi::api::discovery::v1::EndpointSlice::default()).endpoints.is_empty());
    }

    #[test]
    fn reads_a_full_import_and_ignores_unknown_fields() {
        let import = parse(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1",
            "kind": "ServiceImport",
            "metadata": {"namespace": "demo", "name": "web", "uid": "1234"},
            "spec": {
                "type": "ClusterSetIP",
                "ips": ["198.19.0.1"],
                "ipFamilies": ["IPv4"],
                "ports": [{"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 80}],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "somethingNew": {"x": 1}
            },
            "status": {"clusters": [{"cluster": "east"}, {"cluster": "west", "extra": true}]}
        }))
        .expect("a full import parses");
        assert_eq!(import.namespace(), "demo");
        assert_eq!(import.name(), "web");
        assert_eq!(import.spec.type_, TYPE_CLUSTER_SET_IP);
        assert_eq!(import.spec.ips, ["198.19.0.1"]);
        assert_eq!(import.spec.ip_families, ["IPv4"]);
        assert_eq!(
            import.spec.ports,
            [ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                port: 80,
            }]
        );
        assert_eq!(import.spec.session_affinity.as_deref(), Some("ClientIP"));
        let timeout = import.spec.session_affinity_config.and_then(|c| c.client_ip).and_then(|c| c.timeout_seconds);
        assert_eq!(timeout, Some(60));
        let clusters: Vec<_> = import.status.expect("status").clusters.into_iter().map(|c| c.cluster).collect();
        assert_eq!(clusters, ["east", "west"]);
    }

    #[test]
    fn missing_and_null_fields_default() {
        let import = parse(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "metadata": {"name": "web"},
            "spec": {"type": null, "ips": null, "ports": [{"port": 70000}]}
        }))
        .expect("sparse import parses");
        assert_eq!(import.namespace(), DEFAULT_NAMESPACE);
        assert_eq!(import.spec.type_, "");
        assert!(import.spec.ips.is_empty());
        assert_eq!(import.spec.ports[0].port, 70000, "range is checked by translation, not serde");
        assert_eq!(import.status, None);
    }

    #[test]
    fn wrong_types_are_errors() {
        let err = parse(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1",
            "kind": "ServiceImport",
            "spec": {"ports": [{"port": "80"}]}
        }))
        .expect_err("a string port is rejected");
        assert!(err.contains("expected i64"), "{err}");
        let err = parse(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1",
            "kind": "ServiceImport",
            "spec": {"ips": "198.19.0.1"}
        }))
        .expect_err("a scalar ips is rejected");
        assert!(err.contains("expected a sequence"), "{err}");
    }

    #[test]
    fn recognises_kinds() {
        assert!(is_service_import("multicluster.x-k8s.io/v1alpha1", "ServiceImport"));
        assert!(is_service_import("multicluster.x-k8s.io/v1beta1", "ServiceImport"));
        assert!(!is_service_import("multicluster.x-k8s.io/v1beta1", "ServiceExport"));
        assert!(!is_service_import("net.gke.io/v1", "ServiceImport"));
        assert!(is_gke_service_import("net.gke.io/v1", "ServiceImport"));
        assert!(!is_gke_service_import("multicluster.x-k8s.io/v1beta1", "ServiceImport"));
        assert!(is_endpoints("v1", "Endpoints"));
        assert!(!is_endpoints("v1", "EndpointSlice"));
        assert!(is_endpoint_slice("discovery.k8s.io/v1", "EndpointSlice"));
        assert!(!is_endpoint_slice("discovery.k8s.io/v1beta1", "EndpointSlice"));
    }

    #[test]
    fn reads_gke_imports_from_status_or_spec() {
        let import: GkeServiceImport = serde_json::from_value(serde_json::json!({
            "apiVersion": "net.gke.io/v1",
            "kind": "ServiceImport",
            "metadata": {"namespace": "demo", "name": "web",
                         "annotations": {"net.gke.io/derived-service": "gke-mcs-abc"}},
            "status": {"ips": ["198.19.0.1"], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                       "sessionAffinity": "None", "type": "ClusterSetIP"}
        }))
        .expect("GKE's documented shape parses");
        assert_eq!((import.namespace(), import.name()), ("demo", "web"));
        let status = import.status.expect("status");
        assert_eq!(status.ips, ["198.19.0.1"]);
        assert_eq!(status.ports[0].port, 80);
        assert_eq!(import.spec, None);

        let err = serde_json::from_value::<GkeServiceImport>(serde_json::json!({
            "apiVersion": "net.gke.io/v1", "kind": "ServiceImport", "spec": {"ports": [{"port": true}]}
        }))
        .expect_err("a boolean port is rejected");
        assert!(err.to_string().contains("expected i64"), "{err}");
    }
}
