//! Translation of `ServiceImport`s, `EndpointSlice`s and GKE's imports with
//! their derived `Endpoints` into the desired dataplane state.
//!
//! [`translate`] is a pure function: no I/O, no clock, the inputs are only
//! read, and the output depends on the inputs' contents, not their order. It
//! implements every rule of `docs/mcs-semantics.md`, which names the tests
//! that show each one.
//!
//! Per import (MCS and GKE alike, in (namespace, name, kind) order) the steps
//! are:
//! 1. [`validate`]: check the import and reduce it to a `ValidImport`, or skip
//!    it with a reason that names the field;
//! 2. claim its (`ClusterSetIP`, port, protocol) keys against earlier imports;
//! 3. MCS imports: [`slices::select_clusters`] ranks the *present* exporting
//!    clusters and applies the exporting-cluster cap; the rest are reported as
//!    excluded. GKE imports: [`gke`] finds the derived service's slices or
//!    `Endpoints` (no per-cluster identity, so no cap);
//! 4. per port, the candidates (endpoints with the matching target port) go
//!    through [`backends::choose`]: readiness, locality, the KEP-1669
//!    terminating fallback, and the draining set.

mod backends;
mod gke;
pub mod incremental;
mod slices;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Endpoints;

use crate::k8s::{GkeServiceImport, ServiceImport, Slice};

use self::slices::SliceIndex;
use self::validate::ImportRef;

/// The default `ClientIP` affinity timeout, in seconds.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The largest `ClientIP` affinity timeout, in seconds.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// The default of `--max-exporting-clusters` (GKE's documented safe limit).
pub const DEFAULT_MAX_EXPORTING_CLUSTERS: usize = 5;

/// The objects the translation reads, from whichever source.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// MCS `ServiceImport`s (`multicluster.x-k8s.io`, v1alpha1 or v1beta1).
    /// Shared, as the slices are.
    pub imports: Vec<std::sync::Arc<ServiceImport>>,
    /// `EndpointSlice`s, as kept (all of them; the translation selects by
    /// label). Shared: a source that keeps them (the Kubernetes source's
    /// stores) hands the same ones on, not copies.
    pub slices: Vec<std::sync::Arc<Slice>>,
    /// GKE `ServiceImport`s (`net.gke.io/v1`), shared as the MCS ones are.
    pub gke_imports: Vec<std::sync::Arc<GkeServiceImport>>,
    /// core/v1 `Endpoints` (the GKE imports' derived services).
    pub endpoints: Vec<Endpoints>,
}

impl Inputs {
    /// Appends everything in `other`.
    pub fn extend(&mut self, other: Self) {
        self.imports.extend(other.imports);
        self.slices.extend(other.slices);
        self.gke_imports.extend(other.gke_imports);
        self.endpoints.extend(other.endpoints);
    }
}

/// Which clusters' endpoints a service prefers (the locality annotation, or the
/// agent's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Locality {
    /// Every selected cluster's endpoints alike.
    #[default]
    None,
    /// This cluster's ready endpoints when there are any, the others otherwise.
    Local,
    /// Other clusters' ready endpoints when there are any, this cluster's otherwise.
    Remote,
}

impl Locality {
    /// Every locality, in the order of the flag's help.
    pub const ALL: [Self; 3] = [Self::None, Self::Local, Self::Remote];

    /// The annotation / flag value: `none`, `local` or `remote`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }

    /// Reads an annotation or flag value; `None` when it is not one of
    /// `none`, `local` and `remote` (exact, lower case).
    #[must_use]
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == value)
    }
}

/// Settings of the translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The id of the cluster the agent runs in. Its endpoints are backends like
    /// any other cluster's.
    pub cluster_id: String,
    /// At most this many exporting clusters contribute endpoints to one
    /// import; 0 means no cap.
    pub max_exporting_clusters: usize,
    /// The locality preference of imports without the annotation.
    pub locality: Locality,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_id: String::new(),
            max_exporting_clusters: DEFAULT_MAX_EXPORTING_CLUSTERS,
            locality: Locality::None,
        }
    }
}

/// The L4 protocols the dataplane translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number ([`mcs_common::proto`]).
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => mcs_common::proto::TCP,
            Self::Udp => mcs_common::proto::UDP,
        }
    }

    /// The protocol of an IP protocol number; `None` for one not translated.
    #[must_use]
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            mcs_common::proto::TCP => Some(Self::Tcp),
            mcs_common::proto::UDP => Some(Self::Udp),
            _ => None,
        }
    }

    /// The Kubernetes name: `TCP` or `UDP`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }

    /// Reads a Kubernetes `protocol` field: unset or empty means TCP. `None`
    /// for a protocol that is not translated (SCTP, or anything else).
    #[must_use]
    pub fn from_k8s(value: Option<&str>) -> Option<Self> {
        match value.unwrap_or_default() {
            "" | "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key of one dataplane entry: a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    /// The `ClusterSetIP`.
    pub ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.protocol)
    }
}

/// What one service port should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredServicePort {
    /// The import's namespace.
    pub namespace: String,
    /// The import's name.
    pub name: String,
    /// The port's name in the import, empty when unnamed.
    pub port_name: String,
    /// `ClientIP` affinity timeout in seconds; `None` when affinity is off.
    pub session_affinity_timeout: Option<u32>,
    /// The backends new connections may use, sorted by (cluster, ip, port)
    /// and without duplicates. Empty when no endpoint is usable: new
    /// connections then fail fast.
    pub backends: Vec<DesiredBackend>,
    /// Endpoints that keep their established connections but take no new
    /// ones (terminating endpoints while a ready one exists). Sorted like
    /// `backends` and disjoint from it.
    pub draining: Vec<DesiredBackend>,
}

/// One backend of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredBackend {
    /// The id of the cluster the endpoint is in: shared by the backends of
    /// one cluster (millions of backends, a handful of clusters).
    pub cluster: std::sync::Arc<str>,
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// The endpoint's port (the exporting cluster's target port).
    pub port: u16,
    /// Whether the endpoint takes new connections normally or as a fallback.
    pub state: EndpointState,
}

/// The state of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Ready: takes new connections.
    Ready,
    /// Serving but terminating: takes new connections only when no endpoint is
    /// ready (the KEP-1669 fallback).
    Terminating,
}

/// The whole desired dataplane state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Every service port to program.
    pub services: BTreeMap<ServicePortKey, DesiredServicePort>,
}

/// Why an import was not translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// A `Headless` import: there is no `ClusterSetIP` to program.
    Headless,
    /// A `ClusterSetIP` import that has no ips yet.
    NoIps,
    /// The import breaks a rule; the message names the field.
    Invalid,
}

impl SkipReason {
    /// The stable name used in metrics and command output.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Headless => "headless",
            Self::NoIps => "no-ips",
            Self::Invalid => "invalid",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An import that was not translated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The import's namespace.
    pub namespace: String,
    /// The import's name.
    pub name: String,
    /// Why.
    pub reason: SkipReason,
    /// Details, naming the field at fault.
    pub message: String,
}

/// Why a present exporting cluster contributes no endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExclusionReason {
    /// Ranked after the first `--max-exporting-clusters` clusters.
    ExporterCap,
}

impl ExclusionReason {
    /// The stable name used in metrics and command output.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ExporterCap => "exporter-cap",
        }
    }
}

/// A present exporting cluster whose endpoints are not used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExcludedCluster {
    /// The import's namespace.
    pub namespace: String,
    /// The import's name.
    pub name: String,
    /// The cluster id.
    pub cluster: String,
    /// Why.
    pub reason: ExclusionReason,
}

/// What the translation has to say besides the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Imports not translated, sorted by (namespace, name).
    pub skipped: Vec<Skipped>,
    /// Present clusters that contribute no endpoints, sorted by (namespace,
    /// name, cluster).
    pub excluded_clusters: Vec<ExcludedCluster>,
    /// Problems that did not stop an import from being translated, each
    /// naming the object and field: unusable endpoint addresses or slice ports,
    /// out-of-range affinity timeouts, ... Sorted and without duplicates.
    pub warnings: Vec<String>,
}

/// Translates imports, slices and `Endpoints` into the desired dataplane
/// state, and reports what was skipped, excluded or questionable.
#[must_use]
pub fn translate(inputs: &Inputs, config: &Config) -> (DesiredState, Report) {
    translate_parts(&Parts::of(inputs), config)
}

/// The inputs, borrowed: all of them, or one group's ([`incremental`]).
#[derive(Default)]
struct Parts<'a> {
    imports: Vec<&'a ServiceImport>,
    slices: Vec<&'a Slice>,
    gke_imports: Vec<&'a GkeServiceImport>,
    endpoints: Vec<&'a Endpoints>,
}

impl<'a> Parts<'a> {
    fn of(inputs: &'a Inputs) -> Self {
        Self {
            imports: inputs.imports.iter().map(AsRef::as_ref).collect(),
            slices: inputs.slices.iter().map(AsRef::as_ref).collect(),
            gke_imports: inputs.gke_imports.iter().map(AsRef::as_ref).collect(),
            endpoints: inputs.endpoints.iter().collect(),
        }
    }
}

/// [`translate`] over borrowed inputs.
fn translate_parts(inputs: &Parts<'_>, config: &Config) -> (DesiredState, Report) {
    let mut warnings = BTreeSet::new();
    let index = SliceIndex::new(&inputs.slices, &mut warnings);
    // Only GKE imports read derived services: without them, nothing to index.
    let derived = if inputs.gke_imports.is_empty() {
        gke::DerivedIndex::new(&[], &[])
    } else {
        gke::DerivedIndex::new(&inputs.slices, &inputs.endpoints)
    };
    let mut state = DesiredState::default();
    let mut skipped = Vec::new();
    let mut excluded_clusters = Vec::new();
    // Which import owns each key: the first in (namespace, name, kind) order.
    let mut owners: BTreeMap<ServicePortKey, String> = BTreeMap::new();

    let mut ordered: Vec<ImportRef<'_>> = inputs
        .imports
        .iter()
        .copied()
        .map(ImportRef::Mcs)
        .chain(inputs.gke_imports.iter().copied().map(ImportRef::Gke))
        .collect();
    ordered.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    for same in ordered.chunk_by(|a, b| a.sort_key() == b.sort_key()) {
        let import = same[0];
        let skip = |reason, message: String| Skipped {
            namespace: import.namespace().to_owned(),
            name: import.name().to_owned(),
            reason,
            message: format!("{}{message}", import.message_prefix()),
        };
        if same.len() > 1 {
            // Which copy is right cannot be told, and picking one by input
            // order would make the output depend on it.
            let message = format!("{} {}s have this namespace and name; none is translated", same.len(), import.kind());
            skipped.push(skip(SkipReason::Invalid, message));
            continue;
        }
        let valid = match validate::validate(import, config, &mut warnings) {
            Ok(valid) => valid,
            Err((reason, message)) => {
                skipped.push(skip(reason, message));
                continue;
            }
        };
        if let Some((port, owner)) = valid.ports.iter().find_map(|p| owners.get(&valid.key(p)).map(|o| (p, o))) {
            let message =
                format!("{}.ports[{}]: {} is already used by {owner}", valid.section, port.index, valid.key(port));
            skipped.push(skip(SkipReason::Invalid, message));
            continue;
        }
        let per_port = match &valid.source {
            validate::Source::Mcs { status_clusters } => {
                let present = index.clusters_of(&valid.namespace, &valid.name);
                let (selected, excluded) =
                    slices::select_clusters(status_clusters, present, config.max_exporting_clusters);
                excluded_clusters.extend(excluded.into_iter().map(|cluster| ExcludedCluster {
                    namespace: valid.namespace.clone(),
                    name: valid.name.clone(),
                    cluster: cluster.to_owned(),
                    reason: ExclusionReason::ExporterCap,
                }));
                valid.ports.iter().map(|port| slices::collect_candidates(port, &selected, &mut warnings)).collect()
            }
            validate::Source::Gke { derived_service } => {
                let source = derived.source_of(&valid.namespace, derived_service, &valid.object, &mut warnings);
                valid.ports.iter().map(|port| gke::collect_candidates(&source, port, &mut warnings)).collect::<Vec<_>>()
            }
        };
        for (port, candidates) in valid.ports.iter().zip(per_port) {
            let (backends, draining) = backends::choose(&candidates, valid.locality, &config.cluster_id);
            let entry = DesiredServicePort {
                namespace: valid.namespace.clone(),
                name: valid.name.clone(),
                port_name: port.name.clone(),
                session_affinity_timeout: valid.session_affinity_timeout,
                backends,
                draining,
            };
            owners.insert(valid.key(port), valid.object.clone());
            state.services.insert(valid.key(port), entry);
        }
    }
    skipped.sort_by(|a, b| (&a.namespace, &a.name, &a.message).cmp(&(&b.namespace, &b.name, &b.message)));
    excluded_clusters.sort();
    let report = Report { skipped, excluded_clusters, warnings: warnings.into_iter().collect() };
    (state, report)
}
