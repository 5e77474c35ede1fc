//! The tokio WAL on real files: concurrent appenders, reopen, rotation,
//! prefix removal and corruption edited into a real file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use octopii::{OctopiiError, WalConfig, WalError, WriteAheadLog};

fn payload(index: u64) -> Bytes {
    Bytes::from(format!("record {index} {}", "y".repeat((index % 97) as usize)))
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let wal = Arc::new(WriteAheadLog::new(path.clone(), 100, Duration::from_millis(100)).await.unwrap());
    let tasks: Vec<_> = (0..64u64)
        .map(|task| {
            let wal = Arc::clone(&wal);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..20 {
                    let index = task * 100 + i;
                    acknowledged.push((wal.append(payload(index)).await.unwrap(), index));
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged.sort();
    assert_eq!(acknowledged.len(), 1280);
    Arc::into_inner(wal).unwrap().close().await;

    let wal = WriteAheadLog::new(path, 100, Duration::from_millis(100)).await.unwrap();
    let found: Vec<(u64, Bytes)> =
        wal.entries().await.unwrap().into_iter().map(|e| (e.seq, e.payload)).collect();
    let expected: Vec<(u64, Bytes)> =
        acknowledged.iter().map(|&(seq, index)| (seq, payload(index))).collect();
    assert_eq!(found, expected);
    assert_eq!(wal.append(Bytes::from_static(b"next")).await.unwrap(), 1280);
    wal.flush().await.unwrap();
    assert_eq!(wal.read_all().await.unwrap().last().unwrap(), &Bytes::from_static(b"next"));
}

#[tokio::test]
async fn rotation_and_prefix_removal_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { segment_bytes_target: 4096, ..WalConfig::default() };
    let wal = WriteAheadLog::with_config(dir.path().to_path_buf(), config.clone()).await.unwrap();
    for index in 0..400 {
        assert_eq!(wal.append(payload(index)).await.unwrap(), index);
    }
    let segments = segment_files(dir.path()).len();
    assert!(segments > 5, "small segments rotate");
    let removed = wal.remove_before(200).await.unwrap();
    assert!(removed > 0);
    wal.close().await;

    let wal = WriteAheadLog::with_config(dir.path().to_path_buf(), config).await.unwrap();
    assert_eq!(wal.recovery().segments, segments - removed);
    let entries = wal.entries().await.unwrap();
    let first = entries[0].seq;
    assert!(first > 0 && first <= 200);
    assert!(entries.iter().map(|e| e.seq).eq(first..400));
    assert!(entries.iter().all(|entry| entry.payload == payload(entry.seq)));
}

#[tokio::test]
async fn an_oversized_entry_is_refused_and_the_log_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let wal = WriteAheadLog::new(dir.path().to_path_buf(), 100, Duration::from_millis(100)).await.unwrap();
    let huge = Bytes::from(vec![0; octopii_core::wal::ENTRY_BYTES_MAX + 1]);
    let error = wal.append(huge).await.unwrap_err();
    assert!(matches!(error, OctopiiError::Wal(WalError::EntryTooLarge { .. })), "{error}");
    assert_eq!(wal.append(payload(1)).await.unwrap(), 0);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = WriteAheadLog::new(dir.path().to_path_buf(), 100, Duration::from_millis(100)).await.unwrap();
    let error =
        WriteAheadLog::new(dir.path().to_path_buf(), 100, Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(&error, OctopiiError::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock), "{error}");
    wal.close().await;
    WriteAheadLog::new(dir.path().to_path_buf(), 100, Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn corruption_in_the_middle_of_the_log_is_reported_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { segment_bytes_target: 4096, ..WalConfig::default() };
    let wal = WriteAheadLog::with_config(dir.path().to_path_buf(), config.clone()).await.unwrap();
    for index in 0..200 {
        wal.append(payload(index)).await.unwrap();
    }
    wal.close().await;
    let names = segment_files(dir.path());
    let victim = dir.path().join(&names[1]);
    let mut bytes = std::fs::read(&victim).unwrap();
    let flipped = bytes.len() / 3;
    bytes[flipped] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();

    let error = WriteAheadLog::with_config(dir.path().to_path_buf(), config).await.unwrap_err();
    let OctopiiError::Wal(WalError::Recovery(octopii_core::wal::RecoveryError::Corrupted(corruption))) =
        &error
    else {
        panic!("expected corruption, got {error}");
    };
    assert_eq!(corruption.segment.as_str(), names[1]);
    assert!(corruption.offset as usize <= flipped);
    assert_eq!(std::fs::read(&victim).unwrap(), bytes, "damaged data is left for repair");
    assert_eq!(segment_files(dir.path()), names, "no segment is removed");
}

#[tokio::test]
async fn a_read_is_not_disturbed_by_a_removal_requested_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { segment_bytes_target: 4096, ..WalConfig::default() };
    let wal = WriteAheadLog::with_config(dir.path().to_path_buf(), config).await.unwrap();
    for index in 0..300 {
        wal.append(payload(index)).await.unwrap();
    }
    // join! polls the read first, so the kernel sees it before the removal.
    let (entries, removed) = tokio::join!(wal.entries(), wal.remove_before(250));
    assert!(removed.unwrap() > 3);
    let entries = entries.unwrap();
    assert!(entries.iter().map(|entry| entry.seq).eq(0..300), "the read sees the log as it was");
}
