//! Builds `mcs-ebpf` for the BPF target and leaves the object in `OUT_DIR`, where
//! `src/ebpf.rs` embeds it: one self-contained agent binary is all a node needs.
//!
//! The BPF build needs the nightly toolchain with rust-src and bpf-linker
//! (`cargo xtask setup` installs both). Set `AYA_BUILD_SKIP=1` to skip it, for
//! example for `cargo clippy` on a machine without bpf-linker: the agent then
//! embeds an empty object and refuses to load it with a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("mcs-ebpf");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir.parent().context("mcs-agent has no parent directory")?;
    // mcs-ebpf depends on mcs-common; aya-build only watches mcs-ebpf itself.
    println!("cargo:rerun-if-changed={}", workspace.join("mcs-common").display());
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }
    let ebpf_dir = workspace.join("mcs-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("mcs-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "mcs-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building mcs-ebpf for the BPF target (is bpf-linker installed? run `cargo xtask setup`)")
}
