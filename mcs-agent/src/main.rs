//! `mcs-agent`: the per-node agent of the MCS eBPF dataplane.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use mcs_agent::{ebpf, run};
use mcs_common::limits;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "mcs-agent", version, about = "eBPF dataplane agent for Kubernetes Multi-Cluster Services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load and attach the datapath and keep it in sync with the manifests.
    Run {
        /// Directory of ServiceImport and EndpointSlice manifests (YAML or JSON).
        #[arg(long)]
        manifests: PathBuf,
        /// Pod-facing interfaces, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        interfaces: Vec<String>,
        /// This cluster's id in the ClusterSet.
        #[arg(long)]
        cluster_id: String,
        /// Directory on bpffs where maps and links are pinned.
        #[arg(long, default_value = ebpf::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// How often to check the manifests and interfaces, in milliseconds.
        #[arg(long, default_value_t = 200)]
        poll_interval_ms: u64,
        /// Entries of the conntrack map (two per connection).
        #[arg(long, default_value_t = limits::CONNTRACK_MAX)]
        conntrack_max: u32,
    },
    /// Detach the programs and remove the pinned maps. Tracked connections are lost.
    Cleanup {
        /// Directory on bpffs where maps and links are pinned.
        #[arg(long, default_value = ebpf::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { manifests, interfaces, cluster_id, pin_path, poll_interval_ms, conntrack_max } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(run::run(run::RunOptions {
                manifests,
                interfaces,
                cluster_id,
                pin_path,
                poll_interval: Duration::from_millis(poll_interval_ms.max(10)),
                conntrack_max,
            }))
        }
        Command::Cleanup { pin_path } => ebpf::cleanup(&pin_path),
    }
}
