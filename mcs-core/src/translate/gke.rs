//! GKE's `net.gke.io/v1` imports: their endpoints come from the derived
//! service named by the `net.gke.io/derived-service` annotation, through its
//! `EndpointSlice`s (labelled `kubernetes.io/service-name=<derived>`) where
//! they exist, else its core/v1 `Endpoints`. These carry no per-cluster
//! identity: every backend's cluster is `""`, and the exporting-cluster cap
//! does not apply (GKE's importer already applies it).
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};

use super::Protocol;
use super::backends::Candidate;
use super::slices::{slice_candidates, usable_address_type};
use super::validate::ValidPort;
use crate::k8s::{self, Slice};

/// Slices by `kubernetes.io/service-name`, and `Endpoints` by name, both per
/// namespace.
pub(super) struct DerivedIndex<'a> {
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a Slice>>,
    endpoints: BTreeMap<(&'a str, &'a str), Vec<&'a Endpoints>>,
}

/// Where a derived service's endpoints come from.
pub(super) enum DerivedSource<'a> {
    /// Its IPv4 slices, sorted by name.
    Slices(Vec<&'a Slice>),
    /// Its `Endpoints` object.
    Endpoints(&'a Endpoints),
    /// Nothing found (or nothing usable): the ports have no backends.
    Missing,
}

impl<'a> DerivedIndex<'a> {
    pub(super) fn new(slices: &[&'a Slice], endpoints: &[&'a Endpoints]) -> Self {
        let mut by_service: BTreeMap<(&str, &str), Vec<&Slice>> = BTreeMap::new();
        for &slice in slices {
            if let Some(service) = slice.labels.get(k8s::LABEL_KUBERNETES_SERVICE_NAME) {
                by_service.entry((k8s::namespace_of(&slice.metadata), service)).or_default().push(slice);
            }
        }
        for list in by_service.values_mut() {
            list.sort_by_key(|s| k8s::name_of(&s.metadata));
        }
        let mut by_name: BTreeMap<(&str, &str), Vec<&Endpoints>> = BTreeMap::new();
        for &object in endpoints {
            let key = (k8s::namespace_of(&object.metadata), k8s::name_of(&object.metadata));
            by_name.entry(key).or_default().push(object);
        }
        Self { slices: by_service, endpoints: by_name }
    }

    /// The endpoints of derived service `derived` in `namespace`, for the
    /// import `object` (named in warnings).
    pub(super) fn source_of<'s>(
        &'s self,
        namespace: &'s str,
        derived: &'s str,
        object: &str,
        warnings: &mut BTreeSet<String>,
    ) -> DerivedSource<'s> {
        let slices: Vec<&Slice> = self
            .slices
            .get(&(namespace, derived))
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| usable_address_type(s, warnings))
            .collect();
        if !slices.is_empty() {
            return DerivedSource::Slices(slices);
        }
        match self.endpoints.get(&(namespace, derived)).map(Vec::as_slice) {
            Some([one]) => DerivedSource::Endpoints(one),
            Some(many) => {
                warnings.insert(format!(
                    "{object}: {} Endpoints objects are named {namespace}/{derived} (its derived service); none is \
                     used, its ports have no backends",
                    many.len()
                ));
                DerivedSource::Missing
            }
            None => {
                warnings.insert(format!(
                    "{object}: its derived service {derived:?} has no IPv4 EndpointSlice labelled {}={derived} and \
                     no Endpoints object in namespace {namespace}; its ports have no backends",
                    k8s::LABEL_KUBERNETES_SERVICE_NAME
                ));
                DerivedSource::Missing
            }
        }
    }
}

/// The endpoints of a derived service with the target port matching `port`.
pub(super) fn collect_candidates(
    source: &DerivedSource<'_>,
    port: &ValidPort,
    warnings: &mut BTreeSet<String>,
) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    match source {
        DerivedSource::Slices(slices) => {
            let no_cluster: std::sync::Arc<str> = "".into();
            for slice in slices {
                slice_candidates(&no_cluster, slice, port, warnings, &mut candidates);
            }
        }
        DerivedSource::Endpoints(object) => endpoints_candidates(object, port, warnings, &mut candidates),
        DerivedSource::Missing => {}
    }
    candidates
}

/// `"Endpoints namespace/name"`.
fn endpoints_label(object: &Endpoints) -> String {
    format!("Endpoints {}/{}", k8s::namespace_of(&object.metadata), k8s::name_of(&object.metadata))
}

/// The endpoints of each subset with a port matching `port` by name, then
/// protocol: `addresses` are ready, `notReadyAddresses` are not (and not
/// terminating: `Endpoints` cannot say so).
fn endpoints_candidates(
    object: &Endpoints,
    port: &ValidPort,
    warnings: &mut BTreeSet<String>,
    out: &mut Vec<Candidate>,
) {
    let label = endpoints_label(object);
    for (s, subset) in object.subsets.iter().flatten().enumerate() {
        let is_match = |p: &&k8s_openapi::api::core::v1::EndpointPort| {
            p.name.as_deref().unwrap_or_default() == port.name
                && Protocol::from_k8s(p.protocol.as_deref()) == Some(port.protocol)
        };
        let mut matches = subset.ports.iter().flatten().enumerate().filter(|(_, p)| is_match(p));
        let Some((i, subset_port)) = matches.next() else {
            continue;
        };
        if let Some((j, _)) = matches.next() {
            warnings.insert(format!(
                "{label} subsets[{s}].ports[{j}]: port name {:?} with protocol {} is listed twice (also \
                 subsets[{s}].ports[{i}]); the subset contributes nothing to that port",
                port.name, port.protocol
            ));
            continue;
        }
        let target_port = match u16::try_from(subset_port.port) {
            Ok(n) if n != 0 => n,
            _ => {
                warnings
                    .insert(format!("{label} subsets[{s}].ports[{i}].port: {} is outside 1..=65535", subset_port.port));
                continue;
            }
        };
        let lists = [("addresses", &subset.addresses, true), ("notReadyAddresses", &subset.not_ready_addresses, false)];
        for (field, addresses, ready) in lists {
            for (a, address) in addresses.iter().flatten().enumerate() {
                let Some(ip) = address_ip(address, &format!("{label} subsets[{s}].{field}[{a}].ip"), warnings) else {
                    continue;
                };
                out.push(Candidate {
                    cluster: "".into(),
                    ip,
                    port: target_port,
                    ready,
                    serving: ready,
                    terminating: false,
                });
            }
        }
    }
}

/// An IPv4 address of an `Endpoints` object; IPv6 ones are skipped silently
/// (an IPv4 VIP uses IPv4 endpoints only), unparsable ones with a warning.
fn address_ip(address: &EndpointAddress, field: &str, warnings: &mut BTreeSet<String>) -> Option<Ipv4Addr> {
    match address.ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Some(ip),
        Ok(IpAddr::V6(_)) => None,
        Err(_) => {
            warnings.insert(format!("{field}: {:?} is not an IP address", address.ip));
            None
        }
    }
}
