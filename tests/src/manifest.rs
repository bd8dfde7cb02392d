//! Manifests for the integration tests, written as JSON files into a
//! directory the agent's file source reads. The objects come from the shared
//! test kit (`mcs_core::testkit`, re-exported here); this module only writes
//! them.
//!
//! Files are written atomically (a temporary name outside the agent's `*.json` pattern, then a
//! rename), so the agent never reads half a file.

use std::fs;
use std::path::Path;

pub use mcs_core::testkit::{
    EndpointConditions, ImportBuilder, NOT_READY, READY, SliceBuilder, TERMINATING, import, slice,
};
use serde::Serialize;

/// Writes `value` as `dir/name` atomically (written as `dir/.name.tmp`, then renamed).
///
/// # Panics
/// If the file cannot be written or renamed.
pub fn write(dir: &Path, name: &str, value: &impl Serialize) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let text = serde_json::to_string_pretty(value).expect("manifest serializes");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    let path = dir.join(name);
    fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), path.display()));
}

/// A temporary directory of manifests, removed on drop (also on panic). Hand its path to
/// [`crate::agent::AgentGuard`], which copies it; later changes go to the agent's own copy
/// (`AgentGuard::manifests`) with [`write`].
#[derive(Debug)]
pub struct ManifestDir {
    dir: tempfile::TempDir,
}

impl ManifestDir {
    /// Creates `<tmp>/<prefix>-source-<random>`.
    ///
    /// # Panics
    /// If it cannot be created.
    #[must_use]
    pub fn new(prefix: &str) -> ManifestDir {
        let dir = tempfile::Builder::new().prefix(&format!("{prefix}-source-")).tempdir();
        ManifestDir { dir: dir.unwrap_or_else(|e| panic!("create a manifest directory for {prefix}: {e}")) }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes one manifest (see [`write`]).
    pub fn write(&self, name: &str, value: &impl Serialize) {
        write(self.dir.path(), name, value);
    }
}

/// The pods' TCP port of [`web_slice`] (where `mcs-testsrv` answers).
pub const WEB_TCP_TARGET: u16 = 8080;
/// The pods' UDP port of [`web_slice`].
pub const WEB_UDP_TARGET: u16 = 5353;

/// `namespace/name` at `ip` with `http` 80/TCP and `dns` 53/UDP: the web service most netns
/// tests import.
#[must_use]
pub fn web_import(namespace: &str, name: &str, ip: std::net::Ipv4Addr) -> ImportBuilder {
    import(namespace, name).ip(ip).tcp("http", 80).udp("dns", 53)
}

/// The slice of `cluster` (topology index) for the [`web_import`] `namespace/service`: every
/// pod of the cluster ready on [`WEB_TCP_TARGET`]/TCP and [`WEB_UDP_TARGET`]/UDP.
#[must_use]
pub fn web_slice(topology: &crate::topology::Topology, namespace: &str, service: &str, cluster: usize) -> SliceBuilder {
    let ips: Vec<std::net::Ipv4Addr> = (0..topology.pods_in(cluster)).map(|j| topology.pod_ip(cluster, j)).collect();
    slice(namespace, service, topology.cluster_name(cluster))
        .tcp("http", WEB_TCP_TARGET)
        .udp("dns", WEB_UDP_TARGET)
        .ready_all(ips)
}
