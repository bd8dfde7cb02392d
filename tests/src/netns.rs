//! Network-namespace guard.
//!
//! [`NetNs`] creates a named namespace (`/run/netns/<name>`, like `ip netns add`) and deletes it
//! again on drop, killing every process registered with it first. Dropping happens on unwinding
//! too, so a panicking test leaves nothing behind.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Directory where `ip netns` keeps the namespace bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// How long [`NetNs`]'s drop waits for a registered process after SIGTERM (and again after
/// SIGKILL).
const KILL_GRACE: Duration = Duration::from_secs(2);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process-unique name prefix: `mcs<pid>x<counter>-<tag>`.
///
/// `tag` is cut to 16 characters and anything but ASCII alphanumerics and `-` is replaced by `-`,
/// so the result is a valid namespace name. Every call returns a different prefix.
#[must_use]
pub fn unique_prefix(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag.chars().take(16).map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("mcs{}x{n}-{tag}", std::process::id())
}

/// Renders a command line for error messages.
fn render<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs a command to completion; panics with the command line and its output if it cannot be
/// started or exits unsuccessfully.
fn run_checked(cmd: &mut Command, rendered: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run `{rendered}`: {e}"));
    assert!(
        out.status.success(),
        "`{rendered}` failed ({}):\nstderr: {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end(),
        String::from_utf8_lossy(&out.stdout).trim_end(),
    );
    out
}

/// A process registered with a [`NetNs`], tracked through a pidfd so that killing it later can
/// never hit a recycled pid.
struct Registered {
    pid: u32,
    pidfd: OwnedFd,
    what: String,
}

impl Registered {
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on a pidfd we own; null siginfo is allowed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                eprintln!("netns: signal {sig} to pid {} ({}): {e}", self.pid, self.what);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit. Returns whether it has.
    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // Bounded: every iteration either returns or sleeps in poll until the deadline.
        for _ in 0..1000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if rc > 0 {
                return true;
            }
            if rc == 0 || left.is_zero() {
                return false;
            }
            // rc < 0: EINTR, retry.
        }
        false
    }

    /// Reaps the process if it is our zombie child (ignores "already reaped").
    fn reap(&self) {
        // SAFETY: zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let id = libc::id_t::try_from(self.pidfd.as_raw_fd()).unwrap_or_default();
        // SAFETY: valid pointer to a siginfo_t; WNOHANG never blocks.
        unsafe {
            libc::waitid(libc::P_PIDFD, id, &raw mut info, libc::WEXITED | libc::WNOHANG);
        }
    }
}

/// A network namespace that exists for as long as this guard does.
///
/// Creation sets `lo` up, `net.ipv4.ip_forward=1`, `rp_filter=0` (all/default) and disables IPv6
/// (all/default) so no stray IPv6 link-local traffic appears. Drop sends SIGTERM to every
/// registered process, then SIGKILL to those still alive after 2 s, reaps them, and runs
/// `ip netns del`. Errors during drop are logged to stderr and otherwise ignored.
pub struct NetNs {
    name: String,
    procs: Mutex<Vec<Registered>>,
}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetNs").field("name", &self.name).finish_non_exhaustive()
    }
}

impl NetNs {
    /// Creates the namespace `name` (`ip netns add <name>`) and configures it.
    ///
    /// # Panics
    /// If the namespace cannot be created or configured (e.g. it already exists, not root).
    #[must_use]
    pub fn new(name: &str) -> NetNs {
        assert!(!name.is_empty() && !name.contains('/') && name.len() <= 200, "bad namespace name {name:?}");
        run_checked(Command::new("ip").args(["netns", "add", name]), &format!("ip netns add {name}"));
        // From here on the guard owns the namespace: a panic below still deletes it.
        let ns = NetNs { name: name.to_owned(), procs: Mutex::new(Vec::new()) };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.enter(|| {
            for (key, val) in [
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/ipv4/conf/lo/rp_filter", "0"),
            ] {
                write_sysctl(key, val).unwrap_or_else(|e| panic!("netns {name}: sysctl {key}={val}: {e}"));
            }
            for key in ["net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"] {
                // IPv6 may be unavailable; that is fine too.
                let _ = write_sysctl(key, "1");
            }
        });
        ns
    }

    /// The namespace name (as listed by `ip netns list`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip netns exec <name> args...` and returns its output whatever the exit status.
    ///
    /// # Panics
    /// If `args` is empty or the command cannot be started at all.
    #[must_use]
    pub fn try_exec(&self, args: &[&str]) -> Output {
        assert!(!args.is_empty(), "NetNs::try_exec needs a program");
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("netns {}: cannot run {args:?}: {e}", self.name))
    }

    /// Runs `ip netns exec <name> args...` and returns its output.
    ///
    /// Note that `ip netns exec` remounts `/sys` (hiding `/sys/fs/bpf`); use
    /// [`NetNs::nsenter_command`] for programs that need bpffs pins.
    ///
    /// # Panics
    /// If the command cannot be started or exits unsuccessfully (message has the command, the
    /// namespace, stderr and stdout).
    pub fn exec(&self, args: &[&str]) -> Output {
        assert!(!args.is_empty(), "NetNs::exec needs a program");
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_checked(Command::new("ip").args(&full), &render("ip", &full))
    }

    /// Runs `ip -n <name> args...` (no mount-namespace games, cheap) and returns its stdout.
    ///
    /// # Panics
    /// If the command fails; the message has the command line and stderr.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        let out = run_checked(Command::new("ip").args(&full), &render("ip", &full));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Spawns `ip netns exec <name> args...` (stdin and stdout null, stderr inherited) and
    /// registers it so that dropping this namespace kills it.
    ///
    /// # Panics
    /// If `args` is empty or the process cannot be started.
    pub fn spawn(&self, args: &[&str]) -> Child {
        assert!(!args.is_empty(), "NetNs::spawn needs a program");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.spawn_cmd(&mut cmd)
    }

    /// Spawns an arbitrary prepared command (typically from [`NetNs::nsenter_command`], with
    /// whatever stdio the caller chose) and registers it with this namespace.
    ///
    /// # Panics
    /// If the process cannot be started.
    pub fn spawn_cmd(&self, cmd: &mut Command) -> Child {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("netns {}: cannot spawn {:?}: {e}", self.name, cmd));
        self.adopt(&child, &format!("{cmd:?}"));
        child
    }

    /// Registers an already running child so that dropping this namespace kills it.
    ///
    /// Must be called before the child is waited for. After the namespace is dropped the child
    /// has been reaped, so a later `Child::wait` on it reports an error.
    ///
    /// # Panics
    /// If no pidfd can be obtained for the child.
    pub fn adopt(&self, child: &Child, what: &str) {
        let pid = child.id();
        let raw_pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: plain syscall; the returned fd (if any) is owned by us.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        let fd = libc::c_int::try_from(fd).unwrap_or(-1);
        assert!(fd >= 0, "netns {}: pidfd_open({pid}) for {what}: {}", self.name, io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.procs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Registered {
            pid,
            pidfd,
            what: what.to_owned(),
        });
    }

    /// A `Command` running `program` with ONLY the network namespace switched:
    /// `nsenter --net=/run/netns/<name> -- program`. Unlike `ip netns exec`, `/sys` (and so
    /// `/sys/fs/bpf`) stays the host's. Add arguments with `.arg(..)`; spawn it with
    /// [`NetNs::spawn_cmd`] to have it killed on drop.
    #[must_use]
    pub fn nsenter_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that has first joined this network namespace, so sockets
    /// created inside `f` live in the namespace (they stay there when returned and used
    /// elsewhere). Panics in `f` propagate to the caller.
    ///
    /// # Panics
    /// If the namespace cannot be entered, or `f` panics.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        let name = &self.name;
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(s, move || {
                    let file =
                        File::open(&path).unwrap_or_else(|e| panic!("netns {name}: open {}: {e}", path.display()));
                    // SAFETY: valid fd of a netns file; affects only this thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert!(rc == 0, "netns {name}: setns: {}", io::Error::last_os_error());
                    drop(file);
                    f()
                })
                .unwrap_or_else(|e| panic!("netns {name}: cannot start thread: {e}"));
            match handle.join() {
                Ok(v) => v,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// The index of interface `name` in this namespace.
    ///
    /// # Panics
    /// When there is no such interface.
    #[must_use]
    pub fn ifindex(&self, name: &str) -> u32 {
        let c_name = std::ffi::CString::new(name).expect("an interface name has no NUL");
        // SAFETY: a valid C string; the call reads nothing else.
        let index = self.enter(|| unsafe { libc::if_nametoindex(c_name.as_ptr()) });
        assert!(index != 0, "no interface {name} in {}", self.name);
        index
    }

    /// Turns transmit checksum offload off on `interface` (what
    /// `ethtool -K <interface> tx off` does, through `SIOCETHTOOL`): its
    /// packets then carry complete TCP and UDP checksums, as frames from a
    /// wire do. A veth otherwise hands packets on with only the pseudo-header
    /// sum in the checksum field (`CHECKSUM_PARTIAL`), which an XDP program
    /// that forwards the frame itself can neither see nor complete.
    ///
    /// # Panics
    /// When the interface does not exist or the call fails.
    pub fn disable_tx_checksum(&self, interface: &str) {
        /// `ETHTOOL_STXCSUM`: set transmit checksum offload.
        const ETHTOOL_STXCSUM: u32 = 0x17;
        /// `SIOCETHTOOL`.
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        #[repr(C)]
        struct IfReq {
            name: [libc::c_char; libc::IFNAMSIZ],
            data: *mut EthtoolValue,
            pad: [u8; 16],
        }
        assert!(interface.len() < libc::IFNAMSIZ, "interface name too long: {interface}");
        let result = self.enter(|| {
            let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: 0 };
            let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &raw mut value, pad: [0; 16] };
            for (dst, src) in req.name.iter_mut().zip(interface.bytes()) {
                *dst = libc::c_char::from_ne_bytes([src]);
            }
            // SAFETY: a plain socket call.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `req` is a valid `struct ifreq` whose data points at a
            // live `struct ethtool_value`, both outliving the call.
            let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut req) };
            let result = if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
            result
        });
        result.unwrap_or_else(|e| panic!("netns {}: ethtool -K {interface} tx off: {e}", self.name));
    }

    /// Sets the sysctl `key` (dotted, as `sysctl` spells it: `net.ipv4.tcp_tw_reuse`) to
    /// `value` in this namespace. Only `net.*` keys are per namespace.
    ///
    /// # Panics
    /// When `key` is not a `net.` key or cannot be written.
    pub fn sysctl(&self, key: &str, value: &str) {
        assert!(key.starts_with("net.") && !key.contains('/'), "not a per-namespace sysctl: {key}");
        let path = key.replace('.', "/");
        self.enter(|| write_sysctl(&path, value))
            .unwrap_or_else(|e| panic!("netns {}: sysctl {key}={value}: {e}", self.name));
    }

    /// A counter of this namespace's network stack, as `nstat` names it (`TcpExtTCPSynRetrans`,
    /// `TcpExtPAWSTimewait`, `TcpRetransSegs`): read from `netstat` and `snmp` under
    /// `/proc/thread-self/net`, from a thread inside the namespace. `None` when there is no such
    /// counter.
    ///
    /// # Panics
    /// When the files cannot be read.
    #[must_use]
    pub fn counter(&self, name: &str) -> Option<u64> {
        let text = self.enter(|| {
            ["netstat", "snmp"]
                .map(|f| {
                    std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                        .unwrap_or_else(|e| panic!("netns {}: read {f}: {e}", self.name))
                })
                .concat()
        });
        // Each group is two lines: "Group: name name ..." then "Group: value value ...".
        let lines: Vec<&str> = text.lines().collect();
        lines.chunks(2).find_map(|pair| {
            let [names, values] = pair else { return None };
            let (group, names) = names.split_once(':')?;
            let field = name.strip_prefix(group)?;
            let at = names.split_whitespace().position(|n| n == field)?;
            values.split_once(':')?.1.split_whitespace().nth(at)?.parse().ok()
        })
    }

    /// Kills all registered processes now (SIGTERM, then SIGKILL after 2 s) and reaps them.
    pub fn kill_all(&self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for p in &procs {
            p.signal(libc::SIGTERM);
        }
        for p in &procs {
            if !p.wait_exit(KILL_GRACE) {
                p.signal(libc::SIGKILL);
                if !p.wait_exit(KILL_GRACE) {
                    eprintln!("netns {}: pid {} ({}) did not exit after SIGKILL", self.name, p.pid, p.what);
                }
            }
            p.reap();
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        match Command::new("ip").args(["netns", "del", &self.name]).stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "netns: `ip netns del {}` failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
            Err(e) => eprintln!("netns: cannot run `ip netns del {}`: {e}", self.name),
        }
    }
}

/// Writes `/proc/sys/<key>` (for `net/...` keys: of the calling thread's network namespace).
fn write_sysctl(key: &str, val: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), val)
}

/// Deletes leftover namespaces of earlier runs that were killed before they could clean up:
/// names `mcs<pid>x...` (see [`unique_prefix`]) whose `<pid>` is no longer running.
/// Returns the names deleted. Namespaces of live processes are never touched.
#[must_use = "the list of deleted namespaces is worth logging"]
pub fn cleanup_stale() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for entry in dir.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("mcs") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        let ok = Command::new("ip")
            .args(["netns", "del", &name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            deleted.push(name);
        }
    }
    deleted
}
