//! `mcs-agent run`: load the datapath, attach it, and keep the maps in sync
//! with a directory of manifests.
//!
//! The watcher only notices changes (a fingerprint of the directory); one
//! sync translates everything and writes the difference. On SIGTERM or SIGINT
//! the agent stops and leaves the datapath in place: maps and TCX links stay
//! pinned, so traffic keeps flowing until a new agent takes over or
//! `mcs-agent cleanup` removes them.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    dataplane::AyaDataplane,
    ebpf::{self, AttachMode, LoadOptions},
    manifests,
    sync::Syncer,
    translate::{self, Config},
};

/// Options of `mcs-agent run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Directory of ServiceImport and EndpointSlice manifests.
    pub manifests: PathBuf,
    /// Pod-facing interfaces to attach to.
    pub interfaces: Vec<String>,
    /// This cluster's id.
    pub cluster_id: String,
    /// Where maps and links are pinned.
    pub pin_path: PathBuf,
    /// How often the directory and the interfaces are checked.
    pub poll_interval: Duration,
    /// Entries of the conntrack map.
    pub conntrack_max: u32,
}

/// What identifies the directory's content: names, sizes and modification times.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Result<Fingerprint> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading manifest directory {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        entries.push((entry.path(), meta.len(), meta.modified().ok()));
    }
    entries.sort();
    Ok(entries)
}

fn ifindex(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Runs the agent until SIGTERM or SIGINT.
///
/// # Errors
/// When the datapath cannot be loaded. Errors after that (a bad manifest, a
/// failed write, a missing interface) are logged and retried, never fatal.
pub async fn run(options: RunOptions) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let mut ebpf =
        ebpf::load(&LoadOptions { pin_path: Some(options.pin_path.clone()), conntrack_max: options.conntrack_max })?;
    let mut dataplane = AyaDataplane::from_ebpf(&mut ebpf)?;
    let mode = AttachMode::detect();
    info!(pin_path = %options.pin_path.display(), ?mode, "datapath loaded");

    let config = Config { cluster_id: options.cluster_id.clone() };
    let mut syncer = Syncer::new();
    let mut attached: BTreeMap<String, u32> = BTreeMap::new();
    let mut missing_logged: BTreeSet<String> = BTreeSet::new();
    let mut last_fingerprint: Option<Fingerprint> = None;
    let mut last_problems: Vec<String> = Vec::new();
    let mut retry = false;
    let mut ticker = tokio::time::interval(options.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; maps and links stay pinned"); break; }
            _ = int.recv() => { info!("SIGINT: stopping; maps and links stay pinned"); break; }
            _ = ticker.tick() => {}
        }

        for name in &options.interfaces {
            let Some(index) = ifindex(name) else {
                if missing_logged.insert(name.clone()) {
                    warn!(interface = %name, "interface not found; will attach when it appears");
                }
                attached.remove(name);
                continue;
            };
            missing_logged.remove(name);
            if attached.get(name) == Some(&index) {
                continue;
            }
            match ebpf::attach(&mut ebpf, name, Some(&options.pin_path), mode) {
                Ok(()) => {
                    attached.insert(name.clone(), index);
                }
                Err(e) => error!(interface = %name, error = %format!("{e:#}"), "attach failed; will retry"),
            }
        }

        let current = match fingerprint(&options.manifests) {
            Ok(f) => f,
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot read manifests; keeping the dataplane as it is");
                continue;
            }
        };
        if !retry && last_fingerprint.as_ref() == Some(&current) {
            continue;
        }
        let (inputs, load_errors) = match manifests::load_dir(&options.manifests) {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot read manifests; keeping the dataplane as it is");
                continue;
            }
        };
        let (desired, report) = translate::translate(&inputs.imports, &inputs.slices, &config);
        let mut problems: Vec<String> = load_errors.iter().map(ToString::to_string).collect();
        problems.extend(report.skipped.iter().map(|s| {
            format!("ServiceImport {}/{} skipped ({}): {}", s.namespace, s.name, s.reason.as_str(), s.message)
        }));
        if problems != last_problems {
            for problem in &problems {
                warn!("{problem}");
            }
            last_problems = problems;
        }
        match syncer.sync(&mut dataplane, &desired) {
            Ok(outcome) => {
                retry = !outcome.errors.is_empty();
                info!(
                    service_ports = desired.services.len(),
                    writes = outcome.writes,
                    full = outcome.full,
                    errors = outcome.errors.len(),
                    "synced"
                );
            }
            Err(e) => {
                retry = true;
                syncer.invalidate();
                error!(error = %format!("{e:#}"), "sync failed; the next one is a full one");
            }
        }
        last_fingerprint = Some(current);
    }
    Ok(())
}
