//! The same scripted WAL scenario on the tokio and the mio binding gives the
//! same entries, offsets and recovery reports, and each reads what the
//! other wrote: both only execute the core's decisions.

use std::path::Path;

use bytes::Bytes;
use octopii_core::wal::{RecoveryReport, WalConfig, WalEntry};

fn config() -> WalConfig {
    WalConfig { segment_bytes_target: 4096, batch_records_max: 16, ..WalConfig::default() }
}

fn payload(index: u64) -> Bytes {
    Bytes::from(format!("{index}:{}", "z".repeat((index * 7 % 300) as usize)))
}

/// What a run observed: every offset returned, then the entries and the
/// recovery report after each reopen.
#[derive(Debug, PartialEq)]
struct Observed {
    offsets: Vec<u64>,
    removed: usize,
    reports: Vec<RecoveryReport>,
    entries: Vec<Vec<WalEntry>>,
}

async fn script_tokio(dir: &Path) -> Observed {
    let open = || octopii::WriteAheadLog::with_config(dir.to_path_buf(), config());
    let wal = open().await.unwrap();
    let mut offsets = Vec::new();
    for index in 0..120 {
        offsets.push(wal.append(payload(index)).await.unwrap());
    }
    wal.truncate_from(100).await.unwrap();
    for index in 200..230 {
        offsets.push(wal.append(payload(index)).await.unwrap());
    }
    let removed = wal.remove_before(60).await.unwrap();
    wal.close().await;
    let mut observed = Observed { offsets, removed, reports: Vec::new(), entries: Vec::new() };
    for _ in 0..2 {
        let wal = open().await.unwrap();
        observed.reports.push(wal.recovery().clone());
        observed.entries.push(wal.entries().await.unwrap());
        wal.close().await;
    }
    observed
}

fn script_mio(dir: &Path) -> Observed {
    let open = || octopii_mio::WriteAheadLog::open_with(dir, config());
    let wal = open().unwrap();
    let mut offsets = Vec::new();
    for index in 0..120 {
        offsets.push(wal.append(payload(index)).unwrap());
    }
    wal.truncate_from(100).unwrap();
    for index in 200..230 {
        offsets.push(wal.append(payload(index)).unwrap());
    }
    let removed = wal.remove_before(60).unwrap();
    wal.close();
    let mut observed = Observed { offsets, removed, reports: Vec::new(), entries: Vec::new() };
    for _ in 0..2 {
        let wal = open().unwrap();
        observed.reports.push(wal.recovery().clone());
        observed.entries.push(wal.entries().unwrap());
        wal.close();
    }
    observed
}

#[tokio::test]
async fn tokio_and_mio_observe_the_same_log() {
    let tokio_dir = tempfile::tempdir().unwrap();
    let mio_dir = tempfile::tempdir().unwrap();
    let on_tokio = script_tokio(tokio_dir.path()).await;
    let mio_path = mio_dir.path().to_path_buf();
    let on_mio = tokio::task::spawn_blocking(move || script_mio(&mio_path)).await.unwrap();
    assert_eq!(on_tokio, on_mio);

    let entries = &on_tokio.entries[0];
    assert!(on_tokio.removed > 0, "small segments let the prefix removal remove files");
    assert!(entries.iter().all(|entry| entry.seq < 100 || entry.seq > 120), "the truncated suffix is gone");
    assert_eq!(entries.last().unwrap().payload, payload(229));
    assert_eq!(on_tokio.entries[0], on_tokio.entries[1], "recovery is idempotent");
}

#[tokio::test]
async fn each_binding_reads_what_the_other_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let written = script_tokio(dir.path()).await;
    let path = dir.path().to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let wal = octopii_mio::WriteAheadLog::open_with(&path, config()).unwrap();
        let offset = wal.append(Bytes::from_static(b"from mio")).unwrap();
        (wal.entries().unwrap(), offset)
    })
    .await
    .unwrap();
    assert_eq!(read.0[..read.0.len() - 1], written.entries[1][..]);
    assert_eq!(read.1, written.reports[1].next_seq);

    let wal = octopii::WriteAheadLog::with_config(dir.path().to_path_buf(), config()).await.unwrap();
    assert_eq!(wal.entries().await.unwrap(), read.0);
}
