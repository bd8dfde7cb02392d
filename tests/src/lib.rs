//! Test support for the MCS eBPF dataplane: a fake multi-cluster network built from network
//! namespaces ([`topology`]), namespace guards ([`netns`]), socket clients ([`client`]), streams
//! whose both ends the test holds ([`pair`]), ordinary programs as clients and servers (`nginx`,
//! `ab`, `iperf3`: [`apps`]), a tc program of the tests' own ([`probe`]) and the `mcs-testsrv`
//! identity server binary (`src/bin/mcs-testsrv.rs`).
//!
//! Everything needs root. All addresses are from 198.18.0.0/15 and live only inside namespaces
//! created here; nothing is routed in the root namespace.
#![warn(missing_docs, unreachable_pub)]

pub mod agent;
pub mod apps;
pub mod cgroup;
pub mod client;
pub mod datapath;
pub mod fakeapi;
pub mod fuzz;
pub mod manifest;
pub mod netns;
pub mod packet;
pub mod pair;
pub mod probe;
pub mod topology;
pub mod xdp;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File name of the identity server binary.
pub const TESTSRV_NAME: &str = "mcs-testsrv";

/// File name of the agent binary.
pub const AGENT_NAME: &str = "mcs-agent";

/// Locates the `mcs-testsrv` binary (see [`workspace_binary`]; override: `$MCS_TESTSRV`).
///
/// # Panics
/// If it is found nowhere.
#[must_use]
pub fn testsrv_path() -> PathBuf {
    workspace_binary(TESTSRV_NAME, "MCS_TESTSRV")
}

/// Locates the `mcs-agent` binary (see [`workspace_binary`]; override: `$MCS_AGENT`).
///
/// # Panics
/// If it is found nowhere.
#[must_use]
pub fn agent_path() -> PathBuf {
    workspace_binary(AGENT_NAME, "MCS_AGENT")
}

/// Finds a binary of the workspace next to the current executable, or one
/// directory up (integration tests run from `target/<profile>/deps/`), else
/// at the path in `env_var`.
///
/// # Panics
/// If it is found nowhere: build it with `cargo build --bins`.
#[must_use]
pub fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    if let Some(found) =
        exe.iter().flat_map(|e| e.ancestors().skip(1).take(2)).map(|dir| dir.join(name)).find(|p| p.is_file())
    {
        return found;
    }
    if let Some(p) = std::env::var_os(env_var).map(PathBuf::from) {
        assert!(p.is_file(), "{env_var}={} is not a file", p.display());
        return p;
    }
    panic!("{name} not found next to {exe:?} (build it with `cargo build --bins`) and {env_var} is unset");
}

/// Polls `check` until it returns `Ok`, at most every `pause` and for at most `limit` (and at
/// most 10,000 times); returns that value.
///
/// # Panics
/// When the limit passes first; the message has `what` and the last error `check` returned.
pub fn wait_until<T>(limit: Duration, pause: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    let mut last = String::from("never checked");
    for _ in 0..10_000 {
        match check() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(pause);
    }
    panic!("{what}: not within {limit:?}; last: {last}");
}

/// Runs `mcs-agent inspect --pin-path <pin_path> -o json` (plus `extra` arguments, e.g.
/// `--conntrack`) and parses its output.
///
/// # Panics
/// If the command fails or prints something that is not JSON.
#[must_use]
pub fn inspect_json(pin_path: &Path, extra: &[&str]) -> serde_json::Value {
    try_inspect_json(pin_path, extra).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`inspect_json`], returning what went wrong instead of panicking (an agent that has not
/// pinned its maps yet, say).
///
/// # Errors
/// When the command fails or prints something that is not JSON.
///
/// # Panics
/// When `mcs-agent` cannot be started at all.
pub fn try_inspect_json(pin_path: &Path, extra: &[&str]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new(agent_path())
        .arg("inspect")
        .arg("--pin-path")
        .arg(pin_path)
        .args(["-o", "json"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mcs-agent inspect");
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "mcs-agent inspect --pin-path {} failed ({}): {}",
            pin_path.display(),
            out.status,
            said.split("\n\nStack backtrace").next().unwrap_or_default()
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("mcs-agent inspect: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// One backend of a service port as `mcs-agent inspect -o json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InspectedBackend {
    /// Its cluster.
    pub cluster: String,
    /// Its address.
    pub ip: String,
    /// Its (target) port.
    pub port: u64,
    /// `ready` or `terminating`.
    pub state: String,
    /// Its slots in the Maglev table (0: takes no new connection).
    pub slots: u64,
}

/// The backends `mcs-agent inspect -o json` (`state`) lists for the service port
/// `ip:port/protocol`, or `None` when that service port is not in the maps.
#[must_use]
pub fn inspected_backends(
    state: &serde_json::Value,
    ip: std::net::Ipv4Addr,
    port: u16,
    protocol: &str,
) -> Option<Vec<InspectedBackend>> {
    let ip = ip.to_string();
    let service = state["services"].as_array()?.iter().find(|s| {
        s["ip"].as_str() == Some(ip.as_str())
            && s["port"].as_u64() == Some(u64::from(port))
            && s["protocol"] == protocol
    })?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut backends: Vec<InspectedBackend> = service["backends"]
        .as_array()?
        .iter()
        .map(|b| InspectedBackend {
            cluster: text(&b["cluster"]),
            ip: text(&b["ip"]),
            port: b["port"].as_u64().unwrap_or_default(),
            state: text(&b["state"]),
            slots: b["slots"].as_u64().unwrap_or_default(),
        })
        .collect();
    backends.sort();
    Some(backends)
}

/// Polls `mcs-agent inspect -o json` of the agent pinned at `pin_path` (every 50 ms, for at
/// most 15 s) until `check` accepts what the maps hold: a deterministic way to know a change
/// of the manifests has been synced. An `inspect` that fails (maps not pinned yet) counts as
/// not yet.
///
/// # Panics
/// When it does not happen in time (the message has `what` and the last complaint).
pub fn wait_inspect<T>(
    pin_path: &Path,
    what: &str,
    mut check: impl FnMut(&serde_json::Value) -> Result<T, String>,
) -> T {
    wait_until(Duration::from_secs(15), Duration::from_millis(50), what, || check(&try_inspect_json(pin_path, &[])?))
}

/// [`wait_inspect`] until the set of clusters with slots in the table of `ip:port/protocol` is
/// exactly `clusters`.
///
/// # Panics
/// As [`wait_inspect`].
pub fn wait_table_clusters(pin_path: &Path, ip: std::net::Ipv4Addr, port: u16, protocol: &str, clusters: &[&str]) {
    let want: std::collections::BTreeSet<&str> = clusters.iter().copied().collect();
    wait_inspect(pin_path, &format!("{ip}:{port}/{protocol} table holds clusters {want:?}"), |state| {
        let backends = inspected_backends(state, ip, port, protocol).ok_or("service port not in the maps")?;
        let got: std::collections::BTreeSet<&str> =
            backends.iter().filter(|b| b.slots > 0).map(|b| b.cluster.as_str()).collect();
        if got == want { Ok(()) } else { Err(format!("{backends:?}")) }
    });
}
