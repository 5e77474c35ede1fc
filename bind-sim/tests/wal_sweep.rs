//! The log under random workloads, crashes and disk faults, over many
//! seeds: no run may break a property the oracle checks. A failure prints
//! every failing seed and the command that replays it.
//!
//! `WAL_SEED_COUNT` overrides the number of seeds (default 200).

use octopii_sim::wal::{FaultLevel, WalRunConfig, run_wal};

/// Commands per run: small, so that hundreds of seeds run in seconds.
const COMMANDS: u64 = 120;

fn seed_count(default: u64) -> u64 {
    match std::env::var("WAL_SEED_COUNT") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("WAL_SEED_COUNT={text:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs `seeds` seeds at `faults` and panics with every failure.
fn sweep(faults: FaultLevel, seeds: u64) {
    let mut failures = Vec::new();
    let mut first_report = None;
    for seed in 0..seeds {
        let config = WalRunConfig { seed, commands: COMMANDS, faults, ..WalRunConfig::default() };
        let run = run_wal(&config).expect("the sweep's config is valid");
        if let Some(violation) = run.violation {
            let headline = violation.message.chars().take(160).collect::<String>();
            failures.push(format!("seed {seed}: {headline}\n    replay: {}", violation.replay));
            first_report.get_or_insert_with(|| violation.to_string());
        }
    }
    if let Some(report) = first_report {
        panic!(
            "{} of {seeds} seeds broke a property ({faults} faults):\n{}\n\nfirst failure in full:\n{report}",
            failures.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn no_violation_under_full_faults() {
    sweep(FaultLevel::Full, seed_count(200));
}

#[test]
fn no_violation_without_faults() {
    sweep(FaultLevel::None, seed_count(200).div_ceil(4));
}
