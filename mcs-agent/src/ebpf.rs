//! Loading the embedded eBPF object, pinning its maps, and attaching its
//! programs to interfaces.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/mcs`):
//! - the maps (`mcs_common::map_names::ALL`: services, backends, Maglev
//!   tables, conntrack, affinity, cluster names, counters, config), with BTF,
//!   so `bpftool map dump pinned <dir>/<map>` shows named fields;
//! - `links/<interface>_ingress` and `links/<interface>_egress`: the TCX links
//!   (see [`link_pin_path`]);
//! - `links/sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4`,
//!   `sock_getpeername4`: the cgroup links of the socket programs (see
//!   [`crate::sockets`]).
//!
//! Pinned maps and links outlive the agent: a restarted agent adopts the maps
//! (conntrack included) and swaps its programs into the pinned links atomically,
//! so established connections keep flowing across a restart.
use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapInfo, MapType},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::{Xdp, XdpLink, XdpMode},
    },
    sys::SyscallError,
};
use mcs_common::{
    AffinityKey, AffinityValue, Backend, CONFIG_GLOBAL, ClusterName, CtKey, CtValue, DEFAULT_HAIRPIN_ADDR,
    DatapathConfig, FragKey, FragValue, GUARD_F_SOURCE_FIB, LAYOUT_VERSION, NS_PER_SEC, SOCKET_F_HOST_ONLY, ServiceKey,
    ServiceStats, ServiceValue, SockRevKey, SockRevValue, ipv4_to_nbo, limits, map_names, program_names,
};
use tracing::{debug, info, warn};

use crate::maglev;

/// The eBPF object built from `mcs-ebpf` by the build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcs-ebpf"));

/// The default pin directory.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/mcs";

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The mode of the pin directory and its `links` directory: root's only.
pub const PIN_DIR_MODE: u32 = 0o700;

/// The expected shape of each map (type, key size, value size), checked
/// against existing pins before they are adopted: an agent must never write
/// one layout into a map of another.
const MAP_SHAPES: [(&str, MapType, usize, usize); 13] = [
    (map_names::SERVICES, MapType::Hash, size_of::<ServiceKey>(), size_of::<ServiceValue>()),
    (map_names::BACKENDS, MapType::Array, size_of::<u32>(), size_of::<Backend>()),
    (map_names::CONNTRACK_TCP, MapType::LruHash, size_of::<CtKey>(), size_of::<CtValue>()),
    (map_names::CONNTRACK_ANY, MapType::LruHash, size_of::<CtKey>(), size_of::<CtValue>()),
    (map_names::FRAGMENTS, MapType::LruHash, size_of::<FragKey>(), size_of::<FragValue>()),
    (map_names::DROPS, MapType::PerCpuArray, size_of::<u32>(), size_of::<u64>()),
    (map_names::STATS, MapType::PerCpuArray, size_of::<u32>(), size_of::<u64>()),
    (map_names::MAGLEV, MapType::HashOfMaps, size_of::<u32>(), size_of::<u32>()),
    (map_names::AFFINITY, MapType::LruHash, size_of::<AffinityKey>(), size_of::<AffinityValue>()),
    (map_names::CLUSTERS, MapType::Hash, size_of::<u32>(), size_of::<ClusterName>()),
    (map_names::SERVICE_STATS, MapType::PerCpuArray, size_of::<u32>(), size_of::<ServiceStats>()),
    (map_names::SOCK_REV, MapType::LruHash, size_of::<SockRevKey>(), size_of::<SockRevValue>()),
    (map_names::CONFIG, MapType::Array, size_of::<u32>(), size_of::<DatapathConfig>()),
];

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin maps (and, when attaching, links) here; `None` keeps everything
    /// private to this process (packet tests).
    pub pin_path: Option<PathBuf>,
    /// Entries of the backends map (one per backend of each service port).
    pub backends_max: u32,
    /// Entries of the services map (one per service port and one per
    /// ClusterSetIP).
    pub services_max: u32,
    /// Entries of the per-service counters (service ids are below it).
    pub service_ports_max: u32,
    /// Slots of the flat Maglev array: every table's slots together.
    pub maglev_slots_max: u32,
    /// The programs' settings (timeouts, hairpin address, table size), and
    /// the sizes of the conntrack and session-affinity maps
    /// (`conntrack_max`, `affinity_max`).
    pub config: DatapathConfig,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_path: None,
            backends_max: limits::BACKENDS_MAX,
            services_max: limits::SERVICES_MAX,
            service_ports_max: limits::SERVICE_PORTS_MAX,
            maglev_slots_max: limits::MAGLEV_SLOTS_MAX,
            config: DatapathConfig::DEFAULT,
        }
    }
}

/// The datapath's settings, in the units an operator gives them (entries,
/// seconds, an address); [`DatapathSettings::load_options`] turns them into
/// what the loader needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathSettings {
    /// Entries of the TCP conntrack map (LRU; two per connection).
    pub conntrack_max: u32,
    /// Entries of the conntrack map of every other protocol (LRU; two per flow).
    pub conntrack_max_non_tcp: u32,
    /// The source ports translated flows get.
    pub nat_port_range: PortRange,
    /// The largest Maglev table (a prime); a port's table is sized from
    /// its backend count up to this.
    pub maglev_table_size: u32,
    /// Slots of the flat Maglev array (every table's together).
    pub maglev_slots_max: u32,
    /// Idle timeout of a TCP connection that has only sent its SYN, in seconds.
    pub ct_timeout_tcp_syn: u64,
    /// Idle timeout of an established TCP connection, in seconds.
    pub ct_timeout_tcp_established: u64,
    /// Idle timeout of a closing TCP connection, in seconds.
    pub ct_timeout_tcp_closing: u64,
    /// Idle timeout of a UDP flow, in seconds.
    pub ct_timeout_udp: u64,
    /// Entries of the session-affinity map (LRU).
    pub affinity_max: u32,
    /// Entries of the backends map.
    pub backends_max: u32,
    /// Entries of the services map.
    pub services_max: u32,
    /// Service ports with a Maglev table and counters.
    pub service_ports_max: u32,
    /// The source address of hairpin connections; `0.0.0.0`: not translated.
    pub hairpin_ip: std::net::Ipv4Addr,
    /// The socket programs translate only the node's own network namespace
    /// (`--socket-lb-host-only`).
    pub socket_lb_host_only: bool,
    /// New flows are accepted only from sources routed back out of their
    /// interface (`--source-validation=fib`).
    pub validate_sources: bool,
    /// Fail-fast answers per second and interface; 0: no limit.
    pub reject_rate: u32,
    /// Fail-fast answers at once per interface.
    pub reject_burst: u32,
    /// Mid-stream pickups per second and interface; 0: no limit.
    pub pickup_rate: u32,
    /// Mid-stream pickups at once per interface.
    pub pickup_burst: u32,
}

/// A range of ports, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (at least `first`).
    pub last: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The name the packet tests know [`DatapathSettings`] by.
pub type DatapathArgs = DatapathSettings;

impl Default for DatapathSettings {
    fn default() -> Self {
        Self {
            conntrack_max: limits::CONNTRACK_MAX,
            conntrack_max_non_tcp: limits::CONNTRACK_NON_TCP_MAX,
            nat_port_range: PortRange { first: limits::NAT_PORT_MIN, last: limits::NAT_PORT_MAX },
            maglev_table_size: limits::MAGLEV_TABLE_SIZE,
            maglev_slots_max: limits::MAGLEV_SLOTS_MAX,
            ct_timeout_tcp_syn: limits::CT_TIMEOUT_TCP_SYN_SECS,
            ct_timeout_tcp_established: limits::CT_TIMEOUT_TCP_ESTABLISHED_SECS,
            ct_timeout_tcp_closing: limits::CT_TIMEOUT_TCP_CLOSING_SECS,
            ct_timeout_udp: limits::CT_TIMEOUT_UDP_SECS,
            affinity_max: limits::AFFINITY_MAX,
            backends_max: limits::BACKENDS_MAX,
            services_max: limits::SERVICES_MAX,
            service_ports_max: limits::SERVICE_PORTS_MAX,
            hairpin_ip: DEFAULT_HAIRPIN_ADDR,
            socket_lb_host_only: false,
            validate_sources: true,
            reject_rate: limits::REJECT_RATE,
            reject_burst: limits::REJECT_BURST,
            pickup_rate: limits::PICKUP_RATE,
            pickup_burst: limits::PICKUP_BURST,
        }
    }
}

impl DatapathSettings {
    /// The load options these settings ask for, pinning under `pin_path`.
    #[must_use]
    pub fn load_options(&self, pin_path: Option<PathBuf>) -> LoadOptions {
        LoadOptions {
            pin_path,
            backends_max: self.backends_max,
            services_max: self.services_max,
            service_ports_max: self.service_ports_max,
            maglev_slots_max: self.maglev_slots_max,
            config: DatapathConfig {
                tcp_syn_ns: self.ct_timeout_tcp_syn.saturating_mul(NS_PER_SEC),
                tcp_established_ns: self.ct_timeout_tcp_established.saturating_mul(NS_PER_SEC),
                tcp_closing_ns: self.ct_timeout_tcp_closing.saturating_mul(NS_PER_SEC),
                udp_ns: self.ct_timeout_udp.saturating_mul(NS_PER_SEC),
                hairpin_addr: ipv4_to_nbo(self.hairpin_ip),
                maglev_table_size: self.maglev_table_size,
                conntrack_max: self.conntrack_max,
                affinity_max: self.affinity_max,
                conntrack_max_non_tcp: self.conntrack_max_non_tcp,
                nat_port_min: self.nat_port_range.first,
                nat_port_max: self.nat_port_range.last,
                layout_version: LAYOUT_VERSION,
                socket_flags: if self.socket_lb_host_only { SOCKET_F_HOST_ONLY } else { 0 },
                // Filled in by `load_object`, from the loading process's namespace.
                host_netns_cookie: 0,
                guard_flags: if self.validate_sources { GUARD_F_SOURCE_FIB } else { 0 },
                reject_rate: self.reject_rate,
                reject_burst: self.reject_burst,
                pickup_rate: self.pickup_rate,
                pickup_burst: self.pickup_burst,
                pad: 0,
            },
        }
    }
}

/// Loads the embedded object and its programs.
///
/// # Errors
/// When the agent was built without the object, bpffs cannot be mounted, a
/// pinned map has another layout, or the kernel refuses a map or program.
pub fn load(options: &LoadOptions) -> Result<Ebpf> {
    load_object(OBJECT, options)
}

/// Loads `object` (an `mcs-ebpf` build) and its programs.
///
/// # Errors
/// As [`load`].
pub fn load_object(object: &[u8], options: &LoadOptions) -> Result<Ebpf> {
    if object.is_empty() {
        bail!(
            "this mcs-agent was built with AYA_BUILD_SKIP=1 and embeds no eBPF object; \
             rebuild it without that variable (`cargo xtask setup` installs bpf-linker)"
        );
    }
    if !maglev::is_prime(options.config.maglev_table_size) {
        bail!("the Maglev table size {} is not a prime", options.config.maglev_table_size);
    }
    let mut config = options.config;
    // Only `--socket-lb-host-only` compares against it.
    if config.socket_flags & SOCKET_F_HOST_ONLY != 0 && config.host_netns_cookie == 0 {
        config.host_netns_cookie = own_netns_cookie().context("reading this network namespace's cookie")?;
    }
    let mut loader = EbpfLoader::new();
    // The whole verifier log in load errors, for whoever debugs a refused program.
    if std::env::var_os("MCS_VERIFIER_LOG").is_some() {
        loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
    }
    loader.map_max_entries(map_names::CONNTRACK_TCP, config.conntrack_max);
    loader.map_max_entries(map_names::CONNTRACK_ANY, config.conntrack_max_non_tcp);
    loader.map_max_entries(map_names::AFFINITY, config.affinity_max);
    loader.map_max_entries(map_names::BACKENDS, options.backends_max);
    loader.map_max_entries(map_names::SERVICES, options.services_max);
    loader.map_max_entries(map_names::MAGLEV, 1);
    loader.map_max_entries(map_names::SERVICE_STATS, options.service_ports_max);
    loader.override_global(CONFIG_GLOBAL, &config, true);
    let mut pins = Vec::new();
    if let Some(dir) = &options.pin_path {
        prepare_pin_dir(dir)?;
        let requested = |name: &str| match name {
            map_names::CONNTRACK_TCP => Some(config.conntrack_max),
            map_names::CONNTRACK_ANY => Some(config.conntrack_max_non_tcp),
            map_names::AFFINITY => Some(config.affinity_max),
            map_names::BACKENDS => Some(options.backends_max),
            map_names::SERVICES => Some(options.services_max),
            map_names::MAGLEV => Some(1),
            map_names::SERVICE_STATS => Some(options.service_ports_max),
            _ => None,
        };
        for (name, map_type, key_size, value_size) in MAP_SHAPES {
            let path = dir.join(name);
            check_pinned_shape(&path, name, (map_type, key_size, value_size))?;
            if let Some(wanted) = requested(name) {
                note_pinned_size(&path, name, wanted);
            }
            pins.push((name, path));
        }
        remove_obsolete_pins(dir)?;
    }
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    // A new Maglev array is created beside the verifier's work: the kernel
    // zeroes all of it at creation (seconds for hundreds of MiB).
    let creating = options
        .pin_path
        .as_ref()
        .is_none_or(|dir| !dir.join(map_names::MAGLEV).exists())
        .then(|| MaglevArrayCreation::start(options.maglev_slots_max));
    let mut ebpf = loader.load(object).context("loading the eBPF object")?;
    for name in [program_names::FROM_POD, program_names::TO_POD, program_names::NOOP] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a tc classifier"))?;
        program.load().with_context(|| format!("loading program {name} (the verifier said no)"))?;
    }
    // The XDP gateway is loaded by `attach_xdp`, only on a node with
    // `--xdp-interfaces`; the no-op floor costs nothing to load.
    let name = program_names::XDP_NOOP;
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))?;
    program.load().with_context(|| format!("loading program {name} (the verifier said no)"))?;
    // The socket programs are loaded by `sockets::attach`, only when socket load balancing is
    // on: they need Linux 5.18 (`bpf_set_retval`), the tc programs do not.
    // Record the settings for `inspect` and for the sync (the table size).
    let mut record: aya::maps::Array<&mut aya::maps::MapData, DatapathConfig> = aya::maps::Array::try_from(
        ebpf.map_mut(map_names::CONFIG).context("map MCS_CONFIG is missing from the eBPF object")?,
    )?;
    record.set(0, config, 0).context("writing MCS_CONFIG")?;
    ensure_maglev_array(&mut ebpf, options.maglev_slots_max, creating)?;
    Ok(ebpf)
}

/// A flat Maglev array being created on a thread of its own.
struct MaglevArrayCreation(
    Option<std::thread::JoinHandle<Result<aya::maps::Array<aya::maps::MapData, mcs_common::MaglevPair>>>>,
);

impl MaglevArrayCreation {
    fn start(slots: u32) -> Self {
        // Without a thread, the array is created when it is needed.
        let thread = std::thread::Builder::new()
            .name("maglev-array".into())
            .spawn(move || create_maglev_array(slots))
            .map_err(|e| warn!(error = %e, "creating the Maglev array on the loading thread instead"))
            .ok();
        Self(thread)
    }

    fn finish(mut self, slots: u32) -> Result<aya::maps::Array<aya::maps::MapData, mcs_common::MaglevPair>> {
        match self.0.take() {
            Some(thread) => {
                thread.join().map_err(|_| anyhow::anyhow!("the Maglev array's creating thread panicked"))?
            }
            None => create_maglev_array(slots),
        }
    }
}

/// An array not taken (a pinned one was adopted, or the load failed) is
/// waited for and closed here, not left to a thread nobody joins.
impl Drop for MaglevArrayCreation {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _unused = thread.join();
        }
    }
}

fn create_maglev_array(slots: u32) -> Result<aya::maps::Array<aya::maps::MapData, mcs_common::MaglevPair>> {
    use mcs_common::{MAGLEV_TABLE_FLAGS, maglev_elements};
    aya::maps::Array::create(maglev_elements(slots), MAGLEV_TABLE_FLAGS)
        .with_context(|| format!("creating the Maglev array of {slots} slots (--maglev-slots-max)"))
}

/// Creates the flat Maglev array (`--maglev-slots-max` slots) as the one
/// entry of `MCS_MAGLEV`, unless the (pinned) map already holds one: that
/// one is adopted with its tables and its size. The only update of the
/// outer map, so the only RCU grace period the tables ever wait for.
///
/// `creating` is an array already being created (when no pin was found
/// before the load); it is dropped, unused, when a pinned one is adopted.
fn ensure_maglev_array(ebpf: &mut Ebpf, slots: u32, creating: Option<MaglevArrayCreation>) -> Result<()> {
    use aya::maps::{Array, HashOfMaps, MapData, MapError};
    use mcs_common::{MAGLEV_ARRAY_KEY, MaglevPair, maglev_elements};
    let mut outer: HashOfMaps<&mut MapData, u32, Array<MapData, MaglevPair>> = HashOfMaps::try_from(
        ebpf.map_mut(map_names::MAGLEV).context("map MCS_MAGLEV is missing from the eBPF object")?,
    )?;
    match outer.get(&MAGLEV_ARRAY_KEY, 0) {
        Ok(inner) => {
            let found = u64::from(inner.len()) * 2;
            if found != u64::from(maglev_elements(slots)) * 2 {
                warn!(
                    pinned = found,
                    requested = slots,
                    "the pinned Maglev array keeps its size; --maglev-slots-max takes effect after `mcs-agent cleanup`"
                );
            }
            Ok(())
        }
        Err(MapError::KeyNotFound) => {
            let inner = match creating {
                Some(creation) => creation.finish(slots)?,
                None => create_maglev_array(slots)?,
            };
            outer.insert(MAGLEV_ARRAY_KEY, &inner, 0).context("publishing the Maglev array in MCS_MAGLEV")?;
            Ok(())
        }
        Err(e) => Err(e).context("reading MCS_MAGLEV"),
    }
}

/// Makes sure `dir` is on a bpffs, mounting one at `/sys/fs/bpf` when that is
/// where `dir` lives and nothing is mounted there yet, then creates `dir`.
fn prepare_pin_dir(dir: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        info!("mounting bpffs at /sys/fs/bpf");
        let source = CString::new("bpf").expect("static string has no NUL");
        let target = CString::new("/sys/fs/bpf").expect("static string has no NUL");
        // SAFETY: all pointers are valid NUL-terminated strings for the call.
        let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
        }
    }
    fs::create_dir_all(dir.join("links")).with_context(|| format!("creating pin directory {}", dir.display()))?;
    // Root's only: the pins (0600 from the kernel) give whoever can open them
    // the maps and links, so not even their names are shown to others.
    for d in [dir.to_path_buf(), dir.join("links")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(PIN_DIR_MODE))
            .with_context(|| format!("making {} mode {PIN_DIR_MODE:o}", d.display()))?;
    }
    if !is_bpffs(dir) {
        bail!("pin directory {} is not on a bpf filesystem", dir.display());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    fs_type(path) == Some(BPF_FS_MAGIC)
}

/// The file system type (`statfs`'s `f_type`, a `*_MAGIC`) of `path`.
pub(crate) fn fs_type(path: &Path) -> Option<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string; st is writable.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut st) };
    #[expect(clippy::useless_conversion, reason = "f_type's integer type differs between libcs")]
    let fs_type = i64::from(st.f_type);
    (rc == 0).then_some(fs_type)
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`), the
/// value `bpf_get_netns_cookie` gives the socket programs for its sockets.
fn own_netns_cookie() -> io::Result<u64> {
    /// `SO_NETNS_COOKIE` from `asm-generic/socket.h` (Linux 5.14).
    const SO_NETNS_COOKIE: libc::c_int = 71;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // An unbound socket: it needs no address (a new namespace's loopback is down).
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns; closed on drop.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).map_err(io::Error::other)?;
    // SAFETY: the buffer and its length are valid for the call.
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

fn check_pinned_shape(
    path: &Path,
    name: &str,
    (map_type, key_size, value_size): (MapType, usize, usize),
) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let info = MapInfo::from_pin(path).with_context(|| format!("reading pinned map {}", path.display()))?;
    let found = (info.map_type().ok(), info.key_size() as usize, info.value_size() as usize);
    if found != (Some(map_type), key_size, value_size) {
        bail!(
            "pinned map {} has type/key/value {:?}/{}/{} but this agent's {name} needs {map_type:?}/{key_size}/{value_size}; \
             it was made by an incompatible version: run `mcs-agent cleanup --pin-path {}` \
             (this drops tracked connections) and start again",
            path.display(),
            found.0,
            found.1,
            found.2,
            path.parent().unwrap_or(path).display(),
        );
    }
    debug!(map = name, pin = %path.display(), "adopting pinned map");
    Ok(())
}

/// Warns when an adopted pin's size is not the one the flags ask for: the
/// pin is adopted as it is (its entries, conntrack included, are what
/// restarts keep), so a new size takes effect only after `mcs-agent cleanup`.
fn note_pinned_size(path: &Path, name: &str, wanted: u32) {
    let Ok(info) = MapInfo::from_pin(path) else { return };
    if info.max_entries() != wanted {
        warn!(
            map = name,
            pinned = info.max_entries(),
            requested = wanted,
            "the pinned map keeps its size; the flag's takes effect after `mcs-agent cleanup` (which drops tracked flows)"
        );
    }
}

/// Removes the pins of maps an older layout had and this one does not: no
/// program of this agent reads them, so what they hold is gone anyway.
fn remove_obsolete_pins(dir: &Path) -> Result<()> {
    for name in map_names::OBSOLETE {
        let path = dir.join(name);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing obsolete pin {}", path.display()))?;
            warn!(
                pin = %path.display(),
                "removed a map of an older layout; the flows it tracked are not translated any more"
            );
        }
    }
    Ok(())
}

/// How programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (Linux 6.6 and later), pinned when a pin directory is set.
    Tcx,
    /// Legacy clsact qdisc filters.
    Clsact,
}

impl AttachMode {
    /// Its name, as `mcs-agent status` shows it: `tcx` or `clsact`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }

    /// TCX when the kernel has it, clsact otherwise.
    #[must_use]
    pub fn detect() -> Self {
        use aya::util::KernelVersion;
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => Self::Tcx,
            _ => Self::Clsact,
        }
    }
}

/// Attaches `mcs_from_pod` to the ingress and `mcs_to_pod` to the egress of
/// `interface`. With TCX and a pin directory, the links are pinned, and a link
/// already pinned for this interface gets the new program swapped in atomically.
///
/// # Errors
/// When the interface does not exist or the kernel refuses the attachment.
pub fn attach(ebpf: &mut Ebpf, interface: &str, pin_path: Option<&Path>, mode: AttachMode) -> Result<()> {
    // First on the pod's ingress and last on its egress: a program of the
    // CNI's (policy, say) sees what the pod's peer sees, the backend's
    // address, in both directions.
    for (program_name, attach_type, suffix, order) in [
        (program_names::FROM_POD, TcAttachType::Ingress, "ingress", LinkOrder::first()),
        (program_names::TO_POD, TcAttachType::Egress, "egress", LinkOrder::last()),
    ] {
        let program: &mut SchedClassifier =
            ebpf.program_mut(program_name).with_context(|| format!("program {program_name} is missing"))?.try_into()?;
        let context = || format!("attaching {program_name} to {interface} {suffix}");
        match (mode, pin_path) {
            (AttachMode::Tcx, Some(dir)) => {
                let pin = link_pin_path(dir, interface, suffix);
                attach_tcx_pinned(program, interface, attach_type, order, &pin).with_context(context)?;
            }
            (AttachMode::Tcx, None) => {
                // Unpinned: the link lives as long as `ebpf` does.
                program
                    .attach_with_options(interface, attach_type, TcAttachOptions::TcxOrder(order))
                    .with_context(context)?;
            }
            (AttachMode::Clsact, _) => {
                if let Err(e) = tc::qdisc_add_clsact(interface) {
                    debug!(interface, error = %e, "clsact qdisc not added (it may exist already)");
                }
                // Replace filters left by an earlier run rather than stacking a second one.
                if let Err(e) = tc::qdisc_detach_program(interface, attach_type, program_name) {
                    debug!(interface, error = %e, "no earlier filter to remove");
                }
                let id = program
                    .attach_with_options(interface, attach_type, TcAttachOptions::Netlink(NlOptions::default()))
                    .with_context(context)?;
                if pin_path.is_some() {
                    // Outlive the agent, as pinned TCX links do: a netlink
                    // filter stays attached once its handle is forgotten.
                    std::mem::forget(program.take_link(id).with_context(context)?);
                }
            }
        }
    }
    info!(interface, ?mode, "attached");
    Ok(())
}

/// The directions of the links [`attach`] and [`attach_xdp`] pin, as in their file names.
pub const LINK_DIRECTIONS: [&str; 3] = ["ingress", "egress", "xdp"];

/// How the XDP gateway runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    /// In the driver, before an skb exists (veth, most 10G+ NICs).
    Native,
    /// Generic XDP, after the skb is allocated: drivers without XDP.
    Generic,
    /// A pinned link of an earlier agent got the new program (its mode is
    /// the one it was attached in).
    Swapped,
}

impl XdpAttach {
    /// Its name, as `mcs-agent status` and the log show it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "xdp-native",
            Self::Generic => "xdp-generic",
            Self::Swapped => "xdp",
        }
    }
}

/// Attaches the XDP gateway (`mcs_gateway`) to `interface`: natively where
/// the driver has XDP, generic XDP otherwise. With a pin directory the link
/// is pinned (`links/<interface>_xdp`), and a link an earlier agent pinned
/// gets the new program swapped in atomically.
///
/// It never replaces another program: an interface that already has an XDP
/// program that is not ours is an error naming it (the kernel refuses a
/// link over an attached program, `EBUSY`, and generic over native, `EEXIST`).
///
/// # Errors
/// When the interface does not exist, already has another XDP program, or
/// the kernel refuses the attachment.
pub fn attach_xdp(ebpf: &mut Ebpf, interface: &str, pin_path: Option<&Path>) -> Result<XdpAttach> {
    let program: &mut Xdp = ebpf
        .program_mut(program_names::GATEWAY)
        .context("program mcs_gateway is missing")?
        .try_into()
        .context("mcs_gateway is not an XDP program")?;
    if program.fd().is_err() {
        program.load().context("loading program mcs_gateway (the verifier said no)")?;
    }
    let pin = pin_path.map(|dir| link_pin_path(dir, interface, "xdp"));
    if let Some(pin) = &pin {
        match PinnedLink::from_pin(pin) {
            Ok(pinned) => {
                let link: XdpLink = FdLink::from(pinned).try_into()?;
                match program.attach_to_link(link) {
                    Ok(id) => {
                        drop(program.take_link(id)?);
                        info!(interface, pin = %pin.display(), "XDP gateway swapped into its pinned link");
                        return Ok(XdpAttach::Swapped);
                    }
                    Err(e) => {
                        warn!(interface, pin = %pin.display(), error = %e, "pinned XDP link is stale; replacing it");
                        fs::remove_file(pin).with_context(|| format!("removing stale pin {}", pin.display()))?;
                    }
                }
            }
            Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
        }
    }
    // Another program on the interface: a link over it is `EBUSY`, native
    // over generic (or the reverse) `EEXIST`.
    let busy = |e: &aya::programs::ProgramError| {
        matches!(e, aya::programs::ProgramError::SyscallError(SyscallError { io_error, .. })
            if matches!(io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)))
    };
    let someone_elses = |e: &aya::programs::ProgramError| {
        anyhow::anyhow!(
            "interface {interface} already has an XDP program that is not mcs-agent's; it is left alone: \
             detach it (`ip link set dev {interface} xdp off`) or leave {interface} out of --xdp-interfaces ({e})"
        )
    };
    let (id, mode) = match program.attach(interface, XdpMode::Driver) {
        Ok(id) => (id, XdpAttach::Native),
        Err(e) if busy(&e) => return Err(someone_elses(&e)),
        Err(native) => match program.attach(interface, XdpMode::Skb) {
            Ok(id) => {
                info!(interface, error = %native, "no native XDP on this driver; using generic XDP");
                (id, XdpAttach::Generic)
            }
            Err(e) if busy(&e) => return Err(someone_elses(&e)),
            Err(e) => {
                return Err(e).with_context(|| format!("attaching mcs_gateway to {interface} (native: {native})"));
            }
        },
    };
    if let Some(pin) = &pin {
        let link: FdLink = program.take_link(id)?.try_into().with_context(|| {
            format!(
                "the XDP attachment of {interface} is not a BPF link (a kernel before 5.9?), so it cannot be pinned"
            )
        })?;
        let pinned = link.pin(pin).with_context(|| format!("pinning link at {}", pin.display()))?;
        drop(pinned);
    }
    info!(interface, mode = mode.as_str(), "XDP gateway attached");
    Ok(mode)
}

/// Where the link of `interface` in direction `suffix` is pinned.
///
/// bpffs refuses names that contain a dot (it keeps them for its own files),
/// and interface names may hold dots (`eth0.100`), so dots are escaped as
/// `%2e` and percent signs as `%25`: `links/eth0%2e100_ingress`.
#[must_use]
pub fn link_pin_path(dir: &Path, interface: &str, suffix: &str) -> PathBuf {
    let escaped = interface.replace('%', "%25").replace('.', "%2e");
    dir.join("links").join(format!("{escaped}_{suffix}"))
}

/// The interface a link pin file belongs to: the inverse of
/// [`link_pin_path`]'s file name. `None` for a name it does not make.
#[must_use]
pub fn pinned_interface(file_name: &str) -> Option<String> {
    let (escaped, suffix) = file_name.rsplit_once('_')?;
    if !LINK_DIRECTIONS.contains(&suffix) {
        return None;
    }
    let mut out = String::new();
    let mut rest = escaped;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        match rest.get(pos..pos + 3)? {
            "%2e" => out.push('.'),
            "%25" => out.push('%'),
            _ => return None,
        }
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn attach_tcx_pinned(
    program: &mut SchedClassifier,
    interface: &str,
    attach_type: TcAttachType,
    order: LinkOrder,
    pin: &Path,
) -> Result<()> {
    match PinnedLink::from_pin(pin) {
        Ok(pinned) => {
            let link: SchedClassifierLink = FdLink::from(pinned).try_into()?;
            match program.attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the link; our handle may go.
                    drop(program.take_link(id)?);
                    debug!(interface, pin = %pin.display(), "swapped program into pinned link");
                    return Ok(());
                }
                Err(e) => {
                    // The interface the link belonged to is gone (or was
                    // recreated): the link is defunct. Start afresh.
                    warn!(interface, pin = %pin.display(), error = %e, "pinned link is stale; replacing it");
                    fs::remove_file(pin).with_context(|| format!("removing stale pin {}", pin.display()))?;
                }
            }
        }
        Err(LinkError::SyscallError(SyscallError { io_error, .. })) if io_error.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
    }
    let id = program.attach_with_options(interface, attach_type, TcAttachOptions::TcxOrder(order))?;
    let link: FdLink = program.take_link(id)?.try_into()?;
    let pinned = link.pin(pin).with_context(|| format!("pinning link at {}", pin.display()))?;
    // Dropping the handle closes our fd; the pin keeps the link attached.
    drop(pinned);
    Ok(())
}

/// Removes everything the agent pinned under `dir`: links first (which
/// detaches the programs), then the maps. Tracked connections are lost.
///
/// # Errors
/// When a pin exists but cannot be removed.
pub fn cleanup(dir: &Path) -> Result<()> {
    let links = dir.join("links");
    if links.is_dir() {
        for entry in fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))? {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            info!(pin = %path.display(), "removed link");
        }
        fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    for name in map_names::ALL.into_iter().chain(map_names::OBSOLETE) {
        let path = dir.join(name);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            info!(pin = %path.display(), "removed map");
        }
    }
    if dir.is_dir() {
        fs::remove_dir(dir).with_context(|| format!("removing {} (is something else pinned there?)", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_never_contain_a_dot_and_never_collide() {
        let dir = Path::new("/sys/fs/bpf/mcs");
        let names = ["eth0", "eth0.100", "eth0%2e100", "lxc_a", "veth.x.y"];
        let paths: Vec<PathBuf> = names.iter().map(|n| link_pin_path(dir, n, "ingress")).collect();
        for p in &paths {
            let file = p.file_name().and_then(|f| f.to_str()).expect("utf-8 name");
            assert!(!file.contains('.'), "{file}");
        }
        let unique: std::collections::BTreeSet<_> = paths.iter().collect();
        assert_eq!(unique.len(), names.len(), "{paths:?}");
        assert_eq!(link_pin_path(dir, "eth0.100", "egress"), dir.join("links/eth0%2e100_egress"));
    }

    #[test]
    fn pin_names_decode_to_their_interfaces() {
        let dir = Path::new("/sys/fs/bpf/mcs");
        for name in ["eth0", "eth0.100", "a%b", "x%2e", "lxc_a"] {
            for suffix in LINK_DIRECTIONS {
                let pin = link_pin_path(dir, name, suffix);
                let file = pin.file_name().and_then(|f| f.to_str()).expect("utf-8");
                assert_eq!(pinned_interface(file).as_deref(), Some(name), "{file}");
            }
        }
        assert_eq!(pinned_interface("eth0_sideways"), None);
        assert_eq!(pinned_interface("eth0%zz_ingress"), None);
    }
}
