//! A child cgroup v2 directory for the socket-level tests: the agent attaches
//! its socket programs there (`--cgroup-path`), and the test process moves in
//! with [`ChildCgroup::enter`] so its clients (threads, and the programs it
//! starts) are translated. Nothing is ever attached to the machine's cgroup
//! root. The guard moves the test process back to where it was and removes
//! the directory on drop, also when the test panics; [`cleanup_stale`]
//! removes directories of killed runs.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// The suffix of every directory this module makes, for [`cleanup_stale`].
const SUFFIX: &str = "-cg";

/// The cgroup2 mount (`/sys/fs/cgroup/unified` on this machine's hybrid layout).
///
/// # Panics
/// When no cgroup2 file system is mounted.
#[must_use]
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mcs_agent::sockets::cgroup2_mount(&mounts).expect("a cgroup2 file system is mounted (the socket tests need one)")
}

/// This process's cgroup v2 path, relative to the mount (`/proc/self/cgroup`'s `0::` line).
fn own_cgroup() -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
    PathBuf::from(rel.trim_start_matches('/'))
}

/// A child cgroup the test made.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
    /// Where this process was before [`Self::enter`].
    home: Option<PathBuf>,
}

impl ChildCgroup {
    /// Creates `<cgroup2 mount>/<prefix>[-<name>]-cg`.
    ///
    /// # Panics
    /// When the directory cannot be made.
    #[must_use]
    pub fn new(prefix: &str, name: &str) -> Self {
        let leaf = if name.is_empty() { format!("{prefix}{SUFFIX}") } else { format!("{prefix}-{name}{SUFFIX}") };
        let path = cgroup2_root().join(leaf);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path, home: None }
    }

    /// The directory (`--cgroup-path`).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The argument that points the agent at this cgroup.
    #[must_use]
    pub fn arg(&self) -> String {
        format!("--cgroup-path={}", self.path.display())
    }

    /// Moves this whole process (every thread: cgroup v2 keeps a process in
    /// one cgroup) into the cgroup; programs it starts from now on start
    /// there too.
    ///
    /// # Panics
    /// When the move fails.
    pub fn enter(&mut self) {
        if self.home.is_none() {
            self.home = Some(cgroup2_root().join(own_cgroup()));
        }
        move_process(std::process::id(), &self.path);
    }

    /// Moves this process back where it was (a no-op when it is not inside).
    ///
    /// # Panics
    /// When the move fails.
    pub fn leave(&mut self) {
        if let Some(home) = self.home.take() {
            move_process(std::process::id(), &home);
        }
    }

    /// The programs attached to this cgroup, as `bpftool cgroup show` lists them.
    ///
    /// # Panics
    /// When bpftool fails.
    #[must_use]
    pub fn attached(&self) -> Vec<Hook> {
        attached(&self.path)
    }
}

/// A program attached to a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hook {
    /// bpftool's attach type (`cgroup_inet4_connect`, ...).
    pub kind: String,
    /// The program's name.
    pub name: String,
    /// The program's id.
    pub id: u64,
}

/// The programs attached to the cgroup at `path`, sorted by attach type.
///
/// # Panics
/// When bpftool fails or prints something that is not JSON.
#[must_use]
pub fn attached(path: &Path) -> Vec<Hook> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(path)
        .output()
        .expect("run bpftool (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "bpftool cgroup show {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool prints JSON");
    let mut found: Vec<Hook> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
                    Hook { kind: text("attach_type"), name: text("name"), id: p["id"].as_u64().unwrap_or_default() }
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn move_process(pid: u32, to: &Path) {
    let procs = to.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).unwrap_or_else(|e| panic!("moving process {pid} to {}: {e}", procs.display()));
}

/// Moves every process still in `dir` to the mount's root and removes it,
/// retrying for at most 2 s while processes leave.
fn remove(dir: &Path) -> Result<(), String> {
    let root = cgroup2_root();
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..100 {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let _ = fs::write(root.join("cgroup.procs"), pid.to_string());
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(format!("removing cgroup {}: {e}", dir.display())),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    Err(format!("removing cgroup {}: still busy", dir.display()))
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let home = self.home.take();
        if let Some(home) = &home
            && let Err(e) = fs::write(home.join("cgroup.procs"), std::process::id().to_string())
        {
            eprintln!("moving the test process back to {}: {e}", home.display());
        }
        if let Err(e) = remove(&self.path) {
            eprintln!("{e}");
        }
    }
}

/// Removes the cgroups of earlier runs that were killed before their guards
/// ran: directories `mcs<pid>x...-cg` under the cgroup2 mount whose `<pid>`
/// is no longer running. Returns what it removed.
#[must_use = "the list of removed cgroups is worth logging"]
pub fn cleanup_stale() -> Vec<String> {
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else { return Vec::new() };
    let Some(root) = mcs_agent::sockets::cgroup2_mount(&mounts) else { return Vec::new() };
    let Ok(entries) = fs::read_dir(&root) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("mcs").and_then(|r| r.split_once('x')).map(|(pid, _)| pid) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !name.ends_with(SUFFIX) || pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if remove(&entry.path()).is_ok() {
            removed.push(format!("cgroup {name}"));
        }
    }
    removed
}
