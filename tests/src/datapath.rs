//! A private copy of the datapath for `BPF_PROG_TEST_RUN` tests and
//! benchmarks, in the three phases of Cilium's `bpf/tests`:
//! 1. build: craft the frame ([`crate::packet`]);
//! 2. setup: program services through the agent's own sync ([`Syncer`] over
//!    [`AyaDataplane`], so the Maglev tables are the ones the agent builds),
//!    described with the [`ServicePort`] builder;
//! 3. check: verdict, rewritten addresses and ports, checksums verified from
//!    scratch, counters and conntrack ([`Datapath::flow`]).
//!
//! Every [`Datapath`] loads its own copy of the object with private
//! (unpinned) maps. `test_run` cannot follow a `bpf_redirect`: a packet sent
//! back to the pod comes back as verdict [`REDIRECT`] with the rewritten
//! frame in the output.
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use mcs_agent::{
    dataplane::{AyaDataplane, Dataplane as _},
    ebpf::{self, LoadOptions},
    sync::Syncer,
    translate::{DesiredBackend, DesiredServicePort, DesiredState, EndpointState, Protocol, ServicePortKey},
};
use mcs_common::{
    AffinityKey, AffinityValue, CT_DIR_FORWARD, CT_DIR_REPLY, CtKey, CtValue, DatapathConfig, DropReason, NS_PER_SEC,
    ServiceKey, ServiceStats, Stat, ct_state, flow_hash, ipv4_from_nbo, ipv4_to_nbo, maglev_slot, map_names,
    nat_port_hash, proto,
};

/// `TC_ACT_UNSPEC` (`TCX_NEXT`) as `test_run` reports it: what the programs
/// return for packets they leave alone and for packets they translated (the
/// next program, or the stack, goes on with them).
pub const NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT`.
pub const DROP: u32 = 2;
/// `TC_ACT_REDIRECT`: sent back out to the pod (a fail-fast answer or a
/// hairpinned packet).
pub const REDIRECT: u32 = 7;

/// Size of `struct __sk_buff` as `test_run` takes it (up to `hwtstamp`).
pub const SK_BUFF_LEN: usize = 192;
/// Offset of `ingress_ifindex` in `struct __sk_buff`.
const SK_BUFF_INGRESS_IFINDEX: usize = 36;
/// Offset of `ifindex` in `struct __sk_buff`.
const SK_BUFF_IFINDEX: usize = 40;

/// The `struct __sk_buff` `test_run` takes for a packet arriving on
/// interface `ifindex` (`ingress_ifindex` and `ifindex`, as tc ingress sees them).
#[must_use]
pub fn skb_arriving_on(ifindex: u32) -> [u8; SK_BUFF_LEN] {
    let mut ctx = [0u8; SK_BUFF_LEN];
    ctx[SK_BUFF_INGRESS_IFINDEX..SK_BUFF_INGRESS_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}
/// `XDP_DROP`, as the XDP gateway returns it.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`: to the stack, untouched (or translated, for the stack to forward).
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`: back out of the interface it came in on.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`: out of another interface (`test_run` does not follow it).
pub const XDP_REDIRECT: u32 = 4;

/// Table size of the tests: small keeps setup quick; the algorithm is the same.
pub const TABLE_SIZE: u32 = 1021;

/// One service port to program, built up step by step.
#[derive(Clone, Debug)]
pub struct ServicePort {
    key: ServicePortKey,
    port: DesiredServicePort,
}

impl ServicePort {
    fn new(vip: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        Self {
            key: ServicePortKey { ip: vip, port, protocol },
            port: DesiredServicePort {
                namespace: "demo".into(),
                name: "svc".into(),
                port_name: String::new(),
                session_affinity_timeout: None,
                backends: Vec::new(),
                draining: Vec::new(),
            },
        }
    }

    /// A TCP port of `vip`, without backends yet.
    #[must_use]
    pub fn tcp(vip: Ipv4Addr, port: u16) -> Self {
        Self::new(vip, port, Protocol::Tcp)
    }

    /// A UDP port of `vip`, without backends yet.
    #[must_use]
    pub fn udp(vip: Ipv4Addr, port: u16) -> Self {
        Self::new(vip, port, Protocol::Udp)
    }

    /// A port of `vip` with IP protocol number `protocol` (TCP or UDP).
    ///
    /// # Panics
    /// When `protocol` is neither.
    #[must_use]
    pub fn of(vip: Ipv4Addr, port: u16, protocol: u8) -> Self {
        Self::new(vip, port, Protocol::from_number(protocol).expect("TCP or UDP"))
    }

    /// Adds ready backends, alternately in clusters `c1` and `c2`.
    #[must_use]
    pub fn ready(mut self, backends: &[(Ipv4Addr, u16)]) -> Self {
        let first = self.port.backends.len();
        for (i, b) in backends.iter().enumerate() {
            self.port.backends.push(backend(&format!("c{}", (first + i) % 2 + 1), *b, EndpointState::Ready));
        }
        self
    }

    /// Adds a backend that takes new connections only as the fallback
    /// (a terminating endpoint when no ready one is left).
    #[must_use]
    pub fn terminating(mut self, addr: (Ipv4Addr, u16)) -> Self {
        self.port.backends.push(backend("c1", addr, EndpointState::Terminating));
        self
    }

    /// Adds a draining backend: it keeps its flows and takes no new ones.
    #[must_use]
    pub fn draining(mut self, addr: (Ipv4Addr, u16)) -> Self {
        self.port.draining.push(backend("c1", addr, EndpointState::Terminating));
        self
    }

    /// `ClientIP` session affinity with this timeout.
    #[must_use]
    pub const fn affinity(mut self, timeout_seconds: u32) -> Self {
        self.port.session_affinity_timeout = Some(timeout_seconds);
        self
    }

    /// The import's name (namespace `demo`).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.port.name = name.into();
        self
    }

    /// Its key and desired state, as the translation would produce them.
    #[must_use]
    pub fn into_desired(self) -> (ServicePortKey, DesiredServicePort) {
        (self.key, self.port)
    }
}

fn backend(cluster: &str, (ip, port): (Ipv4Addr, u16), state: EndpointState) -> DesiredBackend {
    DesiredBackend { cluster: cluster.into(), ip, port, state }
}

/// A flow as both of its conntrack entries tell it.
#[derive(Clone, Copy, Debug)]
pub struct FlowView {
    /// The forward entry.
    pub forward: CtValue,
    /// The reply entry's key and value, when it is there.
    pub reply: Option<(CtKey, CtValue)>,
    /// `CT_STATE_*` from both entries' flags.
    pub state: u8,
}

impl FlowView {
    /// The client side of the translated tuple: the source address and port
    /// its packets get.
    #[must_use]
    pub fn translated_source(&self) -> (Ipv4Addr, u16) {
        (ipv4_from_nbo(self.forward.nat_saddr), u16::from_be(self.forward.nat_sport))
    }

    /// The backend the flow goes to.
    #[must_use]
    pub fn backend(&self) -> (Ipv4Addr, u16) {
        (ipv4_from_nbo(self.forward.nat_daddr), u16::from_be(self.forward.nat_dport))
    }
}

/// A loaded object with private maps, programmed through the agent's sync.
pub struct Datapath {
    /// The object.
    pub ebpf: Ebpf,
    /// Its maps, as the sync writes them.
    pub dp: AyaDataplane,
    syncer: Syncer,
    desired: DesiredState,
    config: DatapathConfig,
}

impl Datapath {
    /// The object with the default settings (and [`TABLE_SIZE`]).
    ///
    /// # Panics
    /// When it cannot be loaded (not root, or the verifier said no).
    #[must_use]
    pub fn load() -> Self {
        Self::load_with(DatapathConfig::DEFAULT)
    }

    /// The object with `config` (and [`TABLE_SIZE`]), source validation off:
    /// `test_run` delivers packets on `lo` of the test's namespace, where no
    /// pod address routes. [`Datapath::load_guarded`] keeps it on.
    ///
    /// # Panics
    /// When it cannot be loaded.
    #[must_use]
    pub fn load_with(config: DatapathConfig) -> Self {
        Self::load_guarded(DatapathConfig { guard_flags: 0, ..config })
    }

    /// The object with `config` as it is (and [`TABLE_SIZE`]): with its
    /// `guard_flags`, for tests that run packets in a namespace whose routes
    /// make sources valid or not ([`Datapath::run_on`]).
    ///
    /// # Panics
    /// When it cannot be loaded.
    #[must_use]
    pub fn load_guarded(config: DatapathConfig) -> Self {
        Self::load_options(&LoadOptions {
            config: DatapathConfig { maglev_table_size: TABLE_SIZE, ..config },
            ..LoadOptions::default()
        })
    }

    /// The object loaded with `options`.
    ///
    /// # Panics
    /// When it cannot be loaded.
    #[must_use]
    pub fn load_options(options: &LoadOptions) -> Self {
        let mut ebpf = ebpf::load(options).unwrap_or_else(|e| panic!("load the embedded object (root?): {e:#}"));
        let dp = AyaDataplane::from_ebpf(&mut ebpf).expect("the object has the dataplane's maps");
        Self { ebpf, dp, syncer: Syncer::new(), desired: DesiredState::default(), config: options.config }
    }

    /// The settings the object was loaded with.
    #[must_use]
    pub const fn config(&self) -> &DatapathConfig {
        &self.config
    }

    /// Programs (or reprograms) a service port through the agent's sync.
    ///
    /// # Panics
    /// When the sync reports an error.
    pub fn program(&mut self, port: ServicePort) {
        let (key, desired) = port.into_desired();
        self.desired.services.insert(key, desired);
        self.sync();
    }

    /// Removes a service port through the agent's sync.
    ///
    /// # Panics
    /// When the sync reports an error.
    pub fn remove(&mut self, vip: Ipv4Addr, port: u16, protocol: u8) {
        let protocol = Protocol::from_number(protocol).expect("TCP or UDP");
        self.desired.services.remove(&ServicePortKey { ip: vip, port, protocol });
        self.sync();
    }

    fn sync(&mut self) {
        let outcome = self.syncer.sync(&mut self.dp, &self.desired).expect("sync");
        assert!(outcome.errors.is_empty(), "sync errors: {:?}", outcome.errors);
    }

    /// The id of a programmed service port.
    ///
    /// # Panics
    /// When it is not programmed.
    #[must_use]
    pub fn service_id(&self, vip: Ipv4Addr, port: u16, protocol: u8) -> u32 {
        let key = ServiceKey::new(vip, port, protocol);
        let services = self.dp.services().expect("read services");
        services.into_iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("no entry for {key}")).1.service_id
    }

    /// The backend the agent's table names for a new flow: what the program must pick.
    ///
    /// # Panics
    /// When the port has no table.
    #[must_use]
    pub fn predicted(&self, src: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), protocol: u8) -> (Ipv4Addr, u16) {
        let id = self.service_id(vip.0, vip.1, protocol);
        let table = self.dp.table(id).expect("read table").expect("a table");
        let hash = flow_hash(ipv4_to_nbo(src.0), ipv4_to_nbo(vip.0), src.1.to_be(), vip.1.to_be(), protocol);
        let backend_id = table[maglev_slot(hash, u32::try_from(table.len()).expect("small")) as usize];
        let backends: BTreeMap<u32, _> = self.dp.backends().expect("read backends").into_iter().collect();
        let b = backends[&backend_id];
        (ipv4_from_nbo(b.addr), u16::from_be(b.port))
    }

    /// The `attempt`-th translated source port a new flow from `src` to `vip` tries.
    #[must_use]
    pub fn nat_port(&self, src: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), protocol: u8, attempt: u32) -> u16 {
        let hash = nat_port_hash(ipv4_to_nbo(src.0), ipv4_to_nbo(vip.0), src.1.to_be(), vip.1.to_be(), protocol);
        self.config.nat_port(hash, attempt)
    }

    /// Runs `program` on `frame`: the verdict and the frame that came out.
    ///
    /// # Panics
    /// When `test_run` fails.
    #[must_use]
    pub fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(program, frame)
            .unwrap_or_else(|e| panic!("test_run of {program} on a {}-byte frame: {e}", frame.len()))
    }

    /// As [`Datapath::run`], returning `test_run`'s error.
    ///
    /// # Errors
    /// When the kernel refuses the run (some frames are too short for it).
    ///
    /// # Panics
    /// When the program is missing.
    pub fn try_run(&self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        self.try_run_ctx(program, frame, None)
    }

    /// As [`Datapath::run`], with the packet arriving on interface `ifindex`
    /// of the calling thread's network namespace (`__sk_buff.ifindex`, as
    /// tc ingress sees it); enter the namespace first ([`crate::netns::NetNs::enter`]).
    ///
    /// # Panics
    /// When `test_run` fails.
    #[must_use]
    pub fn run_on(&self, program: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run_ctx(program, frame, Some(&skb_arriving_on(ifindex))).unwrap_or_else(|e| {
            panic!("test_run of {program} on a {}-byte frame arriving on ifindex {ifindex}: {e}", frame.len())
        })
    }

    fn try_run_ctx(
        &self,
        program: &str,
        frame: &[u8],
        ctx: Option<&[u8]>,
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let prog: &SchedClassifier = self.ebpf.program(program).expect("program").try_into().expect("tc program");
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Loads the XDP program `program` (the agent loads the gateway only
    /// for `--xdp-interfaces`).
    ///
    /// # Panics
    /// When the verifier refuses it.
    pub fn load_xdp(&mut self, program: &str) {
        let prog: &mut Xdp = self.ebpf.program_mut(program).expect("program").try_into().expect("an XDP program");
        if prog.fd().is_err() {
            prog.load().unwrap_or_else(|e| panic!("load {program}: {e}"));
        }
    }

    /// Runs the XDP program `program` on `frame` as if it arrived on the
    /// interface `ingress_ifindex` of the calling thread's network namespace
    /// (0: its loopback): the verdict and the frame that came out.
    ///
    /// # Panics
    /// When `test_run` fails or the program is missing.
    #[must_use]
    pub fn run_xdp(&self, program: &str, frame: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
        let prog: &Xdp = self.ebpf.program(program).expect("program").try_into().expect("an XDP program");
        assert!(prog.fd().is_ok(), "{program} is not loaded (load it with `load_xdp`)");
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex (u32 each).
        let frame_len = u32::try_from(frame.len()).expect("a frame");
        let mut md = Vec::with_capacity(24);
        for word in [0, frame_len, 0, ingress_ifindex, 0, 0] {
            md.extend_from_slice(&word.to_ne_bytes());
        }
        // Room for an answer that grows the frame (an ICMP error quoting it).
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test_run of {program} on a {}-byte frame: {e}", frame.len()));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn ct_map(&mut self, protocol: u8) -> HashMap<&mut MapData, CtKey, CtValue> {
        let name = if protocol == proto::TCP { map_names::CONNTRACK_TCP } else { map_names::CONNTRACK_ANY };
        HashMap::try_from(self.ebpf.map_mut(name).expect("conntrack map")).expect("an LRU hash map")
    }

    /// How many instructions the verifier walked to accept `program`: how
    /// close it is to the kernel's limit of 1,000,000.
    ///
    /// # Panics
    /// When the program is missing or the kernel gives no count.
    #[must_use]
    pub fn verified_insns(&self, program: &str) -> u32 {
        let prog: &SchedClassifier = self.ebpf.program(program).expect("program").try_into().expect("tc program");
        prog.info().expect("program info").verified_instruction_count().expect("a verified instruction count")
    }

    /// The conntrack entry at `key`.
    pub fn ct(&mut self, key: &CtKey) -> Option<CtValue> {
        self.ct_map(key.proto).get(key, 0).ok()
    }

    /// Writes the conntrack entry at `key`.
    ///
    /// # Panics
    /// When the kernel refuses.
    pub fn set_ct(&mut self, key: CtKey, value: CtValue) {
        self.ct_map(key.proto).insert(key, value, 0).expect("write a conntrack entry");
    }

    /// Deletes the conntrack entry at `key` (as an LRU eviction would).
    ///
    /// # Panics
    /// When there is no such entry.
    pub fn evict(&mut self, key: &CtKey) {
        self.ct_map(key.proto).remove(key).expect("delete a conntrack entry");
    }

    /// Every entry of the conntrack map of `protocol`.
    pub fn ct_entries(&mut self, protocol: u8) -> Vec<(CtKey, CtValue)> {
        self.ct_map(protocol).iter().filter_map(Result::ok).collect()
    }

    /// Every conntrack entry of both maps.
    pub fn all_ct_entries(&mut self) -> Vec<(CtKey, CtValue)> {
        let mut all = self.ct_entries(proto::TCP);
        all.extend(self.ct_entries(proto::UDP));
        all
    }

    /// The flow from `client` to `vip`, from both of its entries.
    pub fn flow(&mut self, client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), protocol: u8) -> Option<FlowView> {
        let key = forward_key(client, vip, protocol);
        let forward = self.ct(&key)?;
        let reply_key = key.peer(&forward);
        let reply = self.ct(&reply_key).filter(|r| reply_key.peer(r) == key).map(|r| (reply_key, r));
        let flags = forward.own_flags | reply.map_or(forward.peer_flags, |(_, r)| r.own_flags);
        Some(FlowView { forward, reply, state: ct_state(protocol, flags) })
    }

    /// Makes both entries of the flow whose forward entry is at `forward` look idle for `idle_ns`.
    ///
    /// # Panics
    /// When the flow has no forward entry.
    pub fn age_flow(&mut self, forward: &CtKey, idle_ns: u64) {
        let then = monotonic_ns() - idle_ns;
        let mut entry = self.ct(forward).expect("forward entry");
        let reply_key = forward.peer(&entry);
        entry.last_seen_ns = then;
        self.set_ct(*forward, entry);
        if let Some(mut reply) = self.ct(&reply_key) {
            reply.last_seen_ns = then;
            self.set_ct(reply_key, reply);
        }
    }

    /// The session-affinity map.
    pub fn affinity(&mut self) -> &mut HashMap<MapData, AffinityKey, AffinityValue> {
        self.dp.affinity_map()
    }

    /// The counters of a service port, summed over CPUs.
    ///
    /// # Panics
    /// When they cannot be read.
    #[must_use]
    pub fn service_stats(&self, vip: Ipv4Addr, port: u16, protocol: u8) -> ServiceStats {
        let id = self.service_id(vip, port, protocol);
        self.dp.service_stats(id).expect("read counters").expect("counters")
    }

    fn counter(&self, map: &str, index: u32) -> u64 {
        counter_of(&self.ebpf, map, index)
    }

    /// Packets dropped for `reason` by another loaded object (one with pins, say).
    #[must_use]
    pub fn drops_of(ebpf: &Ebpf, reason: DropReason) -> u64 {
        counter_of(ebpf, map_names::DROPS, reason as u32)
    }

    /// Packets dropped for `reason`.
    #[must_use]
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.counter(map_names::DROPS, reason as u32)
    }

    /// Events counted as `stat`.
    #[must_use]
    pub fn stat(&self, stat: Stat) -> u64 {
        self.counter(map_names::STATS, stat as u32)
    }

    /// Packets dropped for any reason.
    #[must_use]
    pub fn total_drops(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.drops(*r)).sum()
    }
}

fn counter_of(ebpf: &Ebpf, map: &str, index: u32) -> u64 {
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map(map).expect("counter map")).expect("per-cpu array");
    array.get(&index, 0).expect("read counter").iter().sum()
}

/// Waits for the datapath's coarse clock to move on (it ticks with the
/// kernel's jiffies, every few ms), so that an entry created next has a
/// later `created_ns` than one created before.
pub fn next_tick() {
    std::thread::sleep(std::time::Duration::from_millis(12));
}

/// `CLOCK_MONOTONIC` in ns: the clock of the conntrack and affinity entries.
///
/// # Panics
/// Never on Linux.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) }, 0);
    u64::try_from(ts.tv_sec).expect("positive") * NS_PER_SEC + u64::try_from(ts.tv_nsec).expect("positive")
}

/// The forward key of a flow from `src` to `vip`.
#[must_use]
pub fn forward_key(src: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), protocol: u8) -> CtKey {
    CtKey {
        saddr: ipv4_to_nbo(src.0),
        daddr: ipv4_to_nbo(vip.0),
        sport: src.1.to_be(),
        dport: vip.1.to_be(),
        proto: protocol,
        dir: CT_DIR_FORWARD,
        pad: [0; 2],
    }
}

/// The reply key of packets from `backend` to `client` (the translated client address and port).
#[must_use]
pub fn reply_key(backend: (Ipv4Addr, u16), client: (Ipv4Addr, u16), protocol: u8) -> CtKey {
    CtKey { dir: CT_DIR_REPLY, ..forward_key(backend, client, protocol) }
}
