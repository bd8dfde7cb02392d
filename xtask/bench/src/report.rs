//! The table (printed) and the report (markdown and PNG charts).
use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};

use crate::stats;

use crate::{
    control, datapath,
    e2e::{PathKind, Sample},
    flows::{self, HOP_MTU, SYN_FAST_RETRANSMIT_MS, SYN_RTO_MS},
    plot::{self, Chart, Series},
};

/// Everything measured in one run.
pub struct Results {
    /// `--quick` or full.
    pub quick: bool,
    /// Machine and run facts.
    pub machine: String,
    /// Section 1.
    pub datapath: Option<datapath::Report>,
    /// Section 2.
    pub e2e: Option<(crate::e2e::Settings, Vec<Sample>)>,
    /// Section 2, the flows that used to break.
    pub flows: Option<(flows::Settings, flows::Report)>,
    /// Section 2, the gateway.
    pub gateway: Option<(crate::gateway::Settings, Vec<crate::gateway::Sample>)>,
    /// Section 3.
    pub control: Vec<(control::Settings, control::Report)>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
}

fn find(samples: &[Sample], path: PathKind, n: u32) -> Option<&Sample> {
    samples.iter().find(|s| s.path == path && s.services == n)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() }
}

/// `[min-max]` of `v`, whole numbers.
fn spread(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    if v.is_empty() { String::new() } else { format!("[{lo:.0}-{hi:.0}]") }
}

/// The per-path end-to-end table.
fn e2e_table(settings: &crate::e2e::Settings, samples: &[Sample]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "### End to end (client pod -> node -> backend pod in another cluster)\n");
    let _ = writeln!(
        t,
        "One row per path and service count, each in a fresh topology. RR: request/response round trips on one \
         held TCP connection. Gbit/s: one iperf3 stream. New conn/s: connect, read the greeting, close with a \
         FIN (client first, `tcp_tw_reuse=1`, default port range); median of {} repetitions of {:?} each, \
         [min-max] beside it; for every path but direct, each repetition runs right after one to the pod IP \
         from the same client in the same topology, and `conn/s / direct` is the median of those pairs' \
         ratios. The other `/ direct` ratios are to the direct row of the same service count (its own \
         topology).\n",
        settings.conn_reps, settings.conn_time
    );
    let _ = writeln!(
        t,
        "| services | path | RR p50 us | RR p99 us | Gbit/s | new conn/s [min-max] | conn p50 us | conn p99 us | \
         conn errors (direct beside) | p50 / direct | p99 / direct | Gbit/s / direct | conn/s / direct (same run) | ready in s |"
    );
    let _ = writeln!(
        t,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for s in samples {
        let direct = find(samples, PathKind::Direct, s.services);
        let d = |f: fn(&Sample) -> f64| direct.map_or_else(|| "-".into(), |dd| ratio(f(s), f(dd)));
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.0} {} | {:.0} | {:.0} | {} ({}) | {} | {} | {} | {} | {:.2} |",
            s.services,
            s.path.name(),
            s.lat_p50,
            s.lat_p99,
            s.gbps,
            s.conn_rate(),
            spread(&s.conn),
            s.conn_p50,
            s.conn_p99,
            s.conn_errors,
            s.conn_direct_errors,
            d(|x| x.lat_p50),
            d(|x| x.lat_p99),
            d(|x| x.gbps),
            s.conn_ratio().map_or_else(|| "-".into(), |x| format!("{x:.2}")),
            s.load_secs,
        );
    }
    let _ = writeln!(t);
    let costs: Vec<_> = samples.iter().filter_map(|s| s.connect.map(|c| (s.services, c))).collect();
    if !costs.is_empty() {
        let _ = writeln!(
            t,
            "Cost of one UDP socket opened, `connect()`ed and closed, as a client does per query (no packet is \
             sent), ns, median of 9 batches, in the socket row's topology: without the hook (the process outside \
             the cgroup the programs are attached to), with it for the pod IP (no service: one lookup), and with \
             it translating a ClusterSetIP (lookup, Maglev slot, a reverse entry for the new socket, address \
             rewritten). The three differ only in the hook.\n"
        );
        let _ = writeln!(t, "| services | no hook | hook, not a service | hook, translated | hook cost (translated) |");
        let _ = writeln!(t, "| ---: | ---: | ---: | ---: | ---: |");
        for (n, c) in costs {
            let _ = writeln!(
                t,
                "| {n} | {:.0} | {:.0} | {:.0} | {:+.0} |",
                c.no_hook,
                c.hook_not_a_service,
                c.hook_translated,
                c.hook_translated - c.no_hook
            );
        }
        let _ = writeln!(t);
    }
    t
}

/// The clash sequence and the PMTU upload.
fn flow_tables(settings: &flows::Settings, f: &flows::Report) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "### The clash sequence (ab, serial new connections, ours beside iptables)\n");
    let _ = writeln!(
        t,
        "`ab -c 1 -n {}` from one client pod with `tcp_tw_reuse=1`, in the order of the rows: to the pod IP, the \
         ClusterSetIP, the pod IP, the ClusterSetIP. Ours and kube-proxy's iptables shape each in a fresh topology \
         (nginx on the backend pod), run alternately. Each cell: requests per second (ab's mean), failed requests, \
         the 99th percentile and the longest request in ms, then the client's SYN retransmits and the SYNs the \
         backend refused in TIME_WAIT (a translated tuple reused with older timestamps) during the run. A refused \
         SYN costs a retransmit after 2 jiffies (a request of {SYN_FAST_RETRANSMIT_MS} ms or more); a lost one the \
         initial RTO ({SYN_RTO_MS} ms). A run that ab gave up on shows how many requests completed.\n",
        settings.clash_requests
    );
    let _ = writeln!(
        t,
        "| run | to | ours: req/s, failed, p99 / longest ms, SYN retransmits / refused | iptables: the same | ours / \
         iptables |"
    );
    let _ = writeln!(t, "| ---: | --- | --- | --- | ---: |");
    let cell = |a: &mcs_tests::apps::AbReport, (syn, refused): (u64, u64)| {
        let mut c = format!("{:.0}, {}, {} / {}, {syn} / {refused}", a.rate, a.failed, a.p99_ms, a.longest_ms);
        if a.clean().is_err() {
            let _ = write!(c, " (only {} of {} completed)", a.complete, a.requested);
        }
        c
    };
    for (i, run) in f.clash.iter().enumerate() {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            if run.through_vip { "ClusterSetIP" } else { "pod IP" },
            cell(&run.ours, (run.syn_retransmits.0, run.refused.0)),
            cell(&run.iptables, (run.syn_retransmits.1, run.refused.1)),
            ratio(run.ours.rate, run.iptables.rate)
        );
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "### The PMTU upload (iperf3 across a {HOP_MTU}-byte hop)\n");
    let _ = writeln!(
        t,
        "One iperf3 stream for {} s from the client pod (MTU 1500) to the backend pod, across fabric links of MTU \
         {HOP_MTU} between the two nodes: the client's node answers full-size segments with ICMP fragmentation \
         needed, which the client must receive about its own connection. Median Gbit/s of {} runs [min-max]; \
         each run through the ClusterSetIP follows one to the pod IP from the same client in the same topology \
         (ours and iptables have one each), and the ratio is of those medians.\n",
        settings.pmtu_secs, settings.pmtu_reps
    );
    let _ = writeln!(
        t,
        "| path | Gbit/s through the ClusterSetIP | Gbit/s to the pod IP, same topology | ratio | failed runs |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | --- |");
    for (name, side) in [("ours", &f.pmtu_ours), ("iptables", &f.pmtu_iptables)] {
        let (through, direct) = (stats::median(&side.through), stats::median(&side.direct));
        let _ = writeln!(
            t,
            "| {name} | {through:.2} {} | {direct:.2} {} | {} | {} |",
            spread1(&side.through),
            spread1(&side.direct),
            ratio(through, direct),
            if side.errors.is_empty() { "none".to_owned() } else { side.errors.join("; ") }
        );
    }
    let _ = writeln!(t);
    t
}

/// `[min-max]` of `v`, one decimal.
fn spread1(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    if v.len() < 2 { String::new() } else { format!("[{lo:.1}-{hi:.1}]") }
}

/// The gateway's table: each path beside routing in its own topology.
fn gateway_table(s: &crate::gateway::Settings, samples: &[crate::gateway::Sample]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "### The gateway (a client without the agent, through a gateway node)\n");
    let _ = writeln!(
        t,
        "External client -> gateway node's uplink -> fabric -> remote node -> backend pod, each path in a fresh \
         topology. UDP: 18-byte datagrams (60-byte frames) from one socket with `sendmmsg` for {:.0} s, counted as \
         delivered in the backend pod; sent beside. New conn/s: connect, read the greeting, close with a FIN, for \
         {:.0} s. {} repetitions, each right after the same to the pod IP in the same topology; figures are medians, \
         `/ routing` the median of those pairs' ratios.\n",
        s.udp_time.as_secs_f64(),
        s.conn_time.as_secs_f64(),
        s.reps
    );
    let _ = writeln!(
        t,
        "| path | UDP pkt/s delivered | UDP / routing | UDP pkt/s sent | new conn/s | conn / routing | conn errors (routing beside) |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for g in samples {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {} ({}) |",
            g.path.name(),
            stats::median(&g.udp_pps),
            g.udp_ratio(),
            stats::median(&g.udp_sent_pps),
            stats::median(&g.conn),
            g.conn_ratio(),
            g.conn_errors.0,
            g.conn_errors.1
        );
    }
    let _ = writeln!(t);
    t
}

/// The tables, in markdown (also printed as is: markdown tables read fine in a terminal).
#[must_use]
pub fn tables(r: &Results) -> String {
    let mut t = String::new();
    if let Some(d) = &r.datapath {
        let _ = writeln!(t, "### Datapath cost (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(t, "| case | method | ns/packet (median) | ratio to floor | runs / spread |");
        let _ = writeln!(t, "| --- | --- | ---: | ---: | --- |");
        for c in &d.cases {
            let _ = writeln!(t, "| {} | {} | {:.1} | {:.2} | {} |", c.name, c.method, c.ns, c.ratio, c.spread);
        }
        let _ = writeln!(t);
    }
    if let Some((settings, samples)) = &r.e2e {
        t.push_str(&e2e_table(settings, samples));
    }
    if let Some((settings, f)) = &r.flows {
        t.push_str(&flow_tables(settings, f));
    }
    if let Some((settings, g)) = &r.gateway {
        t.push_str(&gateway_table(settings, g));
    }
    for (s, c) in &r.control {
        let (p50, p99) = c.change();
        let (l50, l99) = c.change_log();
        let _ = writeln!(t, "### Control plane ({})\n", c.source.name());
        let _ = writeln!(t, "| metric | value |");
        let _ = writeln!(t, "| --- | ---: |");
        let _ = writeln!(
            t,
            "| set | {} imports x {} ports x {} clusters x {} endpoints |",
            s.imports, s.ports, s.clusters, s.per_cluster
        );
        let _ = writeln!(
            t,
            "| first `synced` line | {:.2} s ({} of {} service ports, {} errors) |",
            c.first_sync_secs, c.first_sync.0, c.expected_ports, c.first_sync.1
        );
        let _ = writeln!(
            t,
            "| cold start to fully programmed | {} |",
            c.cold_start_secs.map_or_else(|| "not reached (see errors)".to_owned(), |x| format!("{x:.2} s"))
        );
        let _ = writeln!(t, "| map entries after cold start | {} services, {} backends |", c.entries.0, c.entries.1);
        let _ = writeln!(
            t,
            "| one EndpointSlice change -> datapath | p50 {p50:.1} ms, p99 {p99:.1} ms ({} changes, {} not seen) |",
            c.change_ms.len(),
            c.change_timeouts
        );
        let _ = writeln!(t, "| one change -> `synced` log line | p50 {l50:.1} ms, p99 {l99:.1} ms |");
        let (ct, cs) = c.change_phases();
        let _ = writeln!(
            t,
            "| agent's own time per change (median) | translate {ct:.1} ms, sync {cs:.1} ms (cold start: translate \
             {:.1} ms, sync {:.1} ms) |",
            c.cold_phases.0, c.cold_phases.1
        );
        let fulls = &c.full_resyncs;
        let (ft, fs) = (
            stats::median(&fulls.iter().map(|p| p.0).collect::<Vec<_>>()),
            stats::median(&fulls.iter().map(|p| p.1).collect::<Vec<_>>()),
        );
        let resyncs = if fulls.is_empty() {
            "none".to_owned()
        } else {
            format!("{} (median: translate {ft:.1} ms, sync {fs:.1} ms)", fulls.len())
        };
        let _ = writeln!(t, "| full resyncs (re-reading the maps) during the changes | {resyncs} |");
        let audits = if c.audits.is_empty() {
            "none ended".to_owned()
        } else {
            let longest = c.audits.iter().map(|a| a.0).fold(0.0_f64, f64::max);
            let total = stats::median(&c.audits.iter().map(|a| a.1).collect::<Vec<_>>());
            format!(
                "{} rounds; longest part {longest:.1} ms; a round's parts together {total:.1} ms (median); {} drifts",
                c.audits.len(),
                c.drifts
            )
        };
        let _ = writeln!(
            t,
            "| audit rounds (the periodic resync: 128 parts over `--max-sync-interval-ms {}`) during the changes | {audits} |",
            crate::control::AUDIT_ROUND.as_millis()
        );
        let _ = writeln!(t, "| map capacities given | `{}` |", c.capacities);
        let _ = writeln!(t, "| agent peak RSS (VmHWM) | {:.1} MiB |", c.peak_rss_mib);
        let maps: Vec<String> = c
            .memlock
            .iter()
            .map(|(k, v)| format!("{k} {:.1}", f64::from(u32::try_from(*v / 1024).unwrap_or(u32::MAX)) / 1024.0))
            .collect();
        let _ = writeln!(t, "| maps' kernel memory (memlock) | {:.1} MiB ({} MiB) |", c.memlock_mib(), maps.join(", "));
        let _ = writeln!(t);
    }
    t.push_str(&targets(r));
    t
}

/// The targets against the measured figures.
fn targets(r: &Results) -> String {
    let mut t = String::from("### Targets\n\n| target | measured | met |\n| --- | --- | --- |\n");
    let yes = |b: bool| if b { "yes" } else { "no" };
    if let Some((s, samples)) = &r.e2e {
        let (first, last) = (s.counts.first().copied().unwrap_or(1), s.counts.last().copied().unwrap_or(1));
        let mut worst = (0.0f64, 0.0f64);
        for &n in &s.counts {
            if let (Some(o), Some(d)) = (find(samples, PathKind::Ours, n), find(samples, PathKind::Direct, n)) {
                worst.0 = worst.0.max(o.lat_p50 / d.lat_p50 - 1.0);
                worst.1 = worst.1.max(1.0 - o.gbps / d.gbps);
            }
        }
        let _ = writeln!(
            t,
            "| established latency within 5% of direct | worst p50 excess {:+.1}% | {} |",
            worst.0 * 100.0,
            yes(worst.0 <= 0.05)
        );
        let _ = writeln!(
            t,
            "| throughput within 5% of direct | worst shortfall {:.1}% | {} |",
            worst.1 * 100.0,
            yes(worst.1 <= 0.05)
        );
        for path in [PathKind::Ours, PathKind::Iptables, PathKind::Nftables] {
            if let (Some(a), Some(b)) = (find(samples, path, first), find(samples, path, last)) {
                let rate = b.conn_rate() / a.conn_rate() - 1.0;
                let conn_lat = b.conn_p50 / a.conn_p50 - 1.0;
                let _ = writeln!(
                    t,
                    "| new-connection rate and latency flat {first} -> {last} services ({}) | rate {:+.1}%, conn p50 \
                     {:+.1}%, RR p50 {:+.1}% | {} |",
                    path.name(),
                    rate * 100.0,
                    conn_lat * 100.0,
                    (b.lat_p50 / a.lat_p50 - 1.0) * 100.0,
                    if path == PathKind::Ours {
                        yes(rate.abs() <= 0.05 && conn_lat.abs() <= 0.05)
                    } else {
                        "(reference)"
                    }
                );
            }
        }
    }
    if let Some((s, samples)) = &r.e2e {
        let first = s.counts.first().copied().unwrap_or(1);
        let same_run = |path| find(samples, path, first).and_then(Sample::conn_ratio);
        let show = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}x"));
        let _ = writeln!(
            t,
            "| new connections (FIN close) through the ClusterSetIP vs the pod IP, same run, {first} service(s) | \
             ours {}, socket {}, iptables {}, nftables {} | (reference) |",
            show(same_run(PathKind::Ours)),
            show(same_run(PathKind::Socket)),
            show(same_run(PathKind::Iptables)),
            show(same_run(PathKind::Nftables))
        );
    }
    if let Some((_, f)) = &r.flows {
        t.push_str(&flow_targets(f));
    }
    if let Some(d) = &r.datapath
        && let Some(c) = d.cases.iter().find(|c| c.name == "established flow")
    {
        let _ = writeln!(t, "| established packet <= 2x the no-op floor | {:.2}x | {} |", c.ratio, yes(c.ratio <= 2.0));
    }
    for (s, c) in &r.control {
        t.push_str(&control_targets(s, c));
    }
    t
}

/// Issue 11's targets for one source, and in brackets its looser done-when
/// bounds.
fn control_targets(s: &control::Settings, c: &control::Report) -> String {
    let mut t = String::new();
    let met = |target: bool, bound: bool| match (target, bound) {
        (true, _) => "yes",
        (false, true) => "no (done-when: yes)",
        (false, false) => "no",
    };
    {
        let source = c.source.name();
        let cold = c.cold_start_secs;
        let _ = writeln!(
            t,
            "| {source}: cold start of {} imports < 2 s (done-when: 5 s) | {} | {} |",
            s.imports,
            cold.map_or_else(|| "not reached".to_owned(), |x| format!("{x:.2} s")),
            met(cold.is_some_and(|x| x < 2.0), cold.is_some_and(|x| x < 5.0))
        );
        let (p99, own) = (c.change().1, c.agent_p99());
        let seen = !c.change_ms.is_empty() && c.change_timeouts == 0;
        let _ = writeln!(
            t,
            "| {source}: one change to the datapath < 10 ms at p99, agent-side (done-when: 50 ms seen by a \
             connection) | agent {own:.1} ms, end to end {p99:.1} ms | {} |",
            met(seen && own < 10.0, seen && p99 < 50.0)
        );
        let rss = c.peak_rss_mib;
        let _ = writeln!(
            t,
            "| {source}: agent peak RSS < 150 MiB (done-when: 300 MiB) | {rss:.1} MiB | {} |",
            met(rss < 150.0, rss < 300.0)
        );
        let maps = c.memlock_mib();
        let _ = writeln!(
            t,
            "| {source}: BPF map memory < 600 MiB (done-when: 1 GiB) | {maps:.1} MiB | {} |",
            met(maps < 600.0, maps < 1024.0)
        );
    }
    t
}

/// The targets of the flows that used to break.
fn flow_targets(f: &flows::Report) -> String {
    let mut t = String::new();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let worst = f
        .clash
        .iter()
        .filter(|run| run.through_vip)
        .map(|run| run.ours.rate / run.iptables.rate.max(1.0))
        .fold(f64::INFINITY, f64::min);
    let failed: u32 = f.clash.iter().map(|run| run.ours.failed + run.ours.requested - run.ours.complete).sum();
    let slowest = f.clash.iter().map(|run| run.ours.longest_ms).max().unwrap_or(0);
    let p99 = f.clash.iter().map(|run| run.ours.p99_ms).max().unwrap_or(0);
    let _ = writeln!(
        t,
        "| clash sequence: no failure, no request >= {SYN_RTO_MS} ms, p99 < {SYN_FAST_RETRANSMIT_MS} ms, every \
         ClusterSetIP run >= 0.8x iptables | worst ClusterSetIP run {worst:.2}x iptables, {failed} requests failed \
         or not completed, worst p99 {p99} ms, longest {slowest} ms | {} |",
        yes(f.clash_met(0.8))
    );
    let (through, direct) = (stats::median(&f.pmtu_ours.through), stats::median(&f.pmtu_ours.direct));
    let share = if direct > 0.0 { through / direct } else { 0.0 };
    let _ = writeln!(
        t,
        "| upload across a {HOP_MTU}-byte hop through the ClusterSetIP >= 0.5x direct | {through:.2} of \
         {direct:.2} Gbit/s ({share:.2}x) | {} |",
        yes(share >= 0.5)
    );
    t
}

fn charts(r: &Results, out: &Path) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    if let Some(d) = &r.datapath {
        let chart = Chart {
            title: "Datapath cost per packet (BPF_PROG_TEST_RUN, median)",
            x_label: "case (R = kernel repeat >= 10^6, S = one packet per run)",
            y_label: "ns per packet",
            categories: d
                .cases
                .iter()
                .map(|c| {
                    let short = match c.name {
                        n if n.starts_with("no-op") => "no-op",
                        n if n.starts_with("non-service") => "non-svc",
                        n if n.starts_with("established") => "estab.",
                        n if n.starts_with("reply") => "reply",
                        _ => "new flow",
                    };
                    format!("{short} {}", if c.method == "repeat" { "R" } else { "S" })
                })
                .collect(),
            series: vec![Series { name: "ns/packet".into(), values: d.cases.iter().map(|c| Some(c.ns)).collect() }],
        };
        plot::save(&plot::bars(&chart)?, &out.join("datapath.svg"))?;
        files.push(("datapath.svg".into(), "Datapath cost per packet".into()));
    }
    if let Some((s, samples)) = &r.e2e {
        let categories: Vec<String> = s.counts.iter().map(|n| format!("{n}")).collect();
        let series = |f: fn(&Sample) -> f64| -> Vec<Series> {
            PathKind::ALL
                .iter()
                .map(|p| Series {
                    name: p.name().into(),
                    values: s.counts.iter().map(|n| find(samples, *p, *n).map(f)).collect(),
                })
                .collect()
        };
        let x = "services loaded (the measured one added last)";
        for (file, title, y, f) in [
            (
                "latency_p50.svg",
                "TCP request/response latency, p50",
                "microseconds",
                (|s: &Sample| s.lat_p50) as fn(&Sample) -> f64,
            ),
            ("latency_p99.svg", "TCP request/response latency, p99", "microseconds", |s: &Sample| s.lat_p99),
            ("conn_rate.svg", "New connections per second (FIN close, median)", "connections/s", |s: &Sample| {
                s.conn_rate()
            }),
            ("conn_latency.svg", "New connection: connect + first byte, p50", "microseconds", |s: &Sample| s.conn_p50),
            ("throughput.svg", "TCP throughput (iperf3, one stream)", "Gbit/s", |s: &Sample| s.gbps),
        ] {
            let chart = Chart { title, x_label: x, y_label: y, categories: categories.clone(), series: series(f) };
            plot::save(&plot::lines(&chart)?, &out.join(file))?;
            files.push((file.into(), title.into()));
        }
    }
    Ok(files)
}

const METHOD: &str = "## Method

**Datapath cost.** The eBPF object is loaded privately (nothing pinned or attached) and its maps are programmed \
through the agent's own translation and sync from generated manifests (1,000 services beside the measured ones), so \
the benchmark does not depend on the services map's layout. `BPF_PROG_TEST_RUN` with the kernel's `repeat` runs the \
program again on the same skb, and the next run sees the previous run's rewrite: a packet to a ClusterSetIP would be \
translated once and then measured as ordinary traffic to its backend. The established and reply cases therefore use \
a service whose only backend is its own ClusterSetIP:port: DNAT and reverse NAT do all their lookups, helper calls \
and writes, and the packet comes out as it went in, so every repetition is alike. After every run the per-CPU \
counters are checked: each repetition counted as established (or reverse-NATed), and the output packet equals the \
input. The first packet of a new flow cannot be repeated (after one run the flow exists), so it is measured one \
packet per syscall, each from a new source address and port, with the kernel's own timing of that run; the floor \
and the established packet are measured the same single-shot way, and the new flow's ratio is to the single-shot \
floor. Figures are the kernel's ns per repetition (integer ns), median over the runs.

**End to end.** Every (path, service count) gets a fresh topology from the test harness: the client pod, its node, \
a fabric bridge, and a node and backend pod of a second cluster; all in network namespaces, all addresses in \
198.18.0.0/15. Traffic goes client pod -> node (where the translation happens) -> fabric -> remote node -> backend \
pod. Paths: *direct* (the pod IP, nothing loaded), *ours* (the real `mcs-agent run --source file`, attached to the \
client pod's interface, programmed from N ServiceImports), *iptables* (kube-proxy's `nat` shape: KUBE-SERVICES -> \
KUBE-SVC-* with `statistic --mode random` -> KUBE-SEP-* DNAT, KUBE-MARK-MASQ/KUBE-POSTROUTING; loaded with one \
`iptables-restore`, which is the nf_tables backend on this machine), *nftables* (kube-proxy's nftables shape: the \
`service-ips` verdict map -> service chain with `numgen random mod n vmap` -> endpoint chain DNAT; one `nft -f`). \
The N-1 other services have two endpoints each; the measured service is added last and has one endpoint (the \
backend pod), because iperf3's control and data connections must reach the same server. Latency: request/response \
round trips on one TCP connection to `mcs-testsrv` (echo mode) from a Rust client, after a 10% warm-up. Throughput: \
`iperf3 -c` one stream. New connections: connect, read the greeting, close the way applications do (the client's \
FIN first, so the client keeps TIME_WAIT; `tcp_tw_reuse=1` lets it reuse those ports; the port range stays Linux's \
default 32768-60999), in a loop for a fixed time. For every path but direct, each repetition of that loop to the \
ClusterSetIP comes right after one to the pod IP from the same client, so a client's direct and translated flows \
share its ports as they do in real pods, and the ratio of the two is taken within the same topology and minute. \
Rates are the median over the repetitions, with the smallest and largest beside it. 'ready in s' is from starting \
to load the path's state to the first answer through it.

**Flows that used to break.** Two more rows, each with kube-proxy's iptables shape (the same generator as above, \
one service) beside ours and the pod IP beside both. *The clash sequence*: `ab -c 1 -n N` (HTTP/1.0, a new \
connection per request, closed by nginx on the backend pod) to the pod IP, then the ClusterSetIP, then the pod IP, \
then the ClusterSetIP, from one client with `tcp_tw_reuse=1`; ours and iptables in two topologies built side by \
side and run alternately. Before the runs one page is fetched through the ClusterSetIP from a port below the \
ephemeral range, so no port ab will get has been used through it. A translated flow whose post-NAT tuple equals an \
earlier flow's, from another client port, meets the backend's TIME_WAIT with unrelated timestamps: the backend \
refuses the SYN (PAWS) and the client retransmits it after 2 jiffies; a direct flow whose tuple equals a translated \
one's has its replies rewritten (ab gives up on the run). The client's SYN retransmits and the backend's refusals \
are read from the namespaces' TCP counters around each run. *The PMTU upload*: one \
iperf3 stream across fabric links of MTU 1400 between the two nodes (the client pod keeps 1500, `tcp_mtu_probing=0`), \
so it only works when the ICMP fragmentation-needed of the client's node reaches the client about its own \
connection; direct then through the ClusterSetIP, repeated, in the topology of each path.

**Control plane.** `mcs-agent run --source file --poll-interval-ms 10` on a veth in its own namespace, reading \
generated JSON manifests. Cold start: spawn to the first `synced` log line reporting every service port with no \
errors; the pinned maps' keys are then walked (layout-free) and counted. One change: the probe import's \
EndpointSlice is rewritten on disk with a new endpoint address (written aside, renamed into place); the latency ends \
when a private copy of the programs, loaded over the agent's pinned maps, translates a new SYN to the new address \
(probed every 200 us with `BPF_PROG_TEST_RUN`, fresh source port each time). The arrival of the next `synced` line is \
reported too. Peak RSS is the agent's VmHWM at the end; the maps' memory is the `memlock` of every map pinned under \
the agent's directory or held by the agent (bpftool, fdinfo), the flat Maglev array (the inner map of `MCS_MAGLEV`) \
counted once. The Kubernetes source runs the same set through `mcs-agent run --source kubernetes --kubeconfig` \
against the tests' fake API server (`mcs_tests::fakeapi`, list then watch; the agent lists in pages of 500, as \
kube-rs does against a real API server, and the server answers every page at the first one's version), listening on the \
loopback of the agent's namespace and loaded with the same objects before the agent starts; a change is one \
EndpointSlice replaced through it (one watch event). Both agents get `--max-sync-interval-ms 8000` instead of the \
default 30 s: the audit (the periodic resync, 128 parts a round) then runs its parts every 62.5 ms, four times as \
often as by default, so the changes meet more of them and rounds end while the changes run; the audit row gives the \
rounds that ended, the longest part of any of them, and a round's parts together, from the agent's `maps audited` \
log lines, and the drifts it reported (none are expected: nothing else writes the maps).

Benchmarks are measurements, not tests: nothing asserts on speed. The machine is shared (2 cores, other builds \
running), so expect noise; compare the ratios, which come from the same run.
";

/// Writes `REPORT.md` and the charts into `out`.
///
/// # Errors
/// When a file cannot be written.
pub fn write(r: &Results, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = charts(r, out)?;
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Produced by `cargo xtask bench{}` in {:.0} s. {}\n",
        if r.quick { " --quick" } else { "" },
        r.seconds,
        r.machine
    );
    if let Some(d) = &r.datapath {
        let _ = writeln!(md, "Datapath setup: {}\n", d.setup);
    }
    for (_, c) in &r.control {
        let _ = writeln!(md, "Control-plane set ({}): {}\n", c.source.name(), c.setup);
    }
    md.push_str("## Results\n\n");
    md.push_str(&tables(r));
    md.push_str("\n## Charts\n\n");
    for (file, title) in &files {
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    md.push_str(METHOD);
    let path = out.join("REPORT.md");
    fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
}
