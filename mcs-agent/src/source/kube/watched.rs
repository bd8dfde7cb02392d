//! The forms the Kubernetes source watches and stores objects in.
//!
//! `EndpointSlice`s: the kept [`Slice`], decoded straight from the API's
//! JSON.
//!
//! A reflector store of whole `EndpointSlice` objects held every endpoint's
//! addresses, node name, zone, hints and target reference (about 350 bytes
//! an endpoint before its strings), and the snapshot a second, kept copy. A
//! [`WatchedSlice`] decodes only what the translation reads (the fields
//! [`Slice`] keeps; the rest of the text is skipped, not built), and the
//! store and every snapshot share one [`Slice`].
//!
//! ServiceImports (MCS and GKE): the typed import, or why the object does not
//! read as one ([`WatchedImport`]). A store of [`kube::api::DynamicObject`]s
//! kept every import as a tree of JSON values, and converting them kept a
//! second, typed copy; an import is now decoded once, when it arrives, and a
//! malformed one still never fails a list or a watch.
use std::{borrow::Cow, fmt::Debug, sync::Arc};

use k8s_openapi::{
    Resource as _,
    api::discovery::v1::{EndpointConditions, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::api::ApiResource;
use serde::{Deserialize, de::DeserializeOwned};

use crate::k8s::{self, GkeServiceImport, ServiceImport, Slice, SliceEndpoint};

/// An `EndpointSlice` as the Kubernetes source watches it.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchedSlice(pub Arc<Slice>);

impl kube::Resource for WatchedSlice {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        EndpointSlice::KIND.into()
    }

    fn group((): &()) -> Cow<'_, str> {
        EndpointSlice::GROUP.into()
    }

    fn version((): &()) -> Cow<'_, str> {
        EndpointSlice::VERSION.into()
    }

    fn plural((): &()) -> Cow<'_, str> {
        EndpointSlice::URL_PATH_SEGMENT.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut Arc::make_mut(&mut self.0).metadata
    }
}

/// The fields of an `EndpointSlice` that are decoded.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    address_type: String,
    #[serde(default)]
    ports: Option<Vec<EndpointPort>>,
    #[serde(default)]
    endpoints: Option<Vec<WireEndpoint>>,
}

/// The fields of an endpoint that are decoded.
#[derive(Deserialize)]
struct WireEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<EndpointConditions>,
}

impl<'de> Deserialize<'de> for WatchedSlice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let (metadata, labels) = Slice::kept_metadata(wire.metadata);
        Ok(Self(Arc::new(Slice {
            metadata,
            labels,
            address_type: wire.address_type,
            ports: wire.ports.map(Slice::kept_ports),
            endpoints: wire
                .endpoints
                .unwrap_or_default()
                .iter()
                .map(|e| SliceEndpoint::new(e.addresses.first().map(String::as_str), e.conditions.as_ref()))
                .collect(),
        })))
    }
}

impl crate::k8s::Object for WatchedSlice {
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.0.labels.get(key)
    }
}

/// An import type the source watches.
pub trait ImportKind: DeserializeOwned + Clone + Debug + PartialEq + Send + Sync + 'static {
    /// What a problem calls an object of this type.
    const WHAT: &'static str;
    /// The `apiVersion` a list item without type fields is read as.
    const DEFAULT_API_VERSION: &'static str;
}

impl ImportKind for ServiceImport {
    const WHAT: &'static str = "ServiceImport";
    const DEFAULT_API_VERSION: &'static str = k8s::SERVICE_IMPORT_API_VERSIONS[1];
}

impl ImportKind for GkeServiceImport {
    const WHAT: &'static str = "GKE ServiceImport";
    const DEFAULT_API_VERSION: &'static str = k8s::GKE_SERVICE_IMPORT_API_VERSION;
}

/// A ServiceImport as the Kubernetes source watches it: what the reflector
/// keys it by, and the typed import or the reason it is not one.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchedImport<T> {
    /// Namespace, name, `resourceVersion` and `uid` only.
    pub metadata: ObjectMeta,
    /// The object's `apiVersion` (list items may come without it).
    pub api_version: String,
    /// The import (shared with the snapshots), or the serde path of the bad
    /// field and what is wrong.
    pub typed: Result<Arc<T>, String>,
}

impl<T: ImportKind> kube::Resource for WatchedImport<T> {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(ar: &ApiResource) -> Cow<'_, str> {
        ar.kind.as_str().into()
    }

    fn group(ar: &ApiResource) -> Cow<'_, str> {
        ar.group.as_str().into()
    }

    fn version(ar: &ApiResource) -> Cow<'_, str> {
        ar.version.as_str().into()
    }

    fn api_version(ar: &ApiResource) -> Cow<'_, str> {
        ar.api_version.as_str().into()
    }

    fn plural(ar: &ApiResource) -> Cow<'_, str> {
        ar.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<T: ImportKind> WatchedImport<T> {
    /// Reads `value` as a `T`: its `managedFields` are dropped, and a list
    /// item without type fields is given `T`'s kind and default version.
    ///
    /// # Errors
    /// Only when `value` is not an object or its metadata does not read (a
    /// problem could not name the object); anything else wrong is kept in
    /// `typed`.
    pub fn from_value(mut value: serde_json::Value) -> Result<Self, String> {
        let map = value.as_object_mut().ok_or("a ServiceImport is a JSON object")?;
        if let Some(meta) = map.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
            meta.remove("managedFields");
        }
        let full = match map.get("metadata") {
            Some(meta) => ObjectMeta::deserialize(meta).map_err(|e| format!("metadata: {e}"))?,
            None => ObjectMeta::default(),
        };
        let metadata = ObjectMeta {
            namespace: full.namespace,
            name: full.name,
            resource_version: full.resource_version,
            uid: full.uid,
            ..ObjectMeta::default()
        };
        let api_version = match map.get("apiVersion").and_then(serde_json::Value::as_str) {
            Some(v) => v.to_owned(),
            None => T::DEFAULT_API_VERSION.to_owned(),
        };
        map.entry("apiVersion").or_insert_with(|| api_version.clone().into());
        map.entry("kind").or_insert_with(|| k8s::SERVICE_IMPORT_KIND.into());
        let typed =
            serde_path_to_error::deserialize(value).map(Arc::new).map_err(|e| format!("{}: {}", e.path(), e.inner()));
        Ok(Self { metadata, api_version, typed })
    }
}

impl<'de, T: ImportKind> Deserialize<'de> for WatchedImport<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcs_core::testkit;

    #[test]
    fn decodes_what_the_kept_slice_keeps_from_the_api_json() {
        let mut object = testkit::slice("demo", "web", "east")
            .port("http", None, 8080)
            .ready("198.18.0.1")
            .terminating("198.18.0.2")
            .not_ready("198.18.0.3")
            .object();
        object.metadata.managed_fields =
            Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry::default()]);
        object.metadata.uid = Some("u1".into());
        object.metadata.labels.get_or_insert_default().insert("app".into(), "web".into());
        // Fields the translation does not read are skipped, whatever they hold.
        let mut json = serde_json::to_value(&object).expect("serialise the slice");
        json["endpoints"][0]["nodeName"] = "node-a".into();
        json["endpoints"][0]["zone"] = "zone-a".into();
        json["endpoints"][0]["targetRef"] = serde_json::json!({"kind": "Pod", "name": "web-0"});
        json["endpoints"][0]["hints"] = serde_json::json!({"forZones": [{"name": "zone-a"}]});
        let watched: WatchedSlice = serde_json::from_value(json).expect("decode the slice");
        assert_eq!(*watched.0, Slice::from(&object), "the watched form is the kept form");
        assert_eq!(watched.0.metadata.managed_fields, None, "managedFields are dropped");
        assert_eq!(watched.0.metadata.uid, None, "what the translation does not read is dropped");
        assert_eq!(
            (watched.0.labels.get(k8s::LABEL_SERVICE_NAME), watched.0.labels.get("app")),
            (Some("web"), None),
            "the labels the translation reads are kept, the others dropped"
        );
        assert_eq!(watched.0.endpoints.len(), 3, "{watched:?}");
    }

    #[test]
    fn a_slice_without_endpoints_or_type_decodes_empty() {
        let watched: WatchedSlice =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s", "namespace": "ns"}}))
                .expect("decode a bare slice");
        assert!(watched.0.endpoints.is_empty() && watched.0.address_type.is_empty(), "{watched:?}");
        assert_eq!(<WatchedSlice as kube::Resource>::plural(&()), "endpointslices");
        assert_eq!(<WatchedSlice as kube::Resource>::api_version(&()), "discovery.k8s.io/v1");
    }
}
