//! `cargo xtask image [--tag T] [--rebuild-base]`: builds the agent's OCI
//! image without an image registry, then checks that its agent answers.
//!
//! - The base is made from Debian packages with `mmdebstrap` (the `essential`
//!   set, `bpftool` and `ca-certificates`, no documentation), for the host's
//!   own Debian release, so the agent built here finds the glibc it was
//!   linked against. It is imported into the local store as
//!   `localhost/mcs-agent-base:<release>` and reused by later builds
//!   (`--rebuild-base` makes it again, for security updates).
//! - The agent is built on the host (`cargo build --release`, with the
//!   toolchain and bpf-linker `cargo xtask setup` installed) and added to the
//!   base with buildah, as one layer, with the entrypoint and user of the
//!   `Dockerfile`.
//! - The checks run the image with podman, without network: `--version`
//!   prints what the host's build prints, `bpftool` runs, and `plan` on
//!   `deploy/examples/mcs-basic/import` prints the same plan (JSON) as the
//!   host's binary, with the example's service ports in it.
//!
//! The Dockerfile stays the way to build with Docker and a registry at hand;
//! this is the way on a machine that only has Debian's mirror.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, cmd_output, run, workspace};

/// The packages `image` needs, each with a command that shows it is installed.
const TOOLS: &[(&str, &str)] =
    &[("mmdebstrap", "mmdebstrap"), ("buildah", "buildah"), ("podman", "podman"), ("runc", "runc")];

/// What the base holds besides Debian's essential set.
const BASE_PACKAGES: &str = "bpftool,ca-certificates";

/// The host's Debian release (`VERSION_CODENAME` of /etc/os-release).
fn host_release() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME: is this Debian?")
}

fn podman() -> Command {
    Command::new("podman")
}

fn image_exists(name: &str) -> bool {
    podman().args(["image", "exists", name]).status().is_ok_and(|s| s.success())
}

/// Makes the base from Debian packages and imports it as `name`.
fn build_base(release: &str, name: &str) -> Result<()> {
    let dir = workspace().join("target/image");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tar = dir.join(format!("base-{release}.tar"));
    // The host's own sources (its mirror, with security updates), else Debian's.
    let sources = Path::new("/etc/apt/sources.list.d/debian.sources");
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=essential", &format!("--include={BASE_PACKAGES}")])
        .args(["--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright"])
        .args(["--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*"])
        .arg(release)
        .arg(&tar);
    if sources.is_file() {
        mmdebstrap.arg(sources);
    }
    eprintln!("image: making the {release} base with mmdebstrap ({BASE_PACKAGES})");
    run(&mut mmdebstrap)?;
    let imported = run(podman().arg("import").arg(&tar).arg(name));
    let _ = std::fs::remove_file(&tar);
    imported
}

/// This process's hard limit of `resource`.
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(resource, &raw mut limit) };
    if rc == 0 { limit.rlim_max } else { 0 }
}

/// `mcs-agent <args>` in the image, without network; returns stdout.
///
/// runc, not Debian's default crun: crun refuses hosts whose cgroups are in
/// hybrid mode (as on this CI machine). The limits are set to what this
/// process has: podman's defaults (a million open files) are above the hard
/// limits of a machine that is itself a container, and the runtime cannot
/// raise them there.
fn in_image(tag: &str, volumes: &[(&Path, &str)], entrypoint: Option<&str>, args: &[&str]) -> Result<String> {
    let files = hard_limit(libc::RLIMIT_NOFILE).max(1024);
    let processes = hard_limit(libc::RLIMIT_NPROC).clamp(64, 4096);
    let mut cmd = podman();
    cmd.args(["run", "--rm", "--runtime", "runc", "--network", "none"])
        .arg(format!("--ulimit=nofile={files}:{files}"))
        .arg(format!("--ulimit=nproc={processes}:{processes}"));
    for (host, inside) in volumes {
        cmd.arg("--volume").arg(format!("{}:{inside}:ro", host.display()));
    }
    if let Some(entrypoint) = entrypoint {
        cmd.args(["--entrypoint", entrypoint]);
    }
    cmd_output(cmd.arg(tag).args(args))
}

/// Checks that the image's agent answers as the host's build does.
fn check(tag: &str, host_agent: &Path) -> Result<()> {
    let version = in_image(tag, &[], None, &["--version"])?;
    let expected = cmd_output(Command::new(host_agent).arg("--version"))?;
    ensure!(version.trim() == expected.trim(), "the image's agent says {version:?}, the host's build {expected:?}");
    println!("image: `mcs-agent --version`: {}", version.trim());
    let bpftool = in_image(tag, &[], Some("bpftool"), &["version"])?;
    ensure!(bpftool.contains("bpftool"), "bpftool in the image: {bpftool}");

    let examples = workspace().join("deploy/examples/mcs-basic/import");
    let args = ["plan", "--manifests", "/examples", "--cluster-id", "east", "-o", "json"];
    let plan = in_image(tag, &[(examples.as_path(), "/examples")], None, &args)?;
    let host_args: Vec<String> =
        args.iter().map(|a| if *a == "/examples" { examples.display().to_string() } else { (*a).to_owned() }).collect();
    let host_plan = cmd_output(Command::new(host_agent).args(&host_args))?;
    let plan: serde_json::Value = serde_json::from_str(&plan).context("the image's plan is not JSON")?;
    let host_plan: serde_json::Value = serde_json::from_str(&host_plan).context("the host's plan is not JSON")?;
    // The plan names the manifests' files; the image read them under another path.
    let strip = |v: &serde_json::Value| v.to_string().replace(&examples.display().to_string(), "/examples");
    ensure!(strip(&plan) == strip(&host_plan), "the image's plan differs from the host's:\n{plan:#}\n{host_plan:#}");
    let ports = plan["services"].as_array().map_or(0, Vec::len);
    ensure!(ports > 0, "the plan of mcs-basic has no service port: {plan:#}");
    println!("image: `mcs-agent plan` on deploy/examples/mcs-basic/import: {ports} service ports, as the host's build");
    Ok(())
}

/// Builds and checks the image.
///
/// # Errors
/// When a tool is missing and cannot be installed, a build step fails, or a check fails.
pub fn image(tag: Option<&str>, rebuild_base: bool) -> Result<()> {
    crate::setup::ensure(TOOLS)?;
    let tag = tag.map_or_else(|| format!("localhost/mcs-agent:{}", env!("CARGO_PKG_VERSION")), ToOwned::to_owned);
    run(cargo().args(["build", "--release", "--locked", "--package", "mcs-agent", "--bin", "mcs-agent"]))?;
    let agent = workspace().join("target/release/mcs-agent");

    let release = host_release()?;
    let base = format!("localhost/mcs-agent-base:{release}");
    if rebuild_base || !image_exists(&base) {
        build_base(&release, &base)?;
    } else {
        eprintln!("image: reusing {base} (--rebuild-base makes it again)");
    }
    // The image the tag names now, removed once the tag has moved (not while a container uses it).
    let previous = cmd_output(podman().args(["image", "inspect", "--format", "{{.Id}}", &tag])).ok();
    let container = cmd_output(Command::new("buildah").args(["from", "--pull-never", &base]))?;
    let container = container.trim();
    let built = (|| {
        run(Command::new("buildah")
            .args(["copy", "--chmod", "0755", container])
            .arg(&agent)
            .arg("/usr/local/bin/mcs-agent"))?;
        run(Command::new("buildah").args([
            "config",
            "--entrypoint",
            r#"["/usr/local/bin/mcs-agent"]"#,
            "--cmd",
            "--help",
            // Root: the DaemonSet's added capabilities only take effect for uid 0.
            "--user",
            "0:0",
            "--label",
            "org.opencontainers.image.title=mcs-agent",
            "--label",
            &format!("org.opencontainers.image.version={}", env!("CARGO_PKG_VERSION")),
            container,
        ]))?;
        run(Command::new("buildah").args(["commit", "--format", "oci", container, &tag]))
    })();
    let _ = Command::new("buildah").args(["rm", container]).output();
    built?;
    let now = cmd_output(podman().args(["image", "inspect", "--format", "{{.Id}}", &tag]))?;
    if let Some(previous) = previous.filter(|p| p.trim() != now.trim()) {
        let _ = podman().args(["rmi", previous.trim()]).output();
    }
    check(&tag, &agent)?;
    let size = cmd_output(podman().args(["image", "inspect", "--format", "{{.Size}}", &tag]))?;
    let size: u64 = size.trim().parse().with_context(|| format!("image size {size:?}"))?;
    #[expect(clippy::cast_precision_loss, reason = "a size for people")]
    let mb = size as f64 / 1e6;
    println!("image: {tag} built and checked, {mb:.1} MB (push: podman push {tag} REGISTRY/mcs-agent:TAG)");
    if size == 0 {
        bail!("podman reports an empty image");
    }
    Ok(())
}
