//! MCS `EndpointSlice`s: which count, the exporting-cluster cap, and the
//! endpoints they contribute to a service port.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointPort;

use super::Protocol;
use super::backends::Candidate;
use super::validate::ValidPort;
use crate::k8s::{self, EndpointAddress, Slice, SliceEndpoint};

/// The slices of an import, by cluster id (in byte order).
pub(super) type ClusterSlices<'a> = BTreeMap<&'a str, Vec<&'a Slice>>;

/// The MCS slices that count, grouped by (namespace, service name) and then by
/// cluster. Only IPv4 slices are kept: every programmed `ClusterSetIP` is IPv4,
/// and an IPv4 VIP uses IPv4 slices only. So a cluster is *present* for an
/// import when it has at least one IPv4 slice for it (empty or not).
pub(super) struct SliceIndex<'a> {
    by_service: BTreeMap<(&'a str, &'a str), ClusterSlices<'a>>,
}

impl<'a> SliceIndex<'a> {
    pub(super) fn new(slices: &[&'a Slice], warnings: &mut BTreeSet<String>) -> Self {
        let mut by_service: BTreeMap<(&str, &str), ClusterSlices<'a>> = BTreeMap::new();
        for &slice in slices {
            let meta = &slice.metadata;
            let Some(service) = slice.labels.get(k8s::LABEL_SERVICE_NAME).filter(|s| !s.is_empty()) else {
                continue; // Not an MCS slice.
            };
            if slice.labels.get(k8s::LABEL_MANAGED_BY) == Some(k8s::MANAGED_BY_ENDPOINTSLICE_CONTROLLER) {
                continue; // A single-cluster Service's slice.
            }
            let Some(cluster) = slice.labels.get(k8s::LABEL_SOURCE_CLUSTER).filter(|c| !c.is_empty()) else {
                warnings.insert(format!(
                    "{}: has label {} but no {} label; ignored",
                    slice_label(slice),
                    k8s::LABEL_SERVICE_NAME,
                    k8s::LABEL_SOURCE_CLUSTER
                ));
                continue;
            };
            if !usable_address_type(slice, warnings) {
                continue;
            }
            by_service.entry((k8s::namespace_of(meta), service)).or_default().entry(cluster).or_default().push(slice);
        }
        // Keep everything independent of the input order.
        for slices in by_service.values_mut().flat_map(BTreeMap::values_mut) {
            slices.sort_by_key(|s| k8s::name_of(&s.metadata));
        }
        Self { by_service }
    }

    /// The *present* clusters of an import: those with at least one slice.
    pub(super) fn clusters_of<'s>(&'s self, namespace: &'s str, name: &'s str) -> Option<&'s ClusterSlices<'s>> {
        self.by_service.get(&(namespace, name))
    }
}

/// Whether a slice holds IPv4 addresses. IPv6 and FQDN slices are skipped
/// silently; an unknown address type gets a warning.
pub(super) fn usable_address_type(slice: &Slice, warnings: &mut BTreeSet<String>) -> bool {
    match slice.address_type.as_str() {
        k8s::ADDRESS_TYPE_IPV4 => true,
        k8s::ADDRESS_TYPE_IPV6 | k8s::ADDRESS_TYPE_FQDN => false,
        other => {
            warnings.insert(format!("{} addressType: unknown address type {other:?}; ignored", slice_label(slice)));
            false
        }
    }
}

/// `"EndpointSlice namespace/name"`.
pub(super) fn slice_label(slice: &Slice) -> String {
    format!("EndpointSlice {}/{}", k8s::namespace_of(&slice.metadata), k8s::name_of(&slice.metadata))
}

/// Applies the exporting-cluster cap: ranks the present clusters (first those
/// in `status.clusters`, in that order; then the others by cluster id in byte
/// order) and keeps the first `cap` (all when `cap` is 0). Returns the selected
/// clusters' slices and the excluded clusters' ids, in rank order.
///
/// Readiness plays no part, so a change in an unselected cluster never changes
/// the selection, and when a selected cluster disappears the next one moves up.
pub(super) fn select_clusters<'a>(
    status_clusters: &[String],
    present: Option<&ClusterSlices<'a>>,
    cap: usize,
) -> (ClusterSlices<'a>, Vec<&'a str>) {
    let Some(present) = present else {
        return (ClusterSlices::new(), Vec::new());
    };
    let mut ranked: Vec<&'a str> = Vec::with_capacity(present.len());
    for listed in status_clusters {
        if let Some((&id, _)) = present.get_key_value(listed.as_str())
            && !ranked.contains(&id)
        {
            ranked.push(id);
        }
    }
    // BTreeMap keys are in byte order.
    let unlisted: Vec<&'a str> = present.keys().copied().filter(|id| !ranked.contains(id)).collect();
    ranked.extend(unlisted);
    let keep = if cap == 0 { ranked.len() } else { cap.min(ranked.len()) };
    let excluded = ranked.split_off(keep);
    let selected = ranked.into_iter().map(|id| (id, present[id].clone())).collect();
    (selected, excluded)
}

/// Every endpoint of the selected clusters' slices, with the target port of
/// the slice port that matches `port` by name and then protocol.
pub(super) fn collect_candidates(
    port: &ValidPort,
    selected: &ClusterSlices<'_>,
    warnings: &mut BTreeSet<String>,
) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for (cluster, slices) in selected {
        let cluster: std::sync::Arc<str> = (*cluster).into();
        for slice in slices {
            slice_candidates(&cluster, slice, port, warnings, &mut candidates);
        }
    }
    candidates
}

/// Appends the endpoints of one IPv4 slice, as backends of `cluster`, when it
/// has a port matching `port`.
pub(super) fn slice_candidates(
    cluster: &std::sync::Arc<str>,
    slice: &Slice,
    port: &ValidPort,
    warnings: &mut BTreeSet<String>,
    out: &mut Vec<Candidate>,
) {
    let Some(target_port) = matching_port(slice, port, warnings) else {
        return;
    };
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let Some(ip) = endpoint_ip(slice, i, endpoint, warnings) else {
            continue;
        };
        let ready = endpoint.ready.unwrap_or(true);
        out.push(Candidate {
            cluster: std::sync::Arc::clone(cluster),
            ip,
            port: target_port,
            ready,
            serving: endpoint.serving.unwrap_or(ready),
            terminating: endpoint.terminating.unwrap_or(false),
        });
    }
}

/// The target port of the slice port named like `port` with its protocol;
/// `None` when the slice has no such port, two of them, or no usable number.
fn matching_port(slice: &Slice, port: &ValidPort, warnings: &mut BTreeSet<String>) -> Option<u16> {
    let is_match = |p: &EndpointPort| {
        p.name.as_deref().unwrap_or_default() == port.name
            && Protocol::from_k8s(p.protocol.as_deref()) == Some(port.protocol)
    };
    let mut matches = slice.ports.iter().flatten().enumerate().filter(|(_, p)| is_match(p));
    let (i, slice_port) = matches.next()?;
    if let Some((j, _)) = matches.next() {
        warnings.insert(format!(
            "{} ports[{j}]: port name {:?} with protocol {} is listed twice (also ports[{i}]); the slice contributes \
             nothing to that port",
            slice_label(slice),
            port.name,
            port.protocol
        ));
        return None;
    }
    let number = slice_port.port?;
    match u16::try_from(number) {
        Ok(n) if n != 0 => Some(n),
        _ => {
            warnings.insert(format!("{} ports[{i}].port: {number} is outside 1..=65535", slice_label(slice)));
            None
        }
    }
}

/// The address of an endpoint of an IPv4 slice. Only the first address is
/// used: the API says the addresses of one endpoint are fungible, and
/// kube-proxy does the same.
fn endpoint_ip(slice: &Slice, i: usize, endpoint: &SliceEndpoint, warnings: &mut BTreeSet<String>) -> Option<Ipv4Addr> {
    match &endpoint.address {
        Some(EndpointAddress::V4(ip)) => Some(*ip),
        Some(EndpointAddress::Other(address)) => {
            warnings.insert(format!(
                "{} endpoints[{i}].addresses[0]: {address:?} is not an IPv4 address",
                slice_label(slice)
            ));
            None
        }
        None => {
            warnings.insert(format!("{} endpoints[{i}].addresses: empty", slice_label(slice)));
            None
        }
    }
}
