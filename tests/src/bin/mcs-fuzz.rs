//! `mcs-fuzz`, run by `cargo xtask fuzz`: generated and mutated frames
//! through both tc programs with `BPF_PROG_TEST_RUN`, every result checked
//! against the invariants of [`mcs_tests::fuzz`]. Prints the verdict mix;
//! on a broken invariant prints the seed, the frame's index and both frames
//! in hex, and exits with status 1.
use std::time::{SystemTime, UNIX_EPOCH};

use mcs_tests::fuzz::{self, Options};

/// `mcs-fuzz [--frames N] [--seed S]`.
#[derive(clap::Parser)]
struct Args {
    /// Frames to run (each through one program).
    #[arg(long, default_value_t = 100_000)]
    frames: u64,
    /// The generator's seed (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Go on after a broken invariant and print the first of each kind at the end.
    #[arg(long)]
    keep_going: bool,
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    let seed = args.seed.unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        now.as_secs() ^ u64::from(now.subsec_nanos())
    });
    println!("fuzz: {} frames from seed {seed}", args.frames);
    match fuzz::run(Options { keep_going: args.keep_going, ..Options::new(args.frames, seed) }) {
        Ok(report) => {
            print!("{}", report.table());
            let (failures, count) = &report.failures;
            for failure in failures {
                eprintln!("{failure}");
            }
            if *count == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("{count} frames broke an invariant; the first of each kind is above");
                std::process::ExitCode::FAILURE
            }
        }
        Err(failure) => {
            eprintln!("{failure}");
            std::process::ExitCode::FAILURE
        }
    }
}
