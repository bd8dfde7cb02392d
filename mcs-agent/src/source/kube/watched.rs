//! The form the Kubernetes source watches, stores and hands on
//! `EndpointSlice`s in: the kept [`Slice`], decoded straight from the API's
//! JSON.
//!
//! A reflector store of whole `EndpointSlice` objects held every endpoint's
//! addresses, node name, zone, hints and target reference (about 350 bytes
//! an endpoint before its strings), and the snapshot a second, kept copy. A
//! [`WatchedSlice`] decodes only what the translation reads (the fields
//! [`Slice`] keeps; the rest of the text is skipped, not built), and the
//! store and every snapshot share one [`Slice`].
use std::{borrow::Cow, sync::Arc};

use k8s_openapi::{
    Resource as _,
    api::discovery::v1::{EndpointConditions, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Deserialize;

use crate::k8s::{Slice, SliceEndpoint};

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
        Ok(Self(Arc::new(Slice {
            metadata: Slice::kept_metadata(wire.metadata),
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
