//! Developer commands for the MCS dataplane. Run them as root from the
//! workspace: `cargo xtask <command>`.
//!
//! - `setup`: install the toolchain pieces and Debian packages (idempotent);
//! - `build-ebpf`: build the eBPF object on its own, for bpftool and llvm-objdump;
//! - `test`: lint, then run every test (unit, packet, integration);
//! - `demo`: a demo ClusterSet in network namespaces, driven by deploy/examples;
//! - `bench`: the benchmarks (datapath cost, end to end, control plane) and their report;
//! - `image`: the agent's OCI image, from Debian packages (no registry needed), checked with podman;
//! - `fuzz`: the long reliability runs (packet fuzzing of both tc programs).
mod bench;
mod image;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install rust-src (nightly), bpf-linker and the Debian packages the tests use.
    Setup,
    /// Build the eBPF object into target/bpfel-unknown-none/release/mcs-ebpf.
    BuildEbpf,
    /// Lint, then run every test: unit, packet (`test_run`) and netns integration.
    Test {
        /// Skip clippy and rustfmt.
        #[arg(long)]
        no_lint: bool,
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Run the demo ClusterSet: build, create namespaces, start the agent, send traffic, tear down.
    Demo {
        /// Connections to send.
        #[arg(long, default_value_t = 12)]
        connections: usize,
        /// Keep the demo running this many seconds after the traffic, to look around with bpftool.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Build the agent's OCI image (mmdebstrap base, buildah layer) and check it with podman:
    /// `--version` and `plan` on deploy/examples/mcs-basic, as the host's build answers.
    Image {
        /// The image's name (default `localhost/mcs-agent:<version>`).
        #[arg(long)]
        tag: Option<String>,
        /// Make the Debian base again (for security updates) instead of reusing it.
        #[arg(long)]
        rebuild_base: bool,
    },
    /// Benchmarks: datapath cost (`test_run`), end to end against direct, iptables and nftables, control plane.
    /// Writes docs/bench/REPORT.md and charts (target/bench/ with --quick).
    Bench {
        /// Small sizes and short durations (about a minute; what CI runs).
        #[arg(long)]
        quick: bool,
        /// Only these sections, comma separated: datapath, e2e, flows, control (both sources), control-file,
        /// control-kube.
        #[arg(long)]
        only: Option<String>,
    },
    /// Long reliability runs: packet fuzzing (generated and mutated frames through both tc
    /// programs, every invariant checked on each; the verdict mix, or the seed and frame that
    /// broke one), then the API-fault test with the server down for 60 s and the 20 kills.
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 100_000)]
        frames: u64,
        /// The generator's seed (default: from the clock, printed).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Runs `cmd`, failing with the command line when it does not succeed.
///
/// # Errors
/// When the command cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output.
///
/// # Errors
/// When the command cannot start or exits unsuccessfully.
pub fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

/// Cargo of the nightly toolchain, for the eBPF crate. `$CARGO` is the stable
/// toolchain's own binary, which knows no `+nightly`.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]).current_dir(workspace());
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO"] {
        cmd.env_remove(key);
    }
    cmd
}

fn build_ebpf() -> Result<PathBuf> {
    let target_dir = workspace().join("target");
    run(nightly_cargo()
        .args(["build", "--package", "mcs-ebpf", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf"))?;
    Ok(target_dir.join("bpfel-unknown-none/release/mcs-ebpf"))
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run this as root: the tests create network namespaces and load eBPF programs");
    }
    Ok(())
}

/// Namespaces (those `netns` accepts) and pins under /sys/fs/bpf (names starting with one of
/// `pin_prefixes`) that a run left behind, and must not.
pub(crate) fn leftovers(netns: impl Fn(&str) -> bool, pin_prefixes: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(list) = cmd_output(Command::new("ip").args(["netns", "list"])) {
        found.extend(list.lines().filter(|l| netns(l)).map(|l| format!("netns {l}")));
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        found.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| pin_prefixes.iter().any(|p| n.starts_with(p)))
                .map(|n| format!("pin /sys/fs/bpf/{n}")),
        );
    }
    // Child cgroups of the socket tests (`mcs…-cg`), and any program of ours on the cgroup root.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let cgroup2 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    });
    if let Some(root) = cgroup2 {
        if let Ok(entries) = std::fs::read_dir(&root) {
            found.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("mcs") && n.ends_with("-cg"))
                    .map(|n| format!("cgroup {}/{n}", root.display())),
            );
        }
        if let Ok(show) = cmd_output(Command::new("bpftool").arg("cgroup").arg("show").arg(&root)) {
            found.extend(
                show.lines()
                    .filter(|l| l.contains(" mcs_"))
                    .map(|l| format!("a program on the cgroup root {}: {}", root.display(), l.trim())),
            );
        }
    }
    found
}

fn test(no_lint: bool, filter: Option<&str>) -> Result<()> {
    require_root()?;
    setup::setup()?;
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        // The eBPF crates (the datapath and the tests' probe) only build for the BPF target, with nightly.
        run(nightly_cargo()
            .args(["clippy", "--package", "mcs-ebpf", "--package", "mcs-tests-probe", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"]))?;
    }
    // Integration tests start these binaries; `cargo test` alone does not build
    // another package's binaries.
    run(cargo().args(["build", "--bins"]))?;
    let mut cmd = cargo();
    cmd.args(["test", "--no-fail-fast"]);
    // The tests share kernel state (namespaces, bpffs): one at a time.
    cmd.args(["--", "--test-threads=1"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let (status, passed, failed) = run_counting(&mut cmd)?;
    let left = leftovers(|l| l.starts_with("mcs"), &["mcs-test", "mcs-demo"]);
    // One closing line over every test binary, for people and for CI.
    println!("tests: {passed} passed, {failed} failed");
    if !left.is_empty() {
        bail!("tests left state behind: {}", left.join(", "));
    }
    if !status.success() || failed > 0 {
        bail!("{failed} test(s) failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up the `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<(std::process::ExitStatus, u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word).map(str::trim))
                    .and_then(|n| n.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    Ok((child.wait().context("waiting for cargo test")?, passed, failed))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::BuildEbpf => {
            setup::setup()?;
            let object = build_ebpf()?;
            println!("{}", object.display());
            Ok(())
        }
        Cmd::Test { no_lint, filter } => test(no_lint, filter.as_deref()),
        Cmd::Demo { connections, hold } => {
            require_root()?;
            setup::setup()?;
            run(cargo().args(["build", "--bins"]))?;
            // The demo links the test kit, whose build needs bpf-linker: it is a
            // binary of the tests crate, started once setup has installed it.
            run(Command::new(workspace().join("target/debug/mcs-demo")).args([
                "--connections",
                &connections.to_string(),
                "--hold",
                &hold.to_string(),
            ]))
        }
        Cmd::Image { tag, rebuild_base } => {
            require_root()?;
            setup::setup()?;
            image::image(tag.as_deref(), rebuild_base)
        }
        Cmd::Fuzz { frames, seed } => {
            require_root()?;
            setup::setup()?;
            // The fuzzer links the test kit (see the demo): a binary of the tests crate.
            run(cargo().args(["build", "--bins"]))?;
            let mut cmd = Command::new(workspace().join("target/debug/mcs-fuzz"));
            cmd.args(["--frames", &frames.to_string()]);
            if let Some(seed) = seed {
                cmd.args(["--seed", &seed.to_string()]);
            }
            run(&mut cmd)?;
            // The long versions of the agent's reliability tests: the API
            // server down for 60 s (5 s in CI) among its other faults, and
            // the 20 kills with their own seed when one is given.
            let mut tests = cargo();
            tests.args(["test", "-p", "mcs-tests", "--test", "api_faults", "--test", "kills"]);
            tests.args(["--", "--test-threads=1", "--nocapture"]).env("MCS_API_DOWN_SECONDS", "60");
            if let Some(seed) = seed {
                tests.env("MCS_KILL_SEED", seed.to_string());
            }
            run(&mut tests)
        }
        Cmd::Bench { quick, only } => {
            require_root()?;
            setup::setup()?;
            bench::bench(quick, only.as_deref())
        }
    }
}
