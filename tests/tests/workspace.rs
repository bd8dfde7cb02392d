//! Rules of the workspace that a fresh machine depends on.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use serde_json::Value;

/// `cargo xtask setup` is what installs bpf-linker, so xtask itself must build
/// without it: no crate xtask depends on, directly or not, may be a workspace
/// crate with a build script (those build the eBPF objects).
#[test]
fn xtask_builds_before_setup_has_installed_bpf_linker() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata starts: the test runs under cargo");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().expect("workspace_members").iter().filter_map(Value::as_str).collect();
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("package id"), p))
        .collect();
    let deps: BTreeMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| {
            let id = n["id"].as_str().expect("node id");
            (id, n["dependencies"].as_array().expect("dependencies").iter().filter_map(Value::as_str).collect())
        })
        .collect();
    let xtask = packages.iter().find(|(_, p)| p["name"] == "xtask").map(|(id, _)| *id).expect("an xtask package");
    let (mut seen, mut todo) = (BTreeSet::new(), vec![xtask]);
    while let Some(id) = todo.pop() {
        if seen.insert(id) {
            todo.extend(deps.get(id).into_iter().flatten().copied());
        }
    }
    let offenders: Vec<&str> = seen
        .iter()
        .filter(|id| members.contains(**id) && **id != xtask)
        .filter(|id| {
            packages[**id]["targets"].as_array().is_some_and(|t| {
                t.iter().any(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "custom-build")))
            })
        })
        .map(|id| packages[*id]["name"].as_str().unwrap_or(id))
        .collect();
    assert!(
        offenders.is_empty(),
        "xtask depends on workspace crates with build scripts {offenders:?}: `cargo xtask setup` cannot run on a fresh \
         machine; start them as binaries after setup, as bench and demo do"
    );
}
