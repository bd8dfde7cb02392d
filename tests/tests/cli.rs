//! `mcs-agent run` as a new user starts it: flags that do not combine are
//! usage errors that name the fix, and a source that cannot start fails
//! before anything touches the kernel. Every case here fails on purpose, so
//! nothing is loaded, pinned or attached; the pin directory given is a plain
//! temporary directory that must stay empty.
//!
//! The binary must be built first (`cargo build --bins`; `cargo xtask test`
//! does it).
use std::{fs, path::Path, process::Command};

/// Runs `mcs-agent run --interfaces lo --cluster-id local --pin-path PINS
/// --metrics-addr '' <args>`; returns its exit code and stderr.
fn run(pins: &Path, args: &[&str]) -> (Option<i32>, String) {
    let agent = mcs_tests::agent_path();
    let pin_path = pins.to_str().expect("a UTF-8 temporary path");
    let output = Command::new(&agent)
        .args(["run", "--interfaces", "lo", "--cluster-id", "local", "--pin-path", pin_path, "--metrics-addr", ""])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", agent.display()));
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn assert_untouched(pins: &Path, args: &[&str]) {
    let left: Vec<_> = fs::read_dir(pins).expect("the pin directory still exists").collect();
    assert!(left.is_empty(), "{args:?}: the agent wrote under its pin directory: {left:?}");
}

#[test]
fn flags_that_do_not_combine_are_usage_errors_naming_the_fix() {
    let pins = tempfile::tempdir().expect("a temporary directory");
    for (args, fix) in [
        (&["--source", "file"][..], "--source file needs --manifests DIR"),
        (&["--source", "kubernetes", "--manifests", "/nonexistent"][..], "drop --source kubernetes, or --manifests"),
    ] {
        let (code, stderr) = run(pins.path(), args);
        assert_eq!(code, Some(2), "{args:?} is a usage error:\n{stderr}");
        assert!(stderr.contains(fix), "{args:?} should say {fix:?}:\n{stderr}");
        assert!(stderr.contains("Usage:"), "{args:?} prints the usage:\n{stderr}");
        assert_untouched(pins.path(), args);
    }
}

#[test]
fn source_errors_come_before_the_datapath_is_loaded() {
    let pins = tempfile::tempdir().expect("a temporary directory");
    let missing = pins.path().join("no-such-dir");
    let missing = missing.to_str().expect("a UTF-8 temporary path");
    // `--manifests` alone selects the file source: the error is about the
    // directory, not about a kubeconfig.
    let (code, stderr) = run(pins.path(), &["--manifests", missing]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(missing), "the error names the directory:\n{stderr}");
    assert!(!stderr.contains("kubeconfig"), "--manifests alone is the file source:\n{stderr}");
    assert_untouched(pins.path(), &["--manifests", missing]);

    let kubeconfig = pins.path().join("no-such-kubeconfig");
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 temporary path");
    let (code, stderr) = run(pins.path(), &["--kubeconfig", kubeconfig]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(kubeconfig), "the error names the kubeconfig:\n{stderr}");
    assert!(!stderr.contains("datapath loaded") && !stderr.contains("bpf"), "nothing was loaded:\n{stderr}");
    assert_untouched(pins.path(), &["--kubeconfig", kubeconfig]);
}
