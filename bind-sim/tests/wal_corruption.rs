//! Bit rot in an acknowledged batch that is not the newest: recovery must
//! report it precisely and leave the data alone, never truncate it.
//!
//! `WAL_CORRUPTION_SEED_COUNT` overrides the number of seeds (default 24).

use octopii_sim::wal::run_corruption;

#[test]
fn a_flipped_bit_in_an_older_batch_is_reported_not_truncated() {
    let seeds: u64 =
        std::env::var("WAL_CORRUPTION_SEED_COUNT").map_or(24, |text| text.trim().parse().unwrap());
    let mut failures = Vec::new();
    let mut reasons = std::collections::BTreeSet::new();
    for seed in 0..seeds {
        let run = run_corruption(seed);
        match (&run.violation, &run.corruption) {
            (Some(_), _) => failures.push(run.to_string()),
            (None, Some(corruption)) => {
                reasons.insert(format!("{:?}", corruption.reason));
            }
            (None, None) => failures.push(format!("seed {seed}: no corruption reported and no violation")),
        }
    }
    assert!(failures.is_empty(), "{} of {seeds} seeds failed:\n{}", failures.len(), failures.join("\n"));
    assert!(seeds < 8 || reasons.len() > 1, "the flips should hit different kinds of bytes: {reasons:?}");
}

#[test]
fn the_report_names_the_segment_offset_and_sequence_numbers() {
    let run = run_corruption(3);
    assert_eq!(run.violation, None, "{run}");
    let (flip, corruption) = (run.flip.clone().unwrap(), run.corruption.clone().unwrap());
    assert_eq!(corruption.segment, flip.file);
    assert!(corruption.offset <= flip.offset);
    assert!(corruption.seq_from <= run.batch_first_seq.unwrap());
    assert!(run.batches > 2 && run.segments > 1, "{run}");
}
