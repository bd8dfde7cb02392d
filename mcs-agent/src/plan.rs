//! `mcs-agent plan`: the dataplane the agent would program, without touching
//! the kernel.
//!
//! The JSON document ([`Plan`]) is a stable contract, documented in
//! `docs/plan.md`: `services`, `skipped`, `excludedClusters` and `warnings`.
//! [`render_json`] and [`render_table`] turn it into text.
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::manifests;
use crate::output::OutputFormat;
use crate::translate::{self, Config, DesiredBackend, DesiredState, EndpointState, Inputs, Report};

/// Where `plan` reads the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanSource {
    /// A directory of manifests.
    Manifests(PathBuf),
    /// A list of the Kubernetes API: `kubeconfig`, or the usual inference.
    Kubernetes {
        /// The kubeconfig file.
        kubeconfig: Option<PathBuf>,
    },
}

/// The configuration of `mcs-agent plan`.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    /// Where the objects come from.
    pub source: PlanSource,
    /// The translation's settings.
    pub translate: Config,
    /// How the plan is printed.
    pub output: OutputFormat,
}

/// The plan: what the agent would program, and what it would not. Every list
/// is sorted; see `docs/plan.md`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plan {
    /// One entry per service port (`ClusterSetIP`, port, protocol), sorted by
    /// (namespace, name, ip, port, protocol).
    pub services: Vec<PlanService>,
    /// Imports that are not programmed, sorted by (namespace, name).
    pub skipped: Vec<PlanSkipped>,
    /// Present exporting clusters whose endpoints are not used, sorted by
    /// (namespace, name, cluster).
    pub excluded_clusters: Vec<PlanExcludedCluster>,
    /// Load errors (manifests in file order, or malformed API objects), then
    /// the translation's warnings (sorted). Each names the object and the field.
    pub warnings: Vec<String>,
}

/// One service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanService {
    /// The import's namespace.
    pub namespace: String,
    /// The import's name.
    pub name: String,
    /// The `ClusterSetIP`.
    pub ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The port's name in the import, `""` when unnamed.
    pub port_name: String,
    /// `null` when affinity is off.
    pub session_affinity: Option<PlanSessionAffinity>,
    /// The endpoints new connections may use, sorted by (cluster, ip, port).
    /// Empty: new connections fail fast.
    pub backends: Vec<PlanBackend>,
    /// Terminating endpoints that keep their established connections but get
    /// no new ones, sorted by (cluster, ip, port).
    pub draining: Vec<PlanBackend>,
}

/// `ClientIP` session affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSessionAffinity {
    /// Always `true`: the only kind of affinity.
    #[serde(rename = "clientIP")]
    pub client_ip: bool,
    /// Seconds after a client's last connection that its backend is kept.
    pub timeout_seconds: u32,
}

/// An endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanBackend {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The target port in its cluster.
    pub port: u16,
    /// The exporting cluster's id; `""` for GKE imports.
    pub cluster: String,
    /// `ready`, or `terminating` (in `backends` only when the fallback
    /// applies; always in `draining`).
    pub state: String,
}

/// An import that is not programmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSkipped {
    /// The import's namespace.
    pub namespace: String,
    /// The import's name.
    pub name: String,
    /// `headless`, `no-ips` or `invalid`.
    pub reason: String,
    /// Details, naming the field.
    pub message: String,
}

/// A present exporting cluster whose endpoints are not used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanExcludedCluster {
    /// The import's namespace.
    pub namespace: String,
    /// The import's name.
    pub name: String,
    /// The cluster id.
    pub cluster: String,
    /// `exporter-cap`.
    pub reason: String,
}

const fn state_name(state: EndpointState) -> &'static str {
    match state {
        EndpointState::Ready => "ready",
        EndpointState::Terminating => "terminating",
    }
}

/// The translation already sorts backends by (cluster, ip, port), the plan's order.
fn plan_backends(backends: &[DesiredBackend]) -> Vec<PlanBackend> {
    debug_assert!(backends.is_sorted(), "the translation sorts backends by (cluster, ip, port)");
    backends
        .iter()
        .map(|b| PlanBackend {
            ip: b.ip,
            port: b.port,
            cluster: b.cluster.to_string(),
            state: state_name(b.state).into(),
        })
        .collect()
}

impl Plan {
    /// The plan of a translation's result; `load_errors` (already rendered)
    /// come first in `warnings`.
    #[must_use]
    pub fn new(state: &DesiredState, report: &Report, load_errors: &[String]) -> Self {
        let mut services: Vec<PlanService> = state
            .services
            .iter()
            .map(|(key, entry)| PlanService {
                namespace: entry.namespace.clone(),
                name: entry.name.clone(),
                ip: key.ip,
                port: key.port,
                protocol: key.protocol.as_str().into(),
                port_name: entry.port_name.clone(),
                session_affinity: entry
                    .session_affinity_timeout
                    .map(|timeout_seconds| PlanSessionAffinity { client_ip: true, timeout_seconds }),
                backends: plan_backends(&entry.backends),
                draining: plan_backends(&entry.draining),
            })
            .collect();
        services.sort_by(|a, b| {
            (&a.namespace, &a.name, a.ip, a.port, &a.protocol).cmp(&(&b.namespace, &b.name, b.ip, b.port, &b.protocol))
        });
        let mut skipped: Vec<PlanSkipped> = report
            .skipped
            .iter()
            .map(|s| PlanSkipped {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                reason: s.reason.as_str().into(),
                message: s.message.clone(),
            })
            .collect();
        skipped.sort_by(|a, b| (&a.namespace, &a.name, &a.message).cmp(&(&b.namespace, &b.name, &b.message)));
        // The translation sorts them by (namespace, name, cluster), the plan's order.
        debug_assert!(report.excluded_clusters.is_sorted(), "the translation sorts excluded clusters");
        let excluded_clusters: Vec<PlanExcludedCluster> = report
            .excluded_clusters
            .iter()
            .map(|e| PlanExcludedCluster {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                cluster: e.cluster.clone(),
                reason: e.reason.as_str().into(),
            })
            .collect();
        let warnings = load_errors.iter().cloned().chain(report.warnings.iter().cloned()).collect();
        Self { services, skipped, excluded_clusters, warnings }
    }

    /// Translates `inputs` and makes the plan of the result.
    #[must_use]
    pub fn of_inputs(inputs: &Inputs, config: &Config, load_errors: &[String]) -> Self {
        let (state, report) = translate::translate(inputs, config);
        Self::new(&state, &report, load_errors)
    }
}

/// The plan as pretty-printed JSON, with a final newline.
///
/// # Panics
/// Never: the document holds only strings, numbers, booleans and lists.
#[must_use]
pub fn render_json(plan: &Plan) -> String {
    let mut text = serde_json::to_string_pretty(plan).expect("a plan always serializes");
    text.push('\n');
    text
}

/// Lays out rows in columns two spaces apart, without trailing spaces.
fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or_default();
    let widths: Vec<usize> = (0..width)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or_default())
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cell(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

/// The plan as tables for people: services (one line per endpoint, backends
/// then draining ones; a port without backends shows `(none)` and state
/// `fail-fast`), then skipped imports, excluded clusters and warnings when
/// there are any. Columns are two spaces apart; an empty cluster or port name
/// shows as `-`.
#[must_use]
pub fn render_table(plan: &Plan) -> String {
    let mut rows =
        vec![["SERVICE", "PORT", "ENTRY", "AFFINITY", "BACKEND", "CLUSTER", "STATE"].map(String::from).to_vec()];
    for service in &plan.services {
        let affinity =
            service.session_affinity.map_or_else(|| "-".to_owned(), |a| format!("ClientIP {}s", a.timeout_seconds));
        let mut first = vec![
            format!("{}/{}", service.namespace, service.name),
            cell(&service.port_name),
            format!("{}:{}/{}", service.ip, service.port, service.protocol),
            affinity,
        ];
        let endpoints: Vec<(&PlanBackend, &str)> = service
            .backends
            .iter()
            .map(|b| (b, b.state.as_str()))
            .chain(service.draining.iter().map(|b| (b, "draining")))
            .collect();
        if endpoints.is_empty() {
            first.extend(["(none)", "-", "fail-fast"].map(String::from));
            rows.push(first);
            continue;
        }
        for (i, (backend, state)) in endpoints.into_iter().enumerate() {
            let mut row = if i == 0 { first.clone() } else { vec![String::new(); 4] };
            row.extend([format!("{}:{}", backend.ip, backend.port), cell(&backend.cluster), state.to_owned()]);
            rows.push(row);
        }
    }
    let mut out = columns(&rows);
    if !plan.skipped.is_empty() {
        let mut rows = vec![["SKIPPED", "REASON", "MESSAGE"].map(String::from).to_vec()];
        rows.extend(
            plan.skipped
                .iter()
                .map(|s| vec![format!("{}/{}", s.namespace, s.name), s.reason.clone(), s.message.clone()]),
        );
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    if !plan.excluded_clusters.is_empty() {
        let mut rows = vec![["EXCLUDED", "CLUSTER", "REASON"].map(String::from).to_vec()];
        rows.extend(
            plan.excluded_clusters
                .iter()
                .map(|e| vec![format!("{}/{}", e.namespace, e.name), e.cluster.clone(), e.reason.clone()]),
        );
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    if !plan.warnings.is_empty() {
        out.push_str("\nWARNINGS\n");
        for warning in &plan.warnings {
            let _ = writeln!(out, "- {warning}");
        }
    }
    out
}

/// Reads the inputs: the manifests in `--manifests`, or a snapshot of the
/// Kubernetes API. Returns them with the load errors (manifests that do not
/// parse, objects the API returned malformed), rendered.
fn read_inputs(source: &PlanSource) -> Result<(Inputs, Vec<String>)> {
    let kubeconfig = match source {
        PlanSource::Manifests(dir) => {
            let (inputs, errors) = manifests::load_dir(dir)?;
            return Ok((inputs, errors.iter().map(ToString::to_string).collect()));
        }
        PlanSource::Kubernetes { kubeconfig } => kubeconfig.as_deref(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime for the Kubernetes client")?;
    let snapshot = runtime
        .block_on(crate::source::kube::snapshot_with_problems(kubeconfig))
        .context("listing ServiceImports, EndpointSlices and Endpoints from the Kubernetes API")?;
    Ok((snapshot.inputs, snapshot.problems.iter().map(ToString::to_string).collect()))
}

/// Runs `mcs-agent plan`: prints the plan on stdout, and each load error
/// (a malformed manifest or API object) on stderr as well. Succeeds whenever a plan was printed, even with
/// skipped imports or load errors.
///
/// # Errors
/// When the manifest directory cannot be listed, or the API cannot be read.
pub fn execute(config: &PlanConfig) -> Result<()> {
    let (inputs, load_errors) = read_inputs(&config.source)?;
    for error in &load_errors {
        eprintln!("mcs-agent plan: {error}");
    }
    let plan = Plan::of_inputs(&inputs, &config.translate, &load_errors);
    let text = match config.output {
        OutputFormat::Json => render_json(&plan),
        OutputFormat::Table => render_table(&plan),
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{
        DesiredServicePort, ExcludedCluster, ExclusionReason, Protocol, ServicePortKey, SkipReason, Skipped,
    };

    fn backend(cluster: &str, ip: &str, port: u16, state: EndpointState) -> DesiredBackend {
        DesiredBackend { cluster: cluster.into(), ip: ip.parse().expect("test ip"), port, state }
    }

    fn sample() -> Plan {
        let mut state = DesiredState::default();
        let key = |ip: &str, port, protocol| ServicePortKey { ip: ip.parse().expect("test vip"), port, protocol };
        let entry = |ns: &str, name: &str, port_name: &str| DesiredServicePort {
            namespace: ns.into(),
            name: name.into(),
            port_name: port_name.into(),
            session_affinity_timeout: None,
            backends: Vec::new(),
            draining: Vec::new(),
        };
        state.services.insert(
            key("198.19.0.1", 80, Protocol::Tcp),
            DesiredServicePort {
                session_affinity_timeout: Some(10),
                // In the translation's order: (cluster, ip, port).
                backends: vec![
                    backend("", "198.18.0.9", 80, EndpointState::Ready),
                    backend("c1", "198.18.0.2", 8080, EndpointState::Ready),
                ],
                draining: vec![backend("c1", "198.18.0.3", 8080, EndpointState::Terminating)],
                ..entry("ns", "svc", "http")
            },
        );
        // Sorts before ns/svc by name although its ip is greater.
        state.services.insert(key("198.19.0.2", 53, Protocol::Udp), entry("ns", "dns", ""));
        state.services.insert(key("198.19.0.2", 53, Protocol::Tcp), entry("ns", "dns", ""));
        let report = Report {
            skipped: vec![Skipped {
                namespace: "ns".into(),
                name: "h".into(),
                reason: SkipReason::Headless,
                message: "headless imports have no ClusterSetIP to program".into(),
            }],
            excluded_clusters: vec![ExcludedCluster {
                namespace: "ns".into(),
                name: "svc".into(),
                cluster: "c6".into(),
                reason: ExclusionReason::ExporterCap,
            }],
            warnings: vec!["EndpointSlice ns/x endpoints[0].addresses: empty".into()],
        };
        Plan::new(&state, &report, &["m.yaml document 2: apiVersion: missing".into()])
    }

    #[test]
    fn json_keeps_the_documented_names_and_order() {
        let json: serde_json::Value = serde_json::from_str(&render_json(&sample())).expect("valid JSON");
        let expected = serde_json::json!({
            "services": [
                {"namespace": "ns", "name": "dns", "ip": "198.19.0.2", "port": 53, "protocol": "TCP",
                 "portName": "", "sessionAffinity": null, "backends": [], "draining": []},
                {"namespace": "ns", "name": "dns", "ip": "198.19.0.2", "port": 53, "protocol": "UDP",
                 "portName": "", "sessionAffinity": null, "backends": [], "draining": []},
                {"namespace": "ns", "name": "svc", "ip": "198.19.0.1", "port": 80, "protocol": "TCP",
                 "portName": "http", "sessionAffinity": {"clientIP": true, "timeoutSeconds": 10},
                 "backends": [
                     {"ip": "198.18.0.9", "port": 80, "cluster": "", "state": "ready"},
                     {"ip": "198.18.0.2", "port": 8080, "cluster": "c1", "state": "ready"}
                 ],
                 "draining": [{"ip": "198.18.0.3", "port": 8080, "cluster": "c1", "state": "terminating"}]}
            ],
            "skipped": [{"namespace": "ns", "name": "h", "reason": "headless",
                         "message": "headless imports have no ClusterSetIP to program"}],
            "excludedClusters": [{"namespace": "ns", "name": "svc", "cluster": "c6", "reason": "exporter-cap"}],
            "warnings": ["m.yaml document 2: apiVersion: missing", "EndpointSlice ns/x endpoints[0].addresses: empty"]
        });
        assert_eq!(json, expected);
        let back: Plan = serde_json::from_value(json).expect("the document reads back");
        assert_eq!(back, sample());
    }

    #[test]
    fn table_lists_every_endpoint_and_section() {
        let expected = "\
SERVICE  PORT  ENTRY              AFFINITY      BACKEND          CLUSTER  STATE
ns/dns   -     198.19.0.2:53/TCP  -             (none)           -        fail-fast
ns/dns   -     198.19.0.2:53/UDP  -             (none)           -        fail-fast
ns/svc   http  198.19.0.1:80/TCP  ClientIP 10s  198.18.0.9:80    -        ready
                                                198.18.0.2:8080  c1       ready
                                                198.18.0.3:8080  c1       draining

SKIPPED  REASON    MESSAGE
ns/h     headless  headless imports have no ClusterSetIP to program

EXCLUDED  CLUSTER  REASON
ns/svc    c6       exporter-cap

WARNINGS
- m.yaml document 2: apiVersion: missing
- EndpointSlice ns/x endpoints[0].addresses: empty
";
        assert_eq!(render_table(&sample()), expected);
        let empty = render_table(&Plan::default());
        assert_eq!(empty, "SERVICE  PORT  ENTRY  AFFINITY  BACKEND  CLUSTER  STATE\n");
    }
}
