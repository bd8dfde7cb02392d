//! Test support for the MCS eBPF dataplane: a fake multi-cluster network built from network
//! namespaces ([`topology`]), namespace guards ([`netns`]), socket clients ([`client`]) and the
//! `mcs-testsrv` identity server binary (`src/bin/mcs-testsrv.rs`).
//!
//! Everything needs root. All addresses are from 198.18.0.0/15 and live only inside namespaces
//! created here; nothing is routed in the root namespace.

pub mod agent;
pub mod client;
pub mod netns;
pub mod packet;
pub mod topology;

use std::path::PathBuf;

/// File name of the identity server binary.
pub const TESTSRV_NAME: &str = "mcs-testsrv";

/// Locates the `mcs-testsrv` binary: next to the current executable, or one directory up
/// (integration tests run from `target/<profile>/deps/`), else `$MCS_TESTSRV`.
///
/// Integration tests may prefer `env!("CARGO_BIN_EXE_mcs-testsrv")`.
///
/// # Panics
/// If it is found nowhere.
#[must_use]
pub fn testsrv_path() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(std::path::Path::to_path_buf);
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join(TESTSRV_NAME);
            if candidate.is_file() {
                return candidate;
            }
            dir = d.parent().map(std::path::Path::to_path_buf);
        }
    }
    if let Some(p) = std::env::var_os("MCS_TESTSRV") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        panic!("MCS_TESTSRV={} is not a file", p.display());
    }
    panic!(
        "{TESTSRV_NAME} not found next to {:?} (build it with `cargo build -p mcs-tests`) and MCS_TESTSRV is unset",
        std::env::current_exe().ok()
    );
}

/// File name of the agent binary.
pub const AGENT_NAME: &str = "mcs-agent";

/// Locates the `mcs-agent` binary the same way as [`testsrv_path`]: next to the
/// current executable, one directory up, else `$MCS_AGENT`.
///
/// # Panics
/// If it is found nowhere (build it with `cargo build -p mcs-agent`).
#[must_use]
pub fn agent_path() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(AGENT_NAME);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    if let Some(p) = std::env::var_os("MCS_AGENT") {
        return PathBuf::from(p);
    }
    panic!(
        "{AGENT_NAME} not found next to {:?} (build it with `cargo build -p mcs-agent`) and MCS_AGENT is unset",
        std::env::current_exe().ok()
    );
}
