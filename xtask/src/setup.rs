//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing else.
//!
//! - rust-src for the nightly toolchain (the eBPF build uses build-std);
//! - bpf-linker, built against the nightly rustc's own LLVM;
//! - the Debian packages the tests, demo and benchmarks use.
//!
//! Every step checks first, so a second run takes about a second.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd_output, run};

/// Debian packages, each with a command that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("iperf3", "iperf3"),
    ("sockperf", "sockperf"),
    ("nginx-light", "nginx"),
    ("curl", "curl"),
    ("wrk", "wrk"),
    ("apache2-utils", "ab"),
    ("iptables", "iptables"),
    ("nftables", "nft"),
    ("util-linux", "nsenter"),
];

fn have(program: &str) -> bool {
    env::var_os("PATH").is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        || ["/usr/sbin", "/sbin"].iter().any(|dir| Path::new(dir).join(program).is_file())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

fn ensure_rust_src() -> Result<()> {
    let installed =
        cmd_output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    // bpf-linker links against libLLVM; use the one the nightly rustc ships.
    let sysroot = cmd_output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("cannot tell the LLVM version of {llvm}"))?;
    // The binary finds libLLVM through its rpath: this directory must stay.
    let prefix = cargo_home().join(format!("mcs-llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in ["libLLVM.so".to_owned(), llvm.clone()] {
        let path = prefix_lib.join(&link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib_dir.join(&llvm), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    eprintln!("setup: building bpf-linker against {llvm} (about a minute)");
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run; is {} on PATH?", cargo_home().join("bin").display());
    }
    Ok(())
}

fn ensure_packages() -> Result<()> {
    ensure(PACKAGES)
}

/// Installs those of `packages` (each with a command that shows it is
/// installed) that are missing.
///
/// # Errors
/// When apt-get fails.
pub fn ensure(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().filter(|(_, bin)| !have(bin)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Runs every setup step.
pub fn setup() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages()?;
    Ok(())
}
