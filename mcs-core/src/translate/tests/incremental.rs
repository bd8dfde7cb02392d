//! The incremental translation gives exactly what [`translate`] gives: after
//! a rebuild, after a change that grows the inputs from nothing, after one
//! that empties them, and along a sequence of single changes.
use super::*;
use crate::translate::incremental::{Changes, GroupIndex, Incremental, Mode};

/// Checks an [`Incremental`] against `want` (`translate`'s output for
/// `inputs`), three ways. Called by [`run`] for every table case.
pub(super) fn agrees(case: &str, inputs: &Inputs, config: &Config, want: (&DesiredState, &Report)) {
    let mut at_once = Incremental::new(config.clone());
    at_once.update(inputs, &Changes::everything());
    assert_eq!((at_once.state(), at_once.report()), want, "case {case:?}: rebuilt at once");

    let mut grown = Incremental::new(config.clone());
    grown.update(&Inputs::default(), &Changes::everything());
    let mut touched = Changes::default();
    touched.inputs(inputs);
    let updated = grown.update(inputs, &touched);
    assert_eq!((grown.state(), grown.report()), want, "case {case:?}: grown by one change ({updated:?})");
    if inputs.gke_imports.is_empty() && !contested(want.1) {
        assert_eq!(updated.mode, Mode::Grouped, "case {case:?}: without GKE imports or contested keys");
        let changed = updated.changed.unwrap_or_else(|| panic!("case {case:?}: a grouped update lists its changes"));
        let keys: BTreeSet<ServicePortKey> = want.0.services.keys().copied().collect();
        assert_eq!(changed, keys, "case {case:?}: every port is new");
    }

    grown.update(&Inputs::default(), &touched);
    assert_eq!(
        (grown.state(), grown.report()),
        (&DesiredState::default(), &Report::default()),
        "case {case:?}: emptied by one change"
    );

    // The same growth with the inputs' group index, and with an index of
    // other inputs (which must be noticed, not trusted).
    for (which, index) in [("its own", GroupIndex::of(inputs)), ("a wrong", wrong_index(inputs))] {
        let mut indexed = Incremental::new(config.clone());
        indexed.update(&Inputs::default(), &Changes::everything());
        let updated = indexed.update_with(inputs, Some(&index), &touched);
        assert_eq!(
            (indexed.state(), indexed.report()),
            want,
            "case {case:?}: grown by one change with {which} group index ({updated:?})"
        );
    }
}

/// A group index that does not fit `inputs`: every position shifted by one.
fn wrong_index(inputs: &Inputs) -> GroupIndex {
    let mut shifted = inputs.clone();
    if let Some(first) = inputs.imports.first() {
        shifted.imports.insert(0, first.clone());
    }
    if let Some(first) = inputs.slices.first() {
        shifted.slices.insert(0, first.clone());
    }
    GroupIndex::of(&shifted)
}

/// Whether some import lost a key to another one.
fn contested(report: &Report) -> bool {
    report.skipped.iter().any(|s| s.message.contains("is already used by"))
}

/// The inputs of one step of [`a_sequence_of_changes_matches_translate`].
struct Step {
    what: &'static str,
    change: fn(&mut Inputs, &mut Changes),
    mode: Mode,
}

fn replace_slice(inputs: &mut Inputs, changes: &mut Changes, new: std::sync::Arc<Slice>) {
    changes.slice(&new);
    let name = k8s::name_of(&new.metadata).to_owned();
    if let Some(old) = inputs.slices.iter_mut().find(|s| k8s::name_of(&s.metadata) == name) {
        changes.slice(old);
        *old = new;
    } else {
        inputs.slices.push(new);
    }
}

fn remove_import(inputs: &mut Inputs, changes: &mut Changes, namespace: &str, name: &str) {
    inputs.imports.retain(|i| {
        let hit = k8s::namespace_of(&i.metadata) == namespace && k8s::name_of(&i.metadata) == name;
        if hit {
            changes.import(i);
        }
        !hit
    });
}

fn add_import(inputs: &mut Inputs, changes: &mut Changes, import: ServiceImport) {
    changes.import(&import);
    inputs.imports.push(import.into());
}

/// A ClusterSet of a few services, then changes one at a time; after each,
/// the incremental result equals a whole translation of the same inputs, its
/// list of changed ports covers every port that differs, and it works per
/// group except while GKE imports or a contested key are present.
#[test]
#[expect(clippy::too_many_lines, reason = "a table of steps")]
fn a_sequence_of_changes_matches_translate() {
    let steps = [
        Step {
            what: "an endpoint moves",
            change: |i, c| {
                replace_slice(i, c, slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.9").build());
            },
            mode: Mode::Grouped,
        },
        Step {
            what: "a slice gets an unusable address (a warning)",
            change: |i, c| {
                let bad = slice("demo", "web", "west").port("http", None, 8080).ready("198.18.0.300").build();
                replace_slice(i, c, bad);
            },
            mode: Mode::Grouped,
        },
        Step {
            what: "the address is mended",
            change: |i, c| {
                replace_slice(i, c, slice("demo", "web", "west").port("http", None, 8080).ready("198.18.0.3").build());
            },
            mode: Mode::Grouped,
        },
        Step {
            what: "a second import wants demo/web's key",
            change: |i, c| add_import(i, c, import("demo", "web2").ip(VIP).port("http", None, 80).build()),
            mode: Mode::Whole,
        },
        Step {
            what: "a slice changes while the key is contested",
            change: |i, c| {
                replace_slice(i, c, slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.7").build());
            },
            mode: Mode::Whole,
        },
        Step {
            what: "the second import goes",
            change: |i, c| remove_import(i, c, "demo", "web2"),
            mode: Mode::Grouped,
        },
        Step {
            what: "an import without slices appears",
            change: |i, c| add_import(i, c, import("demo", "new").ip("198.19.0.5").port("http", None, 80).build()),
            mode: Mode::Grouped,
        },
        Step {
            what: "its slice appears, over the cap of one cluster",
            change: |i, c| {
                replace_slice(i, c, slice("demo", "new", "east").port("http", None, 80).ready("198.18.5.1").build());
                replace_slice(i, c, slice("demo", "new", "west").port("http", None, 80).ready("198.18.5.2").build());
            },
            mode: Mode::Grouped,
        },
        Step {
            what: "a duplicate of demo/dns",
            change: |i, c| add_import(i, c, import("demo", "dns").ip("198.19.0.6").udp("udp", 53).build()),
            mode: Mode::Grouped,
        },
        Step {
            what: "a GKE import appears",
            change: |i, c| {
                let gke = gke_import("demo", "g", "g-derived").ip("198.19.0.20").port("http", None, 80).build();
                c.gke_import(&gke);
                i.gke_imports.push(gke.into());
                let derived =
                    endpoints("demo", "g-derived").subset(&[("http", None, 8080)], &["198.18.3.1"], &[]).build();
                c.endpoints(&derived);
                i.endpoints.push(derived);
            },
            mode: Mode::Whole,
        },
        Step {
            what: "the GKE import goes",
            change: |i, c| {
                i.gke_imports.iter().for_each(|g| c.gke_import(g));
                i.gke_imports.clear();
            },
            mode: Mode::Grouped,
        },
        Step {
            what: "demo/web goes, its slices stay",
            change: |i, c| remove_import(i, c, "demo", "web"),
            mode: Mode::Grouped,
        },
        Step { what: "nothing changes", change: |_, _| {}, mode: Mode::Grouped },
    ];
    let config = Config { max_exporting_clusters: 1, ..config() };
    let mut inputs = Inputs {
        imports: vec![
            web().port("http", None, 80).build().into(),
            import("demo", "dns").ip(VIP2).udp("udp", 53).build().into(),
            import("prod", "web").ip("198.19.0.3").port("http", None, 80).build().into(),
        ],
        slices: vec![
            slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
            slice("demo", "web", "west").port("http", None, 8080).ready("198.18.0.2").build(),
            slice("demo", "dns", "east").udp("udp", 5353).ready("198.18.1.1").build(),
            slice("prod", "web", "east").port("http", None, 8080).ready("198.18.2.1").build(),
        ],
        ..Inputs::default()
    };
    let mut incremental = Incremental::new(config.clone());
    incremental.update(&inputs, &Changes::everything());
    // Beside it, one that finds the groups through an index kept up to date
    // the way the sources keep theirs.
    let mut indexed = Incremental::new(config.clone());
    indexed.update_with(&inputs, Some(&GroupIndex::of(&inputs)), &Changes::everything());
    assert_eq!(
        (incremental.state(), incremental.report()),
        (&translate(&inputs, &config).0, &translate(&inputs, &config).1)
    );
    for step in steps {
        let before = incremental.state().clone();
        let mut changes = Changes::default();
        (step.change)(&mut inputs, &mut changes);
        let updated = incremental.update(&inputs, &changes);
        let (state, report) = translate(&inputs, &config);
        assert_eq!((incremental.state(), incremental.report()), (&state, &report), "{}", step.what);
        let with_index = indexed.update_with(&inputs, Some(&GroupIndex::of(&inputs)), &changes);
        assert_eq!((indexed.state(), indexed.report()), (&state, &report), "{} (indexed)", step.what);
        assert_eq!(with_index, updated, "{} (indexed)", step.what);
        assert_eq!(updated.mode, step.mode, "{}: {updated:?}", step.what);
        if let Some(changed) = &updated.changed {
            let keys: BTreeSet<&ServicePortKey> = before.services.keys().chain(state.services.keys()).collect();
            for key in keys {
                if before.services.get(key) != state.services.get(key) {
                    assert!(changed.contains(key), "{}: {key} differs but is not listed in {changed:?}", step.what);
                }
            }
        }
    }
}
