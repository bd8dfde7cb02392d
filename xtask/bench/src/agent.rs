//! The real `mcs-agent` binary, run with the file source in a node namespace,
//! its log lines timestamped as they arrive.
//!
//! Only the stable command line is used: `run --source file --manifests DIR
//! --interfaces .. --cluster-id .. --pin-path ..` plus the documented
//! `--poll-interval-ms` and `--metrics-addr`. "Programmed" is read from the
//! agent's `synced` log line and its fields (`service_ports`, `errors`).
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    thread,
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result, bail};
use mcs_tests::netns::NetNs;

use crate::interrupted;

/// Prefix of every pin directory the benchmarks create.
pub const PIN_PREFIX: &str = "/sys/fs/bpf/mcs-bench-";

/// A log line and when it arrived.
pub struct Line {
    /// Arrival time.
    pub at: Instant,
    /// The line, ANSI escapes removed.
    pub text: String,
}

impl Line {
    /// The value of `key=value` in the line.
    #[must_use]
    pub fn field(&self, key: &str) -> Option<&str> {
        self.text.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// A numeric field.
    #[must_use]
    pub fn number(&self, key: &str) -> Option<u64> {
        self.field(key)?.trim_matches('"').parse().ok()
    }

    /// Whether this is the agent's `synced` line.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.text.contains(" synced") && self.field("service_ports").is_some()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What the agent reads.
#[derive(Clone, Copy, Debug)]
pub enum AgentSource<'a> {
    /// `--source file --manifests DIR --poll-interval-ms 10`.
    File(&'a Path),
    /// `--source kubernetes --kubeconfig FILE`.
    Kube(&'a Path),
}

/// A running agent; dropping it stops it (SIGTERM, then SIGKILL) and removes its pins.
pub struct Agent {
    child: Option<Child>,
    /// Its pin directory.
    pub pin_path: PathBuf,
    /// Log lines as they arrive.
    pub lines: Receiver<Line>,
    /// When it was spawned.
    pub started: Instant,
}

impl Agent {
    /// Starts the agent in `node` on `interfaces`, reading `manifests`.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start(node: &NetNs, manifests: &Path, interfaces: &str, tag: &str) -> Result<Self> {
        Self::start_with(node, manifests, interfaces, tag, &[])
    }

    /// As [`Agent::start`], with `extra` arguments after the others (map capacities, say).
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_with(node: &NetNs, manifests: &Path, interfaces: &str, tag: &str, extra: &[String]) -> Result<Self> {
        Self::start_source(node, AgentSource::File(manifests), interfaces, tag, extra)
    }

    /// As [`Agent::start_with`], reading `source`.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_source(
        node: &NetNs,
        source: AgentSource<'_>,
        interfaces: &str,
        tag: &str,
        extra: &[String],
    ) -> Result<Self> {
        let pin_path = PathBuf::from(format!("{PIN_PREFIX}{}-{tag}", std::process::id()));
        if pin_path.exists() {
            fs::remove_dir_all(&pin_path).with_context(|| format!("removing stale {}", pin_path.display()))?;
        }
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", node.path().display())).arg("--").arg(mcs_tests::agent_path());
        match source {
            AgentSource::File(manifests) => {
                cmd.args(["run", "--source", "file", "--manifests"]).arg(manifests).args(["--poll-interval-ms", "10"]);
            }
            AgentSource::Kube(kubeconfig) => {
                cmd.args(["run", "--source", "kubernetes", "--kubeconfig"]).arg(kubeconfig);
            }
        }
        // A pure gateway node (`--xdp-interfaces` only) has no `--interfaces`.
        if !interfaces.is_empty() {
            cmd.args(["--interfaces", interfaces]);
        }
        cmd.args(["--cluster-id", "local", "--pin-path"])
            .arg(&pin_path)
            .args(["--metrics-addr", ""])
            // The socket programs attach only to a child cgroup a bench makes, never to the root.
            .args(mcs_tests::agent::socket_lb_off(extra))
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The agent dies with us even when we are killed outright (the guard
        // cannot run then); spawn from a thread that lives as long as the run.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting mcs-agent")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, lines) = channel();
        thread::spawn(move || {
            // Echo the first few warnings and errors; a full map can log one per entry.
            let mut echoed = 0u32;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let text = strip_ansi(&line);
                if text.contains("ERROR") || text.contains("WARN") {
                    echoed += 1;
                    if echoed <= 5 {
                        eprintln!("   agent: {}", text.chars().take(300).collect::<String>());
                    } else if echoed == 6 {
                        eprintln!("   agent: (further warnings and errors not shown)");
                    }
                }
                if tx.send(Line { at: Instant::now(), text }).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child: Some(child), pin_path, lines, started })
    }

    /// The agent's pid (nsenter execs it, so it is the child's).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the next `synced` line that satisfies `done`, at most `timeout`.
    ///
    /// # Errors
    /// On timeout, interruption, or when the agent exits.
    pub fn wait_synced(&mut self, timeout: Duration, done: impl Fn(&Line) -> bool) -> Result<Line> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no synced line yet");
        for _ in 0..10_000_000 {
            if interrupted() {
                bail!("interrupted");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if line.is_synced() => {
                    if done(&line) {
                        return Ok(line);
                    }
                    last = line.text;
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("mcs-agent exited (last: {last})"),
            }
        }
        bail!("mcs-agent not synced within {timeout:?} (last: {last})")
    }

    /// Peak resident set (`VmHWM`) in KiB.
    #[must_use]
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Removing the link pins detaches the programs; then the maps go.
        if self.pin_path.exists()
            && let Err(e) = fs::remove_dir_all(&self.pin_path)
        {
            eprintln!("removing {}: {e}", self.pin_path.display());
        }
    }
}

/// Removes pin directories left by benchmark runs whose process is gone.
pub fn cleanup_stale_pins() {
    let Ok(dir) = fs::read_dir("/sys/fs/bpf") else { return };
    let prefix = PIN_PREFIX.trim_start_matches("/sys/fs/bpf/");
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = fs::remove_dir_all(entry.path());
            eprintln!("removed stale /sys/fs/bpf/{name}");
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<tmp>/<name>` afresh.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
