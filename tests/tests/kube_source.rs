//! The Kubernetes source end to end, against the fake API server
//! (`mcs_tests::fakeapi`): list, watch, bookmarks, 410 Gone and relist.
//!
//! - Library level: the agent's `KubeSource` follows objects created, changed
//!   and deleted in the API; an object deleted while the watch was down (the
//!   server answers the resumed watch with 410 Gone) is garbage-collected by
//!   the relist; a malformed ServiceImport is reported and skipped without
//!   stopping the stream; the served versions are discovered.
//! - Netns: the real agent, `--source kubernetes`, in a node namespace with the
//!   fake API server on that namespace's 127.0.0.1: connections to the
//!   ClusterSetIP reach the backends, and the maps follow the API (also across
//!   a 410, and across a SIGKILL and restart of the agent).
use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use mcs_agent::k8s::Object as _;
use mcs_agent::{
    source::{Snapshot, kube::KubeSource},
    translate::{self, Config, incremental::Incremental},
};
use mcs_tests::{
    agent::AgentGuard,
    client::{HeldStream, tcp_ask},
    fakeapi::{FakeApi, FakeApiOptions, render_requests},
    manifest::{import, slice},
    netns::{NetNs, unique_prefix},
    topology::Topology,
};
use serde::Serialize;
use serde_json::{Value, json};

const MCS_V1BETA1: &str = "multicluster.x-k8s.io/v1beta1";
const SLICE_API: &str = "discovery.k8s.io/v1";

/// An object of the test kit as the JSON the fake API server serves.
fn json(object: &impl Serialize) -> Value {
    serde_json::to_value(object).expect("a built object serializes")
}

/// A temporary directory (removed on drop, also when a test panics).
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("{tag}-")).tempdir().expect("create a temporary directory")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Waits (at most `limit`) until the source is synced and `ok` holds for its
/// snapshot; returns that snapshot.
///
/// Snapshots are taken the way the agent takes them ([`KubeSource::take`]:
/// kept and brought up to date in place, with the groups that changed), and
/// fed to `tracked` as the agent feeds its translation. Once `ok` holds, the
/// taken snapshot must hold what a snapshot assembled from scratch holds,
/// and the incremental translation what a whole one gives.
async fn wait_for(
    source: &mut KubeSource,
    tracked: &mut Incremental,
    api: &FakeApi,
    limit: Duration,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = Snapshot::default();
    for _ in 0..10_000 {
        if source.synced() {
            let (taken, changes) = source.take();
            tracked.update_with(&taken.inputs, taken.index.as_ref(), &changes);
            last = (*taken).clone();
            if ok(&last) {
                agrees_with_scratch(source, tracked, &last, what).await;
                return last;
            }
        }
        match tokio::time::timeout_at(deadline, source.changed()).await {
            Ok(result) => result.expect("the source is running"),
            Err(_) => break,
        }
    }
    panic!(
        "{what}: not within {limit:?}; synced {}; last snapshot {last:#?}\nrequests:\n{}",
        source.synced(),
        render_requests(&api.requests())
    );
}

/// Every object of a snapshot, each list in order, and its problems.
fn contents(snapshot: &Snapshot) -> [Vec<String>; 5] {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let inputs = &snapshot.inputs;
    [
        sorted(inputs.slices.iter().map(|s| format!("{s:?}")).collect()),
        sorted(inputs.imports.iter().map(|i| format!("{i:?}")).collect()),
        sorted(inputs.gke_imports.iter().map(|i| format!("{i:?}")).collect()),
        sorted(inputs.endpoints.iter().map(|e| format!("{e:?}")).collect()),
        snapshot.problems.iter().map(ToString::to_string).collect(),
    ]
}

/// Checks the taken snapshot and the incremental translation against ones
/// made from scratch; an event that lands in between is taken and checked
/// again (at most 20 times, 50 ms apart).
async fn agrees_with_scratch(source: &KubeSource, tracked: &mut Incremental, taken: &Snapshot, what: &str) {
    let mut taken = taken.clone();
    for _ in 0..20 {
        let scratch = source.snapshot();
        let whole = translate::translate(&scratch.inputs, &Config::default());
        let indexed = taken.index.as_ref().is_some_and(|index| index.matches(&taken.inputs));
        if contents(&taken) == contents(&scratch)
            && indexed
            && (tracked.state(), tracked.report()) == (&whole.0, &whole.1)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (again, changes) = source.take();
        tracked.update_with(&again.inputs, again.index.as_ref(), &changes);
        taken = (*again).clone();
    }
    let scratch = source.snapshot();
    assert_eq!(contents(&taken), contents(&scratch), "{what}: the kept snapshot differs from a fresh one");
    assert!(
        taken.index.as_ref().is_some_and(|index| index.matches(&taken.inputs)),
        "{what}: the kept snapshot's group index does not fit its objects: {:?}",
        taken.index
    );
    let whole = translate::translate(&scratch.inputs, &Config::default());
    assert_eq!((tracked.state(), tracked.report()), (&whole.0, &whole.1), "{what}: incremental translation");
}

fn slice_names(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot.inputs.slices.iter().filter_map(|s| s.metadata.name.clone()).collect()
}

fn backends(snapshot: &Snapshot) -> Vec<String> {
    let (desired, _) = translate::translate(&snapshot.inputs, &Config::default());
    desired
        .services
        .iter()
        .flat_map(|(key, port)| {
            port.backends.iter().map(move |b| format!("{}:{} -> {}/{}:{}", key.ip, key.port, b.cluster, b.ip, b.port))
        })
        .collect()
}

/// Runs `f` on a thread inside a fresh namespace, so the fake API server and
/// the source's connections to it stay off the root namespace's loopback.
fn in_netns(tag: &str, f: impl FnOnce() + Send) {
    let ns = NetNs::new(&unique_prefix(tag));
    ns.enter(f);
}

#[test]
fn kube_source_follows_the_api_through_watch_and_relist() {
    in_netns("kubelib", follows_the_api);
}

#[expect(clippy::too_many_lines, reason = "one story of a source: created, changed, malformed, deleted, relisted")]
fn follows_the_api() {
    let api = FakeApi::start();
    let dir = temp_dir("mcs-kubecfg");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let http = [("http", "TCP", 80)];
    api.apply(json(&import("demo", "web").ip("198.19.0.10").family("IPv4").ports(&http)));
    api.apply(json(&slice("demo", "web", "east").ports(&[("http", "TCP", 8080)]).ready_all(["198.18.1.10"])));
    // Without the MCS label: not selected by the watch at all.
    let mut plain = json(
        &slice("demo", "web", "east").named("web-plain").ports(&[("http", "TCP", 8080)]).ready_all(["198.18.1.99"]),
    );
    plain["metadata"]["labels"] = json!({"kubernetes.io/service-name": "web"});
    api.apply(plain);

    runtime().block_on(async {
        let mut source = KubeSource::start(Some(&kubeconfig)).await.expect("start the source");
        let mut tracked = Incremental::new(Config::default());
        let limit = Duration::from_secs(10);
        let snapshot =
            wait_for(&mut source, &mut tracked, &api, limit, "initial list", |s| s.inputs.imports.len() == 1).await;
        assert_eq!(slice_names(&snapshot), BTreeSet::from(["web-east".to_owned()]), "only MCS-labelled slices");
        assert_eq!(snapshot.inputs.imports[0].api_version, MCS_V1BETA1, "v1beta1 is preferred");
        assert_eq!(backends(&snapshot), ["198.19.0.10:80 -> east/198.18.1.10:8080"]);

        // Created: a second cluster's slice.
        api.apply(json(&slice("demo", "web", "west").ports(&[("http", "TCP", 9080)]).ready_all(["198.18.2.10"])));
        let snapshot =
            wait_for(&mut source, &mut tracked, &api, limit, "west slice added", |s| s.inputs.slices.len() == 2).await;
        assert_eq!(
            backends(&snapshot),
            ["198.19.0.10:80 -> east/198.18.1.10:8080", "198.19.0.10:80 -> west/198.18.2.10:9080"]
        );

        // Changed: the import's ClusterSetIP.
        api.apply(json(&import("demo", "web").ip("198.19.0.20").family("IPv4").ports(&http)));
        let snapshot = wait_for(&mut source, &mut tracked, &api, limit, "ip changed", |s| {
            s.inputs.imports.first().is_some_and(|i| i.spec.ips == ["198.19.0.20"])
        })
        .await;
        assert!(backends(&snapshot).iter().all(|b| b.starts_with("198.19.0.20:80 ")), "{:?}", backends(&snapshot));

        // A malformed import is reported with its field and skipped; the
        // stream keeps going.
        let mut broken = json(&import("demo", "broken").ip("198.19.0.30").family("IPv4").ports(&http));
        broken["spec"]["ports"][0]["port"] = json!("eighty");
        api.apply(broken);
        let snapshot =
            wait_for(&mut source, &mut tracked, &api, limit, "malformed import reported", |s| !s.problems.is_empty())
                .await;
        assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
        let problem = snapshot.problems[0].to_string();
        assert!(problem.contains("demo/broken") && problem.contains("spec.ports[0].port"), "{problem}");
        assert_eq!(snapshot.inputs.imports.len(), 1, "the good import stays");
        api.apply(json(
            &slice("demo", "web", "west")
                .named("web-west-2")
                .ports(&[("http", "TCP", 9080)])
                .ready_all(["198.18.2.11"]),
        ));
        wait_for(&mut source, &mut tracked, &api, limit, "changes after the malformed import", |s| {
            s.inputs.slices.len() == 3
        })
        .await;

        // Deleted, seen by the watch.
        assert!(api.delete(SLICE_API, "EndpointSlice", "demo", "web-west-2"));
        wait_for(&mut source, &mut tracked, &api, limit, "slice deleted", |s| s.inputs.slices.len() == 2).await;

        // Deleted while the watch is down: the resumed watch gets 410 Gone,
        // the relist shows the object gone, and the store drops it.
        let lists_before = api.requests().iter().filter(|r| !r.contains("watch=")).count();
        assert!(api.delete_unseen(SLICE_API, "EndpointSlice", "demo", "web-east"));
        let snapshot =
            wait_for(&mut source, &mut tracked, &api, limit, "slice deleted during the gap collected", |s| {
                !slice_names(s).contains("web-east")
            })
            .await;
        assert_eq!(slice_names(&snapshot), BTreeSet::from(["web-west".to_owned()]));
        assert_eq!(backends(&snapshot), ["198.19.0.20:80 -> west/198.18.2.10:9080"]);
        assert!(api.gone_sent() > 0, "no watch got 410 Gone:\n{}", render_requests(&api.requests()));
        let lists_after = api.requests().iter().filter(|r| !r.contains("watch=")).count();
        assert!(lists_after > lists_before, "no relist after 410:\n{}", render_requests(&api.requests()));

        // Everything keeps flowing after the relist; the import goes.
        assert!(api.delete(MCS_V1BETA1, "ServiceImport", "demo", "web"));
        let snapshot =
            wait_for(&mut source, &mut tracked, &api, limit, "import deleted", |s| s.inputs.imports.is_empty()).await;
        assert!(backends(&snapshot).is_empty());

        // The one-shot snapshot (`mcs-agent plan` without --manifests) sees the same.
        api.apply(json(&import("demo", "web").ip("198.19.0.10").family("IPv4").ports(&http)));
        let once =
            mcs_agent::source::kube::snapshot_with_problems(Some(&kubeconfig)).await.expect("one-shot snapshot").inputs;
        assert_eq!(once.imports.len(), 1, "the malformed import is skipped");
        assert_eq!(once.slices.len(), 1);
    });

    // `mcs-agent plan --kubeconfig` prints what the API holds, and follows it.
    let run_plan = |what: &str| -> (Value, String) {
        let out = std::process::Command::new(mcs_tests::agent_path())
            .args(["plan", "--cluster-id", "local", "-o", "json", "--kubeconfig"])
            .arg(&kubeconfig)
            .output()
            .expect("run mcs-agent plan");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "plan ({what}) failed: {stderr}");
        (serde_json::from_slice(&out.stdout).expect("plan prints JSON"), stderr)
    };
    let (json, stderr) = run_plan("one import");
    let services = json["services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{json}");
    assert_eq!(services[0]["ip"], "198.19.0.10", "{json}");
    assert_eq!(services[0]["port"], 80, "{json}");
    let backends: Vec<String> = services[0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| format!("{}/{}:{}", b["cluster"].as_str().unwrap_or("?"), b["ip"].as_str().unwrap_or("?"), b["port"]))
        .collect();
    assert_eq!(backends, ["west/198.18.2.10:9080"], "{json}");
    assert!(
        stderr.contains("demo/broken") && stderr.contains("spec.ports[0].port"),
        "malformed not reported: {stderr}"
    );
    assert!(api.delete(MCS_V1BETA1, "ServiceImport", "demo", "web"));
    let (json, _) = run_plan("import deleted");
    assert_eq!(json["services"].as_array().map(Vec::len), Some(0), "{json}");
}

#[test]
fn kube_source_discovers_versions_and_gke_imports() {
    in_netns("kubegke", discovers_versions_and_gke_imports);
}

fn discovers_versions_and_gke_imports() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let options = FakeApiOptions { mcs_versions: vec!["v1alpha1".into()], gke: true, ..FakeApiOptions::default() };
    let api = FakeApi::start_with(listener, options);
    let dir = temp_dir("mcs-kubecfg");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let mut old = json(&import("demo", "web").ip("198.19.0.10").family("IPv4").ports(&[("http", "TCP", 80)]));
    old["apiVersion"] = json!("multicluster.x-k8s.io/v1alpha1");
    api.apply(old);
    api.apply(json!({
        "apiVersion": "net.gke.io/v1", "kind": "ServiceImport",
        "metadata": {"namespace": "demo", "name": "gke-web",
                     "annotations": {"net.gke.io/derived-service": "gke-mcs-abc"}},
        "status": {"ips": ["198.19.0.40"], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]},
    }));
    for name in ["gke-mcs-abc", "unrelated"] {
        api.apply(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"namespace": "demo", "name": name},
            "subsets": [{"addresses": [{"ip": "198.18.3.10"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}],
        }));
    }
    runtime().block_on(async {
        let mut source = KubeSource::start(Some(&kubeconfig)).await.expect("start the source");
        let mut tracked = Incremental::new(Config::default());
        let snapshot = wait_for(&mut source, &mut tracked, &api, Duration::from_secs(10), "initial list", |s| {
            s.inputs.imports.len() == 1 && s.inputs.gke_imports.len() == 1 && !s.inputs.endpoints.is_empty()
        })
        .await;
        assert_eq!(snapshot.inputs.imports[0].api_version, "multicluster.x-k8s.io/v1alpha1");
        let endpoints: Vec<_> = snapshot.inputs.endpoints.iter().filter_map(|e| e.metadata.name.clone()).collect();
        assert_eq!(endpoints, ["gke-mcs-abc"], "only the derived service's Endpoints");
        let gke = &snapshot.inputs.gke_imports[0];
        assert_eq!(gke.name(), "gke-web");
        let ips = gke.status.as_ref().map(|s| s.ips.clone()).unwrap_or_default();
        assert_eq!(ips, ["198.19.0.40"], "GKE's status fields are read");
        let vip: Ipv4Addr = "198.19.0.40".parse().expect("ip");
        let (desired, report) = translate::translate(&snapshot.inputs, &Config::default());
        let programmed: Vec<String> = desired
            .services
            .iter()
            .filter(|(key, _)| key.ip == vip)
            .flat_map(|(key, port)| {
                port.backends.iter().map(move |b| format!("{}:{} -> {}:{}", key.ip, key.port, b.ip, b.port))
            })
            .collect();
        assert_eq!(programmed, ["198.19.0.40:80 -> 198.18.3.10:8080"], "{report:?}");

        // The GKE import goes: its derived Endpoints leave the snapshot with
        // it, and slices are then replaced in place again.
        assert!(api.delete("net.gke.io/v1", "ServiceImport", "demo", "gke-web"));
        let limit = Duration::from_secs(10);
        let snapshot =
            wait_for(&mut source, &mut tracked, &api, limit, "GKE import deleted", |s| s.inputs.gke_imports.is_empty())
                .await;
        assert!(snapshot.inputs.endpoints.is_empty(), "{:?}", snapshot.inputs.endpoints);
        api.apply(json(&slice("demo", "web", "east").ports(&[("http", "TCP", 8080)]).ready_all(["198.18.1.10"])));
        wait_for(&mut source, &mut tracked, &api, limit, "slice added after", |s| s.inputs.slices.len() == 1).await;
    });
    let discovery = api.requests();
    assert!(discovery.iter().any(|r| r.contains("/apis/net.gke.io/v1")), "{}", render_requests(&discovery));
    assert!(
        !discovery.iter().any(|r| r.contains("multicluster.x-k8s.io/v1beta1")),
        "an unserved version was asked for:\n{}",
        render_requests(&discovery)
    );
}

// ---------------------------------------------------------------------------
// The real agent in a node namespace.

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const HTTP: u16 = 80;
const TIMEOUT: Duration = Duration::from_millis(500);
const METRICS_PORT: u16 = 19464;

fn build() -> (Topology, String) {
    let prefix = unique_prefix("kubesrc");
    (Topology::demo(&prefix), prefix)
}

fn ask_many(topology: &Topology, vip: Ipv4Addr, n: usize) -> Vec<String> {
    topology.client().enter(|| {
        (0..n)
            .map(|_| {
                tcp_ask(SocketAddrV4::new(vip, HTTP), TIMEOUT).map_or_else(|e| format!("error: {e}"), |(id, _)| id)
            })
            .collect()
    })
}

/// Waits (at most `limit`) until `ok` holds for a batch of answers.
fn wait_answers(
    topology: &Topology,
    agent: &mut AgentGuard,
    vip: Ipv4Addr,
    limit: Duration,
    what: &str,
    ok: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    for _ in 0..200 {
        agent.assert_running();
        last = ask_many(topology, vip, 8);
        if ok(&last) {
            return;
        }
        if Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}; last answers {last:?}");
}

/// Entries of a pinned map, from `bpftool --json map dump`.
fn map_entries(pin: &Path) -> usize {
    // The backends map is an array: count the elements that hold a backend.
    if pin.file_name().is_some_and(|n| n == mcs_common::map_names::BACKENDS) {
        let dir = pin.parent().expect("pin directory");
        let dp = mcs_agent::dataplane::AyaDataplane::from_pins(dir).expect("open the pinned maps");
        return mcs_agent::dataplane::Dataplane::backends(&dp).expect("read the backends").len();
    }
    let out = std::process::Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool dump {}: {}", pin.display(), String::from_utf8_lossy(&out.stderr));
    let dump: Value = serde_json::from_slice(&out.stdout).expect("bpftool prints JSON");
    dump.as_array().expect("a JSON array").len()
}

fn wait_map_entries(agent: &mut AgentGuard, map: &str, limit: Duration, ok: impl Fn(usize) -> bool) -> usize {
    let pin = agent.pin_path.join(map);
    let deadline = Instant::now() + limit;
    let mut last = 0;
    for _ in 0..200 {
        agent.assert_running();
        last = map_entries(&pin);
        if ok(last) || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    last
}

/// GETs `path` from the agent's metrics server inside the node namespace.
fn http_get(topology: &Topology, path: &str) -> String {
    topology.node(0).enter(|| {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to metrics");
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        response
    })
}

fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn agent_follows_the_kubernetes_api() {
    let (topology, prefix) = build();
    // The fake API server listens on the node namespace's own loopback.
    let listener = topology.node(0).enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind in node"));
    let api = FakeApi::start_with(listener, FakeApiOptions::default());
    let dir = temp_dir("mcs-kubecfg");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);

    let ports = [("http", "TCP", HTTP), ("dns", "UDP", 53)];
    api.apply(json(&import("demo", "whoami").ip(VIP).family("IPv4").ports(&ports)));
    let east_ports = [("http", "TCP", 8080), ("dns", "UDP", 5353)];
    let west_ports = [("http", "TCP", 9080), ("dns", "UDP", 5354)];
    api.apply(json(&slice("demo", "whoami", "east").ports(&east_ports).ready_all(["198.18.1.10", "198.18.1.11"])));
    api.apply(json(&slice("demo", "whoami", "west").ports(&west_ports).ready_all(["198.18.2.10", "198.18.2.11"])));

    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    // A short removal grace: the deleted import's backends must be gone within the test's wait.
    let extra = [
        "--min-sync-interval-ms",
        "50",
        "--metrics-addr",
        metrics_addr.as_str(),
        "--backend-removal-grace-seconds",
        "1",
    ];
    let mut agent =
        AgentGuard::start_kube(topology.node(0), &prefix, &kubeconfig, topology.client_iface(), "local", &extra);
    let limit = Duration::from_secs(15);
    wait_answers(&topology, &mut agent, VIP, limit, "both clusters answer", |answers| {
        let clusters: BTreeSet<&str> = answers.iter().filter_map(|a| a.split('/').next()).collect();
        answers.iter().all(|a| !a.starts_with("error")) && clusters.len() == 2
    });
    let ready = http_get(&topology, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let text = http_get(&topology, "/metrics");
    assert_eq!(metric(&text, "mcs_service_ports"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "mcs_backends"), Some(8.0), "{text}");
    assert!(metric(&text, "mcs_datapath_packets_total{kind=\"forward-new\"}").is_some_and(|n| n >= 1.0), "{text}");

    // West's slice is deleted: only east answers.
    assert!(api.delete(SLICE_API, "EndpointSlice", "demo", "whoami-west"));
    wait_answers(&topology, &mut agent, VIP, limit, "west removed", |answers| {
        answers.iter().all(|a| a.starts_with("east/"))
    });

    // A malformed import changes nothing else, and is counted.
    let mut broken = json(&import("demo", "broken").ip("198.19.0.30").family("IPv4").ports(&ports));
    broken["spec"]["ips"] = json!("not a list");
    api.apply(broken);
    let deadline = Instant::now() + limit;
    let mut text = String::new();
    for _ in 0..200 {
        text = http_get(&topology, "/metrics");
        if metric(&text, "mcs_source_problems") == Some(1.0) || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&text, "mcs_source_problems"), Some(1.0), "{text}");
    wait_answers(&topology, &mut agent, VIP, limit, "still east", |answers| {
        answers.iter().all(|a| a.starts_with("east/"))
    });

    // The ClusterSetIP changes: the old VIP goes, the new one answers.
    api.apply(json(&import("demo", "whoami").ip(VIP2).family("IPv4").ports(&ports)));
    wait_answers(&topology, &mut agent, VIP2, limit, "new ClusterSetIP", |answers| {
        answers.iter().all(|a| a.starts_with("east/"))
    });
    let old = ask_many(&topology, VIP, 2);
    assert!(old.iter().all(|a| a.starts_with("error")), "the old ClusterSetIP still answers: {old:?}");

    // SIGKILL in the middle of a connection; the restarted agent adopts the
    // maps, the connection survives, and the agent follows the API again.
    let mut stream = topology
        .client()
        .enter(|| HeldStream::open(SocketAddrV4::new(VIP2, HTTP), TIMEOUT))
        .expect("open a held connection");
    assert!(!agent.stop(libc::SIGKILL), "SIGKILL is not a clean exit");
    let who = stream.ping().expect("the connection works while no agent runs");
    assert_eq!(who, stream.identity());
    api.apply(json(&slice("demo", "whoami", "west").ports(&west_ports).ready_all(["198.18.2.10", "198.18.2.11"])));
    agent.restart();
    wait_answers(&topology, &mut agent, VIP2, limit, "west back after the restart", |answers| {
        answers.iter().any(|a| a.starts_with("west/")) && answers.iter().all(|a| !a.starts_with("error"))
    });
    let who = stream.ping().expect("the connection survives the SIGKILL and restart");
    assert_eq!(who, stream.identity());

    // The import is deleted while the watch is down: the resumed watch gets
    // 410 Gone, the relist misses the import, and its entries leave the maps.
    assert!(wait_map_entries(&mut agent, "MCS_SERVICES", limit, |n| n > 0) > 0, "services programmed");
    assert!(api.delete_unseen(MCS_V1BETA1, "ServiceImport", "demo", "whoami"));
    let left = wait_map_entries(&mut agent, "MCS_SERVICES", limit, |n| n == 0);
    assert_eq!(left, 0, "MCS_SERVICES still holds {left} entries after the import was deleted");
    assert!(api.gone_sent() > 0, "no watch got 410 Gone:\n{}", render_requests(&api.requests()));
    let gone = ask_many(&topology, VIP2, 2);
    assert!(gone.iter().all(|a| a.starts_with("error")), "the deleted import still answers: {gone:?}");
    let backends_left = wait_map_entries(&mut agent, "MCS_BACKENDS", limit, |n| n == 0);
    assert_eq!(backends_left, 0, "backends of the deleted import remain");
    agent.assert_running();
}

/// Waits (at most `limit`) until `ok` holds for the set of link pins.
fn wait_links(agent: &mut AgentGuard, limit: Duration, what: &str, ok: impl Fn(&BTreeSet<String>) -> bool) {
    let deadline = Instant::now() + limit;
    let mut last = BTreeSet::new();
    for _ in 0..400 {
        agent.assert_running();
        last = std::fs::read_dir(agent.pin_path.join("links"))
            .map(|dir| dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if ok(&last) {
            return;
        }
        if Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("{what}: not within {limit:?}; link pins {last:?}");
}

#[test]
fn agent_attaches_interfaces_as_they_come_and_go() {
    let prefix = unique_prefix("ifaces");
    let node = NetNs::new(&format!("{prefix}-node"));
    let listener = node.enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind in node"));
    let api = FakeApi::start_with(listener, FakeApiOptions::default());
    let dir = temp_dir("mcs-kubecfg");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    node.ip(&["link", "add", "lxc0", "type", "veth", "peer", "name", "other0"]);

    let mut agent =
        AgentGuard::start_kube(&node, &prefix, &kubeconfig, "lxc*,pod[0-9]", "local", &["--metrics-addr", ""]);
    let limit = Duration::from_secs(10);
    wait_links(&mut agent, limit, "lxc0 attached at start", |pins| {
        pins.contains("lxc0_ingress") && pins.contains("lxc0_egress")
    });

    // Interfaces that appear later are attached (netlink events; the periodic
    // rescan is 5 s, so a limit below it shows the events work).
    node.ip(&["link", "add", "lxc1", "type", "veth", "peer", "name", "pod7"]);
    node.ip(&["link", "add", "podx", "type", "veth", "peer", "name", "other1"]);
    let events = Duration::from_secs(3);
    wait_links(&mut agent, events, "lxc1 and pod7 attached", |pins| {
        ["lxc0_ingress", "lxc1_ingress", "lxc1_egress", "pod7_ingress", "pod7_egress"].iter().all(|p| pins.contains(*p))
    });
    let all: BTreeSet<String> = std::fs::read_dir(agent.pin_path.join("links"))
        .expect("links dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(all.iter().all(|p| !p.starts_with("podx") && !p.starts_with("other")), "non-matching attached: {all:?}");

    // A deleted interface is forgotten: its pins go.
    node.ip(&["link", "del", "lxc1"]);
    wait_links(&mut agent, events, "lxc1 and its peer pod7 forgotten", |pins| {
        !pins.iter().any(|p| p.starts_with("lxc1_") || p.starts_with("pod7_")) && pins.contains("lxc0_ingress")
    });

    // Pins of an interface deleted while no agent runs are removed at start.
    assert!(agent.stop(libc::SIGTERM), "clean exit on SIGTERM");
    node.ip(&["link", "del", "lxc0"]);
    agent.restart();
    wait_links(&mut agent, limit, "stale lxc0 pins removed at start", BTreeSet::is_empty);
    agent.assert_running();
}
