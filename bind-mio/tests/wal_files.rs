//! The blocking WAL on real files: durability across reopen, rotation,
//! prefix removal, torn tails and corruption edited into a real file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use octopii_core::wal::CorruptionReason;
use octopii_mio::{Error, WalConfig, WalError, WriteAheadLog};

fn small_segments() -> WalConfig {
    WalConfig { segment_bytes_target: 4096, ..WalConfig::default() }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

fn payload(index: u64) -> Bytes {
    Bytes::from(format!("entry-{index}-{}", "x".repeat((index % 50) as usize)))
}

#[test]
fn appends_survive_reopen_and_offsets_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|thread_index| {
            let wal = Arc::clone(&wal);
            thread::spawn(move || {
                (0..50)
                    .map(|i| (wal.append(payload(thread_index * 1000 + i)).unwrap(), thread_index * 1000 + i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acknowledged: Vec<(u64, u64)> =
        handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect();
    acknowledged.sort();
    Arc::into_inner(wal).unwrap().close();

    let wal = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap();
    let entries = wal.entries().unwrap();
    let expected: Vec<(u64, Bytes)> =
        acknowledged.iter().map(|&(offset, index)| (offset, payload(index))).collect();
    let found: Vec<(u64, Bytes)> = entries.into_iter().map(|entry| (entry.seq, entry.payload)).collect();
    assert_eq!(found, expected);
    let next = wal.append(Bytes::from_static(b"after reopen")).unwrap();
    assert_eq!(next, 400, "offsets continue after the last durable one");
    wal.flush().unwrap();
}

#[test]
fn rotation_and_prefix_removal_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = WriteAheadLog::open_with(dir.path(), small_segments()).unwrap();
    for index in 0..300 {
        assert_eq!(wal.append(payload(index)).unwrap(), index);
    }
    let before = segment_files(dir.path());
    assert!(before.len() > 3, "small segments rotate: {before:?}");
    let removed = wal.remove_before(150).unwrap();
    assert!(removed > 0);
    assert_eq!(segment_files(dir.path()).len(), before.len() - removed);
    wal.close();

    let wal = WriteAheadLog::open_with(dir.path(), small_segments()).unwrap();
    let entries = wal.entries().unwrap();
    let first = entries.first().unwrap().seq;
    assert!(first <= 150, "nothing at or above the removal point is removed");
    let expected: Vec<u64> = (first..300).collect();
    assert_eq!(entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), expected);
    for entry in &entries {
        assert_eq!(entry.payload, payload(entry.seq));
    }
    assert_eq!(wal.append(payload(300)).unwrap(), 300);
}

#[test]
fn truncation_hides_the_suffix_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = WriteAheadLog::open_with(dir.path(), small_segments()).unwrap();
    for index in 0..20 {
        wal.append(payload(index)).unwrap();
    }
    wal.truncate_from(12).unwrap();
    assert_eq!(wal.append(payload(99)).unwrap(), 21, "the truncation record takes offset 20");
    wal.close();
    let wal = WriteAheadLog::open_with(dir.path(), small_segments()).unwrap();
    let seqs: Vec<u64> = wal.entries().unwrap().iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, (0..12).chain([21]).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let wal = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap();
    for index in 0..10 {
        wal.append(payload(index)).unwrap();
    }
    wal.close();
    let segment = dir.path().join(&segment_files(dir.path())[0]);
    let committed_len = fs::metadata(&segment).unwrap().len();
    // An unfinished batch: a record header that promises more than was written.
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&[7, 1, 0, 0, 1, 0, 0, 0]).unwrap();
    drop(file);

    let wal = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap();
    let torn = wal.recovery().torn_tail.clone().expect("the tail is reported");
    assert_eq!((torn.offset, torn.bytes), (committed_len, 8));
    assert_eq!(fs::metadata(&segment).unwrap().len(), committed_len);
    assert_eq!(wal.read_all().unwrap().len(), 10);
    assert_eq!(wal.append(payload(10)).unwrap(), 10);
}

#[test]
fn corruption_of_an_acknowledged_batch_is_reported_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let wal = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap();
    for index in 0..10 {
        wal.append(payload(index)).unwrap();
    }
    wal.close();
    let segment = dir.path().join(&segment_files(dir.path())[0]);
    let original = fs::read(&segment).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    fs::write(&segment, &damaged).unwrap();

    let error = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap_err();
    let Error::Wal(WalError::Recovery(octopii_core::wal::RecoveryError::Corrupted(corruption))) = &error
    else {
        panic!("expected corruption, got {error:?}");
    };
    assert!(corruption.offset as usize <= middle);
    assert!(corruption.seq_from < 10);
    assert!(matches!(corruption.reason, CorruptionReason::RecordBody | CorruptionReason::RecordHeader));
    assert!(error.to_string().contains(&segment_files(dir.path())[0]), "{error}");
    assert_eq!(fs::read(&segment).unwrap(), damaged, "recovery never rewrites damaged data");
}

#[test]
fn an_empty_newest_segment_left_by_a_crash_is_removed() {
    // A crash right after a segment file was created leaves it empty.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("00000000000000000000.wal"), b"").unwrap();
    let wal = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap();
    assert_eq!(wal.recovery().torn_tail.as_ref().map(|torn| torn.offset), Some(0));
    assert_eq!(wal.append(payload(0)).unwrap(), 0);
    wal.close();
    let wal = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap();
    assert_eq!(wal.read_all().unwrap(), vec![payload(0)]);
}

#[test]
fn a_log_at_the_last_sequence_number_refuses_appends_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = bytes::BytesMut::new();
    octopii_core::wal::format::encode_segment_header(u64::MAX, &mut header);
    fs::write(dir.path().join(format!("{:020}.wal", u64::MAX)), &header).unwrap();
    let wal = WriteAheadLog::open(dir.path(), 100, Duration::from_millis(100)).unwrap();
    let error = wal.append(payload(0)).unwrap_err();
    assert!(matches!(error, Error::Wal(WalError::SequenceExhausted)), "{error}");
    assert!(wal.read_all().unwrap().is_empty());
}
