//! Choosing a service port's backends among its candidate endpoints:
//! readiness, locality, the KEP-1669 terminating fallback, draining.
use std::net::Ipv4Addr;

use super::{DesiredBackend, EndpointState, Locality};

/// An endpoint that may become a backend of one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Candidate {
    /// The exporting cluster's id; empty for GKE imports.
    pub(super) cluster: std::sync::Arc<str>,
    pub(super) ip: Ipv4Addr,
    /// The target port (of the slice or `Endpoints` port that matched).
    pub(super) port: u16,
    /// `conditions.ready`, unset counting as true.
    pub(super) ready: bool,
    /// `conditions.serving`, unset counting as `ready`.
    pub(super) serving: bool,
    /// `conditions.terminating`, unset counting as false.
    pub(super) terminating: bool,
}

impl Candidate {
    fn backend(&self, state: EndpointState) -> DesiredBackend {
        DesiredBackend { cluster: self.cluster.clone(), ip: self.ip, port: self.port, state }
    }
}

/// Splits the candidates of a service port into `(backends, draining)`, each
/// sorted by (cluster, ip, port) without duplicates, disjoint.
///
/// - The ready endpoints, narrowed by `locality` (`local`: this cluster's when
///   it has any; `remote`: the other clusters' when they have any), are the
///   backends.
/// - When no endpoint at all is ready, the serving and terminating ones are,
///   as [`EndpointState::Terminating`] (KEP-1669).
/// - Every terminating endpoint that is not a backend, and every ready one
///   that the locality preference passed over, is draining: it keeps its
///   established connections and gets no new ones.
/// - Endpoints that are neither ready nor terminating are in neither list.
pub(super) fn choose(
    candidates: &[Candidate],
    locality: Locality,
    cluster_id: &str,
) -> (Vec<DesiredBackend>, Vec<DesiredBackend>) {
    let is_local = |c: &Candidate| !cluster_id.is_empty() && &*c.cluster == cluster_id;
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
    let preferred: Vec<&Candidate> = match locality {
        Locality::None => Vec::new(),
        Locality::Local => ready.iter().copied().filter(|c| is_local(c)).collect(),
        Locality::Remote => ready.iter().copied().filter(|c| !is_local(c)).collect(),
    };
    let mut backends: Vec<DesiredBackend> = if !preferred.is_empty() {
        preferred.iter().map(|c| c.backend(EndpointState::Ready)).collect()
    } else if !ready.is_empty() {
        ready.iter().map(|c| c.backend(EndpointState::Ready)).collect()
    } else {
        candidates
            .iter()
            .filter(|c| c.serving && c.terminating)
            .map(|c| c.backend(EndpointState::Terminating))
            .collect()
    };
    sort_dedup(&mut backends);
    // Terminating endpoints, and ready ones that the locality preference
    // passed over: both keep their established connections.
    let mut draining: Vec<DesiredBackend> = candidates
        .iter()
        .filter_map(|c| {
            if c.ready {
                Some(c.backend(EndpointState::Ready))
            } else if c.terminating {
                Some(c.backend(EndpointState::Terminating))
            } else {
                None
            }
        })
        .filter(|d| backends.binary_search_by(|b| identity(b).cmp(&identity(d))).is_err())
        .collect();
    sort_dedup(&mut draining);
    (backends, draining)
}

/// What makes two backends the same endpoint: (cluster, ip, port). The
/// lists are sorted by it.
fn identity(b: &DesiredBackend) -> (&str, Ipv4Addr, u16) {
    (&b.cluster, b.ip, b.port)
}

/// Sorts by (cluster, ip, port, state) and drops duplicates. Ready sorts
/// before Terminating, so a duplicate keeps the better state.
fn sort_dedup(backends: &mut Vec<DesiredBackend>) {
    backends.sort();
    backends.dedup_by(|b, a| identity(a) == identity(b));
}
