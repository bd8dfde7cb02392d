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

/// Runs `mcs-agent <args>` and returns its stdout; panics when it fails.
fn agent_output(args: &[&str]) -> Vec<u8> {
    let agent = mcs_tests::agent_path();
    let output = Command::new(&agent).args(args).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// What bash's completion offers for the command line `words` (the last one
/// being completed), with the script `mcs-agent completions bash` wrote.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {}; COMP_WORDS=({line}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; \
         f=$(complete -p mcs-agent | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p'); test -n \"$f\" || exit 3; \
         $f mcs-agent \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.len() - 1,
    );
    let output = Command::new("bash").args(["--norc", "-c", &program]).output().expect("run bash");
    assert!(output.status.success(), "bash failed on {words:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completion_offers_the_subcommands_and_their_flags() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let script = dir.path().join("mcs-agent.bash");
    fs::write(&script, agent_output(&["completions", "bash"])).expect("write the script");
    let syntax = Command::new("bash").arg("-n").arg(&script).output().expect("run bash -n");
    assert!(syntax.status.success(), "not valid bash: {}", String::from_utf8_lossy(&syntax.stderr));

    let subcommands = bash_completes(&script, &["mcs-agent", "\"\""]);
    for sub in ["run", "plan", "inspect", "status", "monitor", "cleanup", "completions", "man"] {
        assert!(subcommands.iter().any(|w| w == sub), "{sub} not offered: {subcommands:?}");
    }
    let status = bash_completes(&script, &["mcs-agent", "status", "--"]);
    for flag in ["--pin-path", "--agent-addr", "--output"] {
        assert!(status.iter().any(|w| w == flag), "{flag} not offered after `status`: {status:?}");
    }
    assert!(!status.iter().any(|w| w == "--conntrack-max"), "a flag of run offered after `status`: {status:?}");
    let shells = bash_completes(&script, &["mcs-agent", "completions", "\"\""]);
    assert_eq!(
        shells.iter().filter(|w| ["bash", "zsh", "fish"].contains(&w.as_str())).count(),
        3,
        "the shells: {shells:?}"
    );
}

#[test]
fn zsh_and_fish_scripts_name_every_subcommand() {
    for (shell, marker) in [("zsh", "#compdef mcs-agent"), ("fish", "complete -c mcs-agent")] {
        let script = String::from_utf8(agent_output(&["completions", shell])).expect("a UTF-8 script");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in ["run", "plan", "inspect", "status", "monitor", "cleanup"] {
            assert!(script.contains(sub), "{shell}: {sub} missing");
        }
        assert!(script.contains("conntrack-max-non-tcp"), "{shell}: a flag of run missing");
    }
    let (code, stderr) = {
        let output = Command::new(mcs_tests::agent_path()).args(["completions", "tcsh"]).output().expect("run");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    assert_eq!(code, Some(2), "an unknown shell is a usage error: {stderr}");
    assert!(stderr.contains("tcsh") && stderr.contains("bash"), "names the value and the choices: {stderr}");
}

/// A man page rendered as plain text by groff; panics on a groff warning.
fn render_man(file: &Path) -> String {
    // `-P-cbou`: plain text, without bold or underline by overstriking or
    // escapes; `-rHY=0`: no hyphenation, so a flag is never split.
    let output = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou", "-rHY=0"])
        .arg(file)
        .output()
        .expect("run groff");
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && warnings.trim().is_empty(), "groff on {}: {warnings}", file.display());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_man_pages_render_without_warnings_and_document_each_subcommand() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let listed = String::from_utf8(agent_output(&["man", "--out-dir", dir.path().to_str().expect("UTF-8")]))
        .expect("UTF-8 paths");
    let mut written: Vec<String> = fs::read_dir(dir.path())
        .expect("the pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    written.sort();
    let subcommands = ["cleanup", "completions", "inspect", "man", "monitor", "plan", "run", "status"];
    let mut want: Vec<String> = subcommands.iter().map(|s| format!("mcs-agent-{s}.1")).collect();
    want.push("mcs-agent.1".into());
    want.sort();
    assert_eq!(written, want, "one page per subcommand and the top page");
    assert_eq!(listed.lines().count(), want.len(), "it lists what it wrote: {listed}");

    let top = render_man(&dir.path().join("mcs-agent.1"));
    for sub in subcommands {
        assert!(top.contains(&format!("mcs-agent-{sub}(1)")), "the top page refers to {sub}:\n{top}");
    }
    for (page, needles) in [
        ("mcs-agent-status.1", &["mcs-agent status", "--agent-addr", "[default: 127.0.0.1:9464]"][..]),
        ("mcs-agent-run.1", &["--conntrack-max-non-tcp", "--backend-removal-grace-seconds", "--interfaces"][..]),
    ] {
        let text = render_man(&dir.path().join(page));
        for needle in needles {
            assert!(text.contains(needle), "{needle:?} missing from {page}:\n{text}");
        }
    }
    // Without a directory the top page goes to stdout.
    let stdout = String::from_utf8(agent_output(&["man"])).expect("roff is text");
    assert!(stdout.contains(".TH mcs-agent 1"), "{stdout}");
}
