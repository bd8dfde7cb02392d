//! Generated ServiceImports and EndpointSlices (JSON `List` files, which the
//! agent's file source reads like YAML), and the address plan of the benchmarks.
//!
//! Every address is in 198.18.0.0/15: ClusterSetIPs in 198.19.0.0/16, real pods
//! of the topology in 198.18.0-3.x, and endpoints that never receive a packet
//! (the filler services' pods) in 198.18.4.0 - 198.18.253.255.
use std::{
    fs,
    io::{BufWriter, Write as _},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{Context as _, Result};
use mcs_core::testkit::{self, ImportBuilder, SliceBuilder};
use serde_json::{Value, json};

/// Namespace of every generated object.
pub const NAMESPACE: &str = "bench";

/// Addresses available for filler endpoints.
const FAKE_POOL: u32 = 250 * 256;

/// The `k`-th filler endpoint address (wraps after 64,000).
#[must_use]
pub fn fake_ip(k: u32) -> Ipv4Addr {
    let k = k % FAKE_POOL;
    Ipv4Addr::new(198, 18, u8::try_from(4 + k / 256).unwrap_or(253), u8::try_from(k % 256).unwrap_or(0))
}

/// The ClusterSetIP of filler service `i` (i < 60,000): 198.19.(1 + i / 250).(1 + i % 250).
#[must_use]
pub fn filler_vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, u8::try_from(1 + i / 250).unwrap_or(255), u8::try_from(1 + i % 250).unwrap_or(255))
}

/// A service port: name, service port, backend (target) port.
#[derive(Clone, Debug)]
#[expect(clippy::struct_field_names, reason = "`port` is the Kubernetes field name")]
pub struct Port {
    /// Port name (backend ports are matched by it).
    pub name: String,
    /// The ClusterSetIP's port.
    pub port: u16,
    /// The pods' port.
    pub target: u16,
}

impl Port {
    /// A TCP port.
    #[must_use]
    pub fn new(name: &str, port: u16, target: u16) -> Self {
        Self { name: name.to_owned(), port, target }
    }
}

/// One exporting cluster's endpoints of a service.
#[derive(Clone, Debug)]
pub struct Export {
    /// Cluster name.
    pub cluster: String,
    /// Ready endpoint addresses.
    pub addresses: Vec<Ipv4Addr>,
}

/// A generated service: one ServiceImport and one EndpointSlice per exporting cluster.
#[derive(Clone, Debug)]
pub struct Service {
    /// Object name.
    pub name: String,
    /// The ClusterSetIP.
    pub vip: Ipv4Addr,
    /// TCP ports.
    pub ports: Vec<Port>,
    /// Exporting clusters.
    pub exports: Vec<Export>,
}

impl Service {
    /// The `ServiceImport`.
    #[must_use]
    pub fn import(&self) -> ImportBuilder {
        let clusters: Vec<&str> = self.exports.iter().map(|e| e.cluster.as_str()).collect();
        let import = testkit::import(NAMESPACE, &self.name).ip(self.vip).family("IPv4");
        self.ports.iter().fold(import, |i, p| i.tcp(&p.name, p.port)).status_clusters(&clusters)
    }

    /// The `EndpointSlice` of exporting cluster `e`.
    #[must_use]
    pub fn slice(&self, e: &Export) -> SliceBuilder {
        let slice = testkit::slice(NAMESPACE, &self.name, &e.cluster);
        let slice = self.ports.iter().fold(slice, |s, p| s.tcp(&p.name, p.target));
        e.addresses.iter().fold(slice, SliceBuilder::ready)
    }

    /// The import followed by its slices, as JSON.
    ///
    /// # Panics
    /// Never: the objects always serialize.
    #[must_use]
    pub fn objects(&self) -> Vec<Value> {
        let json = |object: Result<Value, _>| object.expect("a built object serializes");
        let mut v = vec![json(serde_json::to_value(self.import()))];
        v.extend(self.exports.iter().map(|e| json(serde_json::to_value(self.slice(e)))));
        v
    }
}

/// The shape of a filler service: how many ports, exporting clusters, and
/// endpoints in each cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Service ports.
    pub ports: u16,
    /// Exporting clusters.
    pub clusters: u32,
    /// Endpoints per cluster.
    pub per_cluster: u32,
}

/// Filler service `i` of `shape`, every (address, port) distinct from every
/// other service's.
#[must_use]
pub fn filler(i: u32, Shape { ports, clusters, per_cluster }: Shape) -> Service {
    let per_service = clusters * per_cluster;
    let first_port = 10_000 + u16::try_from(i % 20_000).unwrap_or(0);
    Service {
        name: format!("svc-{i:05}"),
        vip: filler_vip(i),
        ports: (0..ports).map(|p| Port::new(&format!("p{p}"), 80 + p, first_port + p * 25_000)).collect(),
        exports: (0..clusters)
            .map(|c| Export {
                cluster: format!("c{c}"),
                addresses: (0..per_cluster).map(|j| fake_ip(i * per_service + c * per_cluster + j)).collect(),
            })
            .collect(),
    }
}

/// Writes `objects` as one JSON `List` to `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn write_list(path: &Path, objects: &[Value]) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer(&mut w, &json!({"apiVersion": "v1", "kind": "List", "items": objects}))
        .with_context(|| format!("writing {}", path.display()))?;
    w.flush().with_context(|| format!("writing {}", path.display()))
}

/// Writes `services` into `dir`, `per_file` services to a file
/// (`services-0000.json`, ...). Returns the number of files.
///
/// # Errors
/// When a file cannot be written.
pub fn write_services(dir: &Path, services: impl Iterator<Item = Service>, per_file: usize) -> Result<usize> {
    let mut files = 0;
    let mut batch = Vec::new();
    let mut count = 0;
    for s in services {
        batch.extend(s.objects());
        count += 1;
        if count == per_file {
            write_list(&dir.join(format!("services-{files:04}.json")), &batch)?;
            files += 1;
            batch.clear();
            count = 0;
        }
    }
    if count > 0 {
        write_list(&dir.join(format!("services-{files:04}.json")), &batch)?;
        files += 1;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_the_benchmark_range_and_do_not_collide_with_the_topology() {
        for k in [0, 1, 255, 256, FAKE_POOL - 1, FAKE_POOL, 1_000_000] {
            let o = fake_ip(k).octets();
            assert_eq!(o[..2], [198, 18]);
            assert!((4..=253).contains(&o[2]), "{k}: {}", fake_ip(k));
        }
        for i in [0, 249, 250, 9_999, 59_999] {
            let o = filler_vip(i).octets();
            assert_eq!(o[..2], [198, 19]);
            assert!(o[2] >= 1 && o[3] >= 1, "{i}");
        }
    }

    #[test]
    fn filler_endpoints_are_distinct_within_a_service() {
        let s = filler(7, Shape { ports: 2, clusters: 5, per_cluster: 20 });
        let mut all: Vec<_> = s.exports.iter().flat_map(|e| e.addresses.clone()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 100);
        assert_eq!(s.objects().len(), 6);
    }
}
