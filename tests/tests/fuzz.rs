//! The CI-sized packet fuzz: 10,000 generated and mutated frames through
//! both tc programs (`BPF_PROG_TEST_RUN`), every invariant of
//! [`mcs_tests::fuzz`] checked on each. `cargo xtask fuzz` runs the long one.
//! The seed is fixed, so a failure reproduces; `MCS_FUZZ_SEED` picks another.
use mcs_common::program_names::{FROM_POD, TO_POD};
use mcs_tests::fuzz::{self, Options};

#[test]
fn ten_thousand_fuzzed_frames_keep_every_datapath_invariant() {
    let seed =
        std::env::var("MCS_FUZZ_SEED").map_or(0x6d63_735f_667a_0001, |s| s.parse().expect("MCS_FUZZ_SEED is a u64"));
    let report = fuzz::run(Options::new(10_000, seed)).unwrap_or_else(|failure| panic!("{failure}"));
    println!("{}", report.table());
    assert_eq!(report.frames, 10_000);
    // The run reached what it checks: rewrites both ways, fail-fast
    // answers and hairpin, drops, untouched frames, malformed ones, pairs.
    let at_least = |program, verdict, rewritten, n| {
        let got = report.count(program, verdict, rewritten);
        assert!(
            got >= n,
            "only {got} frames through {program} were {verdict} (rewritten: {rewritten}):\n{}",
            report.table()
        );
    };
    at_least(FROM_POD, "next", true, 500);
    at_least(FROM_POD, "next", false, 500);
    at_least(FROM_POD, "redirect", true, 100);
    at_least(FROM_POD, "drop", false, 100);
    at_least(TO_POD, "next", true, 500);
    at_least(TO_POD, "next", false, 500);
    assert!(report.malformed >= 200, "{}", report.table());
    assert!(report.ct_checks.0 >= 20 && report.ct_checks.1 > 1000, "{}", report.table());
}
