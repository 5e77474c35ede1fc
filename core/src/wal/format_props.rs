//! Property tests of the segment decoder over randomly encoded batches:
//! exact decoding, cuts that keep whole batches, edits that never yield a
//! record that was not written, and arbitrary bytes that never panic.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

#[derive(Clone, Debug)]
enum RandomRecord {
    Entry(Vec<u8>),
    /// A truncation reaching this many sequence numbers back.
    Truncate(u8),
}

fn random_record() -> impl Strategy<Value = RandomRecord> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..2000).prop_map(RandomRecord::Entry),
        1 => any::<u8>().prop_map(RandomRecord::Truncate),
    ]
}

/// Random records split into random batches.
fn random_batches() -> impl Strategy<Value = Vec<Vec<RandomRecord>>> {
    prop::collection::vec(prop::collection::vec(random_record(), 1..6), 0..8)
}

fn build(first_seq: u64, batches: &[Vec<RandomRecord>]) -> Fixture {
    let mut seq = first_seq;
    let batches: Vec<Vec<BatchRecord>> = batches
        .iter()
        .map(|records| {
            records
                .iter()
                .map(|record| {
                    let own = seq;
                    seq += 1;
                    match record {
                        RandomRecord::Entry(payload) => entry(payload),
                        RandomRecord::Truncate(back) => truncate(own.saturating_sub(u64::from(*back))),
                    }
                })
                .collect()
        })
        .collect();
    Fixture::new(first_seq, &batches)
}

/// `PROPTEST_CASES` raises the case count; the default keeps `cargo test`
/// fast in debug builds.
fn proptest_config(default_cases: u32) -> ProptestConfig {
    // A test harness setting, read by the test only; never in the core's
    // code paths.
    #[allow(clippy::disallowed_methods)]
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok());
    ProptestConfig { cases: cases.unwrap_or(default_cases), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(proptest_config(48))]

    #[test]
    fn random_batches_decode_to_exactly_their_records(
        first_seq in 0..u64::MAX / 2,
        batches in random_batches(),
        is_last in any::<bool>(),
    ) {
        let fixture = build(first_seq, &batches);
        let case = Case::new("random", fixture.bytes.clone(), first_seq, is_last, fixture.kept(batches.len(), 0));
        prop_assert_eq!(check(&case), Ok(()));
    }

    #[test]
    fn a_cut_of_the_last_segment_keeps_whole_batches(
        first_seq in 0..u64::MAX / 2,
        batches in random_batches(),
        cut in any::<Index>(),
    ) {
        let fixture = build(first_seq, &batches);
        let cut = cut.index(fixture.len() + 1);
        let case = Case::new(format!("cut at {cut}"), fixture.bytes[..cut].to_vec(), first_seq, true, fixture.cut_in_last(cut));
        prop_assert_eq!(check(&case), Ok(()));
    }

    /// Damage may stop decoding early but never invents a record.
    #[test]
    fn damaged_segments_never_deliver_what_was_not_written(
        first_seq in 0..u64::MAX / 2,
        batches in random_batches(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        is_last in any::<bool>(),
    ) {
        let fixture = build(first_seq, &batches);
        let mut bytes = fixture.bytes.clone();
        for (at, value) in &edits {
            let at = at.index(bytes.len());
            bytes[at] = *value;
        }
        let decoded = decode(&bytes, first_seq, is_last).map_err(TestCaseError::fail)?;
        check_invariants(&bytes, first_seq, &decoded).map_err(TestCaseError::fail)?;
        let all = fixture.records_of(batches.len());
        let delivered = &decoded.1;
        prop_assert!(all.starts_with(delivered), "delivered {delivered:?}, written {all:?}");
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        first_seq in any::<u64>(),
        is_last in any::<bool>(),
    ) {
        let decoded = decode(&bytes, first_seq, is_last).map_err(TestCaseError::fail)?;
        check_invariants(&bytes, first_seq, &decoded).map_err(TestCaseError::fail)?;
    }
}
