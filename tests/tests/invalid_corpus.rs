//! Invalid input at volume: every case under `tests/corpus/invalid/` (a
//! manifest, `<case>.yaml`, and beside it what must be reported,
//! `<case>.expect`: the rule it breaks, the object and a fragment of the
//! message naming the field) is read through the file source's own parser,
//! added to a valid set of imports and slices, and translated. The case must
//! be reported, naming its object and field, and every import of the valid
//! set must come out exactly as it does without the case.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use mcs_agent::{
    manifests::{self, LoadError},
    translate::{self, Config, DesiredState, Inputs, Report},
};
use mcs_core::testkit::{import, slice};

/// One case of the corpus.
struct Case {
    name: String,
    rule: String,
    object: String,
    message: String,
    yaml: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/invalid")
}

fn cases() -> Vec<Case> {
    let dir = corpus_dir();
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let stems = |ext: &str| -> BTreeSet<String> {
        names.iter().filter_map(|n| n.strip_suffix(ext).map(str::to_owned)).collect()
    };
    let (yamls, expects) = (stems(".yaml"), stems(".expect"));
    assert_eq!(yamls, expects, "every case has a manifest and an expectation beside it");
    yamls
        .into_iter()
        .map(|name| {
            let expect_path = dir.join(format!("{name}.expect"));
            let expect = fs::read_to_string(&expect_path).unwrap_or_else(|e| panic!("{}: {e}", expect_path.display()));
            let field = |key: &str| {
                expect
                    .lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(": ")).map(str::to_owned))
                    .unwrap_or_else(|| panic!("{}: no {key:?} line", expect_path.display()))
            };
            let yaml = fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("the case's manifest");
            Case { rule: field("rule"), object: field("object"), message: field("message"), yaml, name }
        })
        .collect()
}

/// The valid set: three imports in namespace `valid`, with slices from two
/// clusters, affinity and a locality annotation.
fn valid_set() -> Inputs {
    Inputs {
        imports: vec![
            import("valid", "web")
                .ips(&["198.19.1.1"])
                .tcp("http", 80)
                .udp("dns", 53)
                .status_clusters(&["east", "west"])
                .build()
                .into(),
            import("valid", "api").ips(&["198.19.1.2"]).tcp("grpc", 9000).client_ip_affinity(600).build().into(),
            import("valid", "near")
                .ips(&["198.19.1.3"])
                .tcp("http", 80)
                .annotation("mcs-ebpf.dev/locality", "local")
                .build()
                .into(),
        ],
        slices: vec![
            slice("valid", "web", "east")
                .ports(&[("http", "TCP", 8080), ("dns", "UDP", 5353)])
                .ready_all(["198.18.1.10", "198.18.1.11"])
                .build(),
            slice("valid", "web", "west")
                .ports(&[("http", "TCP", 9080), ("dns", "UDP", 5354)])
                .ready("198.18.2.10")
                .build(),
            slice("valid", "api", "east").ports(&[("grpc", "TCP", 9000)]).ready("198.18.1.20").build(),
            slice("valid", "near", "local").ports(&[("http", "TCP", 80)]).ready("198.18.0.30").build(),
            slice("valid", "near", "east").ports(&[("http", "TCP", 80)]).ready("198.18.1.30").build(),
        ],
        ..Inputs::default()
    }
}

fn config() -> Config {
    Config { cluster_id: "local".into(), ..Config::default() }
}

/// Everything reported: skipped imports (with their object), warnings and
/// unreadable documents.
fn problems(report: &Report, errors: &[LoadError]) -> BTreeSet<String> {
    let skipped = report.skipped.iter().map(|s| format!("ServiceImport {}/{}: {}", s.namespace, s.name, s.message));
    skipped.chain(report.warnings.iter().cloned()).chain(errors.iter().map(ToString::to_string)).collect()
}

#[test]
fn every_invalid_case_is_reported_with_object_and_field_and_disturbs_no_other_import() {
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus holds {} cases, at least 30 are wanted", cases.len());
    let valid = valid_set();
    let (base_state, base_report): (DesiredState, Report) = translate::translate(&valid, &config());
    let base_problems = problems(&base_report, &[]);
    assert!(base_problems.is_empty(), "the valid set is valid: {base_problems:?}");
    assert_eq!(base_state.services.len(), 4, "web http and dns, api grpc, near http");

    let mut unreported = Vec::new();
    for case in &cases {
        let file = format!("{}.yaml", case.name);
        let (bad, errors) = manifests::parse_str(Path::new(&file), &case.yaml);
        let mut inputs = valid.clone();
        inputs.extend(bad);
        let (state, report) = translate::translate(&inputs, &config());
        let new: Vec<String> = problems(&report, &errors).difference(&base_problems).cloned().collect();
        let context = format!("case {} ({}): reported {new:#?}", case.name, case.rule);
        if !new.iter().any(|p| p.contains(&case.object) && p.contains(&case.message)) {
            unreported.push(format!("{context}\nwanted one naming {:?} with {:?}", case.object, case.message));
        }
        for (key, port) in &base_state.services {
            assert_eq!(state.services.get(key), Some(port), "{context}\n{key} of the valid set changed");
        }
        for (key, port) in &state.services {
            assert!(
                base_state.services.contains_key(key) || port.namespace.ends_with("corpus"),
                "{context}\n{key} ({}/{}) appeared",
                port.namespace,
                port.name
            );
        }
    }

    assert!(
        unreported.is_empty(),
        "{} of {} cases not reported as expected:\n{}",
        unreported.len(),
        cases.len(),
        unreported.join("\n")
    );

    // Each rule of docs/mcs-semantics.md that input can break, and the
    // unreadable manifests, is broken at least once.
    let rules: Vec<&str> = cases.iter().map(|c| c.rule.as_str()).collect();
    for wanted in [
        "rule 1",
        "rule 2",
        "rule 3",
        "rule 4",
        "rule 5",
        "rule 6",
        "rule 7",
        "rule 8",
        "invalid input",
        "unreadable manifest",
    ] {
        assert!(
            rules.iter().any(|r| r.starts_with(wanted) || r.contains(&format!("and {wanted}"))),
            "no case breaks {wanted}: {rules:#?}"
        );
    }
    let kinds = |kind: &str| cases.iter().filter(|c| c.object.starts_with(kind)).count();
    assert!(kinds("ServiceImport") >= 15 && kinds("EndpointSlice") >= 5, "imports and slices both at volume");
}
