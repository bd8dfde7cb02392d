//! Builds `tests/ebpf-probe` (the tests' own tc program, see `src/probe.rs`)
//! for the BPF target into `OUT_DIR`, where `src/probe.rs` embeds it, the way
//! `mcs-agent/build.rs` builds the datapath.
//!
//! `AYA_BUILD_SKIP=1` skips the BPF build (for `cargo clippy` or `cargo check`
//! on a machine without bpf-linker): an empty object is embedded instead, and
//! the one test that loads the probe says so when it runs.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("mcs-tests-probe");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }
    let probe_dir = manifest_dir.join("ebpf-probe");
    let probe_dir = probe_dir.to_str().context("tests/ebpf-probe path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "mcs-tests-probe", root_dir: probe_dir, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building tests/ebpf-probe for the BPF target (is bpf-linker installed? run `cargo xtask setup`)")
}
