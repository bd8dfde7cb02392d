//! Running `mcs-agent` inside a node namespace for integration tests.
//!
//! The agent is started with only its network namespace switched (`nsenter
//! --net`), so its pins land in the shared bpffs. The guard owns the manifest
//! directory (a copy the test may edit) and the pin directory, and removes
//! both, after stopping the agent, on drop.
//!
//! The agent reads either the manifest directory (`--source file`, the
//! default) or a Kubernetes API server ([`AgentGuard::start_kube`]), and tests
//! may pass extra arguments ([`AgentGuard::start_with_args`]). A restart uses
//! the same arguments; [`AgentGuard::stop`] takes any signal, SIGKILL included.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{agent_path, netns::NetNs};

/// A running agent and the state it owns.
pub struct AgentGuard {
    child: Option<Child>,
    /// The manifest directory the agent watches.
    pub manifests: PathBuf,
    /// The agent's pin directory.
    pub pin_path: PathBuf,
    node_path: PathBuf,
    interfaces: String,
    cluster_id: String,
    /// `--source ...` and what goes with it.
    source_args: Vec<OsString>,
    /// Extra arguments from the test.
    extra: Vec<String>,
}

impl AgentGuard {
    /// Copies every file of `examples` into a fresh manifest directory and
    /// starts the agent in `node`, attached to `interfaces` (comma separated),
    /// pinning under `/sys/fs/bpf/mcs-test-<prefix>`.
    ///
    /// # Panics
    /// When the directory cannot be prepared or the agent cannot start.
    #[must_use]
    pub fn start(node: &NetNs, prefix: &str, examples: &Path, interfaces: &str, cluster_id: &str) -> Self {
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/mcs-test-{prefix}"));
        Self::start_pinned(node, prefix, examples, interfaces, cluster_id, pin_path)
    }

    /// As [`AgentGuard::start`], pinning under `pin_path`.
    ///
    /// # Panics
    /// When the directory cannot be prepared or the agent cannot start.
    #[must_use]
    pub fn start_pinned(
        node: &NetNs,
        prefix: &str,
        examples: &Path,
        interfaces: &str,
        cluster_id: &str,
        pin_path: PathBuf,
    ) -> Self {
        Self::launch(node, prefix, Some(examples), None, interfaces, cluster_id, pin_path, &[])
    }

    /// As [`AgentGuard::start`], with `extra` arguments appended to `mcs-agent
    /// run` (for example `["--max-exporting-clusters", "5"]`). Arguments the
    /// guard sets itself (`--source`, `--manifests`, `--interfaces`,
    /// `--cluster-id`, `--pin-path`, `--poll-interval-ms`) must not be repeated.
    ///
    /// # Panics
    /// When the directory cannot be prepared or the agent cannot start.
    #[must_use]
    pub fn start_with_args(
        node: &NetNs,
        prefix: &str,
        examples: &Path,
        interfaces: &str,
        cluster_id: &str,
        extra: &[&str],
    ) -> Self {
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/mcs-test-{prefix}"));
        Self::launch(node, prefix, Some(examples), None, interfaces, cluster_id, pin_path, extra)
    }

    /// Starts the agent in `node` with `--source kubernetes --kubeconfig
    /// <kubeconfig>` and `extra` arguments, pinning under
    /// `/sys/fs/bpf/mcs-test-<prefix>`. The manifest directory stays empty.
    ///
    /// # Panics
    /// When the agent cannot start.
    #[must_use]
    pub fn start_kube(
        node: &NetNs,
        prefix: &str,
        kubeconfig: &Path,
        interfaces: &str,
        cluster_id: &str,
        extra: &[&str],
    ) -> Self {
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/mcs-test-{prefix}"));
        Self::launch(node, prefix, None, Some(kubeconfig), interfaces, cluster_id, pin_path, extra)
    }

    /// A typed builder for an agent in `node`, pinning under `/sys/fs/bpf/mcs-test-<prefix>`:
    /// by default it reads an empty manifest directory (`--source file`), attaches to nothing,
    /// has cluster id `local` and no extra arguments.
    #[must_use]
    pub fn builder<'a>(node: &'a NetNs, prefix: &str) -> AgentBuilder<'a> {
        AgentBuilder {
            node,
            prefix: prefix.to_owned(),
            manifests: None,
            interfaces: Vec::new(),
            cluster_id: "local".to_owned(),
            extra: Vec::new(),
        }
    }

    #[expect(clippy::too_many_arguments, reason = "private constructor behind the public ones")]
    fn launch(
        node: &NetNs,
        prefix: &str,
        examples: Option<&Path>,
        kubeconfig: Option<&Path>,
        interfaces: &str,
        cluster_id: &str,
        pin_path: PathBuf,
        extra: &[&str],
    ) -> Self {
        let manifests = std::env::temp_dir().join(format!("{prefix}-manifests"));
        fs::create_dir_all(&manifests).expect("create manifest dir");
        if let Some(examples) = examples {
            for entry in fs::read_dir(examples).unwrap_or_else(|e| panic!("read {}: {e}", examples.display())) {
                let path = entry.expect("dir entry").path();
                fs::copy(&path, manifests.join(path.file_name().expect("file name"))).expect("copy manifest");
            }
        }
        let source_args: Vec<OsString> = match kubeconfig {
            Some(kubeconfig) => vec!["--source".into(), "kubernetes".into(), "--kubeconfig".into(), kubeconfig.into()],
            None => vec!["--source".into(), "file".into(), "--manifests".into(), manifests.clone().into()],
        };
        let mut guard = Self {
            child: None,
            manifests,
            pin_path,
            node_path: node.path(),
            interfaces: interfaces.to_owned(),
            cluster_id: cluster_id.to_owned(),
            source_args,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        guard.spawn();
        guard
    }

    fn spawn(&mut self) {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node_path.display()))
            .arg("--")
            .arg(agent_path())
            .arg("run")
            .args(&self.source_args)
            // A pure gateway node (`--xdp-interfaces` only) has no `--interfaces`.
            .args(if self.interfaces.is_empty() { None } else { Some("--interfaces") })
            .args(if self.interfaces.is_empty() { None } else { Some(&self.interfaces) })
            .args(["--cluster-id", &self.cluster_id, "--pin-path"])
            .arg(&self.pin_path)
            .args(["--poll-interval-ms", "50"])
            // The socket programs attach only where a test asks (a child
            // cgroup it made), never to this machine's cgroup root.
            .args(socket_lb_off(&self.extra))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("start mcs-agent"));
    }

    /// Pings every stream every 100 ms for `span` (at most 1000 rounds), checking each time
    /// that the agent still runs.
    ///
    /// # Panics
    /// When the agent exited, or a stream fails or changes backend ([`crate::client::ping_all`]).
    pub fn keep_pinging(&mut self, streams: &mut [crate::client::HeldStream], span: Duration, when: &str) {
        let end = Instant::now() + span;
        for _ in 0..1000 {
            self.assert_running();
            crate::client::ping_all(streams, when);
            if Instant::now() >= end {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` and waits (at most 5 s) for the agent to exit; returns
    /// whether it exited successfully (never after SIGKILL, which the agent
    /// cannot handle: use it to test recovery from a crash).
    ///
    /// # Panics
    /// When the agent is not running or does not exit in time.
    pub fn stop(&mut self, signal: libc::c_int) -> bool {
        let mut child = self.child.take().expect("agent running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..500 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mcs-agent did not exit within 5 s of signal {signal}");
    }

    /// Starts the agent again with the same arguments.
    ///
    /// # Panics
    /// When one is still running or it cannot start.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent before restarting it");
        self.spawn();
    }

    /// Starts the agent again with `extra` instead of the extra arguments it had.
    ///
    /// # Panics
    /// When one is still running or it cannot start.
    pub fn restart_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "stop the agent before restarting it");
        self.extra = extra.iter().map(|a| (*a).to_owned()).collect();
        self.spawn();
    }

    /// The agent's process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Panics when the agent has exited.
    ///
    /// # Panics
    /// See above.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("agent started");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("mcs-agent exited: {status}");
        }
    }

    /// Waits (at most 15 s) until the Maglev table of `service`/`protocol`, as `mcs-agent
    /// inspect` reads it from this agent's pins, has slots for exactly the `clusters` given,
    /// checking on every round that the agent still runs (an agent that refused its arguments
    /// fails here, with its exit status, rather than as a timeout).
    ///
    /// # Panics
    /// When the agent exited or the table is not so in time.
    pub fn wait_table(&mut self, service: std::net::SocketAddrV4, protocol: &str, clusters: &[&str]) {
        let want: std::collections::BTreeSet<&str> = clusters.iter().copied().collect();
        let what = format!("{service}/{protocol} table holds clusters {want:?}");
        crate::wait_until(Duration::from_secs(15), Duration::from_millis(50), &what, || {
            self.assert_running();
            let state = crate::try_inspect_json(&self.pin_path, &[])?;
            let backends = crate::inspected_backends(&state, *service.ip(), service.port(), protocol)
                .ok_or("service port not in the maps")?;
            let got: std::collections::BTreeSet<&str> =
                backends.iter().filter(|b| b.slots > 0).map(|b| b.cluster.as_str()).collect();
            if got == want { Ok(()) } else { Err(format!("{backends:?}")) }
        });
    }

    /// Removes a manifest file from the watched directory.
    ///
    /// # Panics
    /// When the file cannot be removed.
    pub fn remove_manifest(&self, name: &str) {
        fs::remove_file(self.manifests.join(name)).unwrap_or_else(|e| panic!("remove {name}: {e}"));
    }
}

/// What [`AgentGuard::builder`] starts.
#[derive(Debug)]
pub struct AgentBuilder<'a> {
    node: &'a NetNs,
    prefix: String,
    manifests: Option<&'a Path>,
    interfaces: Vec<String>,
    cluster_id: String,
    extra: Vec<String>,
}

impl<'a> AgentBuilder<'a> {
    /// Copies every file of `dir` into the agent's own manifest directory first.
    #[must_use]
    pub fn manifests(mut self, dir: &'a Path) -> Self {
        self.manifests = Some(dir);
        self
    }

    /// Attaches to `interface` too (a name or a glob; `--interfaces` gets them comma-joined).
    #[must_use]
    pub fn interface(mut self, interface: &str) -> Self {
        self.interfaces.push(interface.to_owned());
        self
    }

    /// `--cluster-id` (default `local`).
    #[must_use]
    pub fn cluster_id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.cluster_id);
        self
    }

    /// One more argument for `mcs-agent run`, after the guard's own (see
    /// [`AgentGuard::start_with_args`] for those not to repeat).
    #[must_use]
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// Starts it.
    ///
    /// # Panics
    /// When no interface (nor `--xdp-interfaces`) was given, the directory cannot be prepared or the agent cannot start.
    #[must_use]
    pub fn start(self) -> AgentGuard {
        let gateway = self.extra.iter().any(|a| a.starts_with("--xdp-interfaces"));
        assert!(!self.interfaces.is_empty() || gateway, "the agent needs at least one interface");
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/mcs-test-{}", self.prefix));
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        AgentGuard::launch(
            self.node,
            &self.prefix,
            self.manifests,
            None,
            &self.interfaces.join(","),
            &self.cluster_id,
            pin_path,
            &extra,
        )
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop(libc::SIGTERM)));
        }
        if self.pin_path.exists()
            && let Err(e) = fs::remove_dir_all(&self.pin_path)
        {
            eprintln!("removing {}: {e}", self.pin_path.display());
        }
        let _ = fs::remove_dir_all(&self.manifests);
        // The agent removes its monitor socket when it stops; not after a SIGKILL.
        let _ = fs::remove_file(mcs_agent::events::socket_path(&self.pin_path));
    }
}

/// `--socket-lb=false`, unless `extra` (the agent's other arguments) says
/// where the socket programs go: tests and benchmarks attach them only to a
/// child cgroup they make, never to the machine's cgroup root, which is the
/// agent's default.
pub fn socket_lb_off<S: AsRef<str>>(extra: &[S]) -> Option<&'static str> {
    let chosen = extra.iter().any(|a| a.as_ref().starts_with("--socket-lb") || a.as_ref().starts_with("--cgroup-path"));
    (!chosen).then_some("--socket-lb=false")
}
