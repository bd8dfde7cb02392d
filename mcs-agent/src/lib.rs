//! The MCS agent: reads ServiceImports and EndpointSlices, translates them into
//! the eBPF maps, and keeps the maps in sync. Its layers, each importing only
//! the ones below it:
//!
//! 1. [`cli`]: the command line (clap), turned into plain configuration;
//! 2. the commands: [`run`] (the agent's loop), [`plan`] (the dataplane the
//!    agent would program), [`inspect`] (what the pinned maps hold),
//!    [`status`] (one screen on a running agent), [`monitor`] (its
//!    datapath events as they happen), and [`output`], the formats they
//!    print;
//! 3. what the loop drives: [`source`] (the file source over [`manifests`],
//!    and the Kubernetes source), [`metrics`], [`events`] (the datapath's
//!    events, to the log and to `monitor`), [`interfaces`], and the kernel
//!    side: [`dataplane`] (the maps through aya) and [`ebpf`] (loading,
//!    pinning and attaching the embedded object);
//! 4. the pure core, `mcs-core`, re-exported here: [`k8s`], [`translate`],
//!    [`maglev`] and [`sync`].
#![warn(missing_docs, unreachable_pub)]

pub mod cli;
pub mod dataplane;
pub mod ebpf;
pub mod events;
pub mod inspect;
pub mod interfaces;
pub mod manifests;
pub mod metrics;
pub mod monitor;
pub mod output;
pub mod plan;
pub mod run;
pub mod sockets;
pub mod source;
pub mod status;

pub use mcs_core::{k8s, maglev, sync, translate};
