//! `mcs-bench`: the benchmarks behind `cargo xtask bench`. Run as root; see
//! `docs/bench/REPORT.md` for the method. Sections:
//! - [`datapath`]: ns per packet with `BPF_PROG_TEST_RUN`, against a no-op floor;
//! - [`e2e`]: client to backend through the node, direct / ours / iptables / nftables;
//! - [`flows`]: the clash sequence and the PMTU upload, ours beside iptables and direct;
//! - [`gateway`]: an agent-less client through a gateway node: XDP, tc, iptables, routing;
//! - [`control`]: cold start, change latency, RSS and map memory of the agent.
mod agent;
mod control;
mod datapath;
mod e2e;
mod flows;
mod gateway;
mod kproxy;
mod mgen;
mod plot;
mod report;
mod stats;

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Parser;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived: every loop checks it and unwinds, so the
/// guards remove namespaces, processes and pins.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// `mcs-bench [--quick] [--out DIR] [--only datapath,e2e,flows,gateway,control]`
/// (`control` is both sources; `control-file` or `control-kube` one).
#[derive(Parser)]
struct Args {
    /// Small sizes and short durations (about a minute).
    #[arg(long)]
    quick: bool,
    /// Where REPORT.md and the charts go.
    #[arg(long)]
    out: PathBuf,
    /// Only these sections (datapath, e2e, flows, gateway, control); all when empty.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let iptables = Command::new("iptables")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "Linux {}, {cpus} CPUs, {iptables}; load average at the start: {}.",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
    for stale in mcs_tests::netns::cleanup_stale() {
        eprintln!("removed namespace {stale} left by an earlier run");
    }
    agent::cleanup_stale_pins();
    let start = Instant::now();
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut results = report::Results {
        quick: args.quick,
        machine: machine(),
        datapath: None,
        e2e: None,
        flows: None,
        gateway: None,
        control: Vec::new(),
        seconds: 0.0,
    };
    if want("datapath") {
        println!("== datapath cost (BPF_PROG_TEST_RUN)");
        let s = if args.quick {
            datapath::Settings { repeat: 1_000_000, runs: 5, single: 20_000, fillers: 1000 }
        } else {
            datapath::Settings { repeat: 5_000_000, runs: 7, single: 200_000, fillers: 1000 }
        };
        results.datapath = Some(datapath::run(s)?);
    }
    if want("e2e") {
        println!("== end to end: direct, ours, socket, iptables, nftables");
        let s = if args.quick {
            e2e::Settings {
                counts: vec![1, 100],
                pings: 2000,
                iperf_secs: 1,
                conn_time: Duration::from_secs(1),
                conn_reps: 3,
            }
        } else {
            e2e::Settings {
                counts: vec![1, 1000, 10_000],
                pings: 20_000,
                iperf_secs: 5,
                conn_time: Duration::from_secs(3),
                conn_reps: 3,
            }
        };
        let samples = e2e::run(&s)?;
        results.e2e = Some((s, samples));
    }
    if want("flows") {
        println!("== flows that used to break: the clash sequence and the PMTU upload");
        let s = if args.quick {
            flows::Settings { clash_requests: 3000, pmtu_secs: 2, pmtu_reps: 1 }
        } else {
            flows::Settings { clash_requests: 3000, pmtu_secs: 5, pmtu_reps: 3 }
        };
        let report = flows::run(&s)?;
        results.flows = Some((s, report));
    }
    if want("gateway") {
        println!("== the gateway: a client without the agent, XDP against tc, iptables and routing");
        let s = if args.quick {
            gateway::Settings { udp_time: Duration::from_secs(1), conn_time: Duration::from_secs(1), reps: 2 }
        } else {
            gateway::Settings { udp_time: Duration::from_secs(3), conn_time: Duration::from_secs(3), reps: 3 }
        };
        results.gateway = Some((s, gateway::run(s)?));
    }
    for source in [control::Source::File, control::Source::Kube] {
        if !(want("control") || want(source.selector())) {
            continue;
        }
        println!("== control plane ({})", source.name());
        let s = control::Settings::for_run(args.quick);
        let r = control::run(s, source)?;
        results.control.push((s, r));
    }
    results.seconds = start.elapsed().as_secs_f64();
    println!();
    print!("{}", report::tables(&results));
    report::write(&results, &args.out)?;
    println!("\nreport: {}", args.out.join("REPORT.md").display());
    Ok(())
}
