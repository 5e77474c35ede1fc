//! `octopii send` and `octopii receive` as processes on loopback: a file
//! arrives byte for byte with progress shown on the way, and a send that
//! cannot happen (no such file, nobody listening) fails in bounded time
//! with the problem named.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_octopii");
/// The transfer of the first test.
const FILE_BYTES: usize = 24 << 20;
/// Covers the transport's connect timeout (its 10 s idle timeout) with
/// room to spare.
const FAILURE_SECONDS_MAX: u64 = 20;

/// A child process, killed if a test ends without having waited for it.
struct Running {
    child: Child,
    name: &'static str,
}

impl Running {
    /// Starts `octopii args...` with its stderr written to
    /// `<root>/<name>.stderr` and its stdout to `<root>/<name>.stdout`
    /// (piped instead when `pipe_stdout`).
    fn start(root: &Path, name: &'static str, args: &[&str], pipe_stdout: bool) -> Self {
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            File::create(root.join(format!("{name}.stdout"))).unwrap().into()
        };
        let stderr = File::create(root.join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(BINARY).args(args).stdout(stdout).stderr(stderr).spawn().unwrap();
        Self { child, name }
    }

    /// Waits for the process to exit, failing the test after `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} still running after {limit:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lines of the process's stdout, read on a thread of their own
    /// so that the test can wait for them with a deadline.
    fn stdout_lines(&mut self) -> mpsc::Receiver<String> {
        let stdout: ChildStdout = self.child.stdout.take().expect("stdout was piped");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        received
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(name)).unwrap_or_default()
}

/// `size` bytes from a xorshift generator: incompressible enough, and the
/// same on every run.
fn pseudo_random_bytes(size: usize, mut state: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

#[test]
fn a_file_sent_to_a_receiver_arrives_whole_with_progress_shown() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let cluster = root.join("cluster");
    let out = root.join("out");
    let source = root.join("source.bin");
    let contents = pseudo_random_bytes(FILE_BYTES, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(&source, &contents).unwrap();

    let cluster_arg = cluster.to_str().unwrap();
    let (mut receiver, address, lines) = start_receiver(root, "receiver", &out, &cluster);

    let to = address.to_string();
    let mut sender = Running::start(
        root,
        "sender",
        &["send", source.to_str().unwrap(), "--to", &to, "--cluster-dir", cluster_arg],
        false,
    );
    let sent = sender.wait(Duration::from_secs(60));
    assert!(sent.success(), "send: {sent}; stderr: {}", read(root, "sender.stderr"));
    let received = receiver.wait(Duration::from_secs(15));
    assert!(received.success(), "receive: {received}; stderr: {}", read(root, "receiver.stderr"));

    let written = out.join("transfer-1.bin");
    let arrived = std::fs::read(&written).unwrap();
    assert!(arrived == contents, "{} differs from the source ({} bytes)", written.display(), arrived.len());

    let progress = read(root, "sender.stderr");
    assert!(progress.lines().any(|line| line.starts_with("sent 0.0 of 24.0 MiB (0%)")), "{progress}");
    assert!(progress.lines().any(|line| line.starts_with("sent 24.0 of 24.0 MiB (100%)")), "{progress}");
    let delivered = read(root, "sender.stdout");
    assert!(
        delivered.contains(&format!("{FILE_BYTES} bytes")) && delivered.contains("verified by SHA-256"),
        "{delivered}"
    );
    let reported: Vec<String> = lines.try_iter().collect();
    assert!(
        reported.iter().any(|line| line.contains("transfer-1.bin") && line.contains("verified")),
        "{reported:?}"
    );
    let receiver_progress = read(root, "receiver.stderr");
    assert!(receiver_progress.contains("received 24.0 MiB from"), "{receiver_progress}");

    let mut left: Vec<String> = std::fs::read_dir(&cluster)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["octopii-dev-ca"], "the per-run certificate directories are removed");
    let out_files: Vec<_> =
        std::fs::read_dir(&out).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert_eq!(out_files, ["transfer-1.bin"], "no temporary file is left");
}

/// Starts `octopii receive` for one transfer into `out`: the process, its
/// address, and its stdout lines after `listening on`.
fn start_receiver(
    root: &Path,
    name: &'static str,
    out: &Path,
    cluster: &Path,
) -> (Running, SocketAddr, mpsc::Receiver<String>) {
    let args = [
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--out",
        out.to_str().unwrap(),
        "--count",
        "1",
        "--cluster-dir",
    ];
    let args: Vec<&str> = args.into_iter().chain([cluster.to_str().unwrap()]).collect();
    let mut receiver = Running::start(root, name, &args, true);
    let lines = receiver.stdout_lines();
    let listening = lines.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|error| {
        panic!("no `listening on` line ({error}); stderr: {}", read(root, &format!("{name}.stderr")))
    });
    let address = listening
        .strip_prefix("listening on ")
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("not a `listening on` line: {listening}"));
    (receiver, address, lines)
}

#[test]
fn a_file_sent_to_two_receivers_arrives_whole_at_both() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let cluster = root.join("cluster");
    let source = root.join("source.bin");
    let contents = pseudo_random_bytes(FILE_BYTES / 2, 0x5851_f42d_4c95_7f2d);
    std::fs::write(&source, &contents).unwrap();
    let (out_a, out_b) = (root.join("out-a"), root.join("out-b"));
    let (mut receiver_a, address_a, _) = start_receiver(root, "receiver-a", &out_a, &cluster);
    let (mut receiver_b, address_b, _) = start_receiver(root, "receiver-b", &out_b, &cluster);

    let (to_a, to_b) = (address_a.to_string(), address_b.to_string());
    let args = ["send", source.to_str().unwrap(), "--to", &to_a, "--to", &to_b, "--cluster-dir"];
    let args: Vec<&str> = args.into_iter().chain([cluster.to_str().unwrap()]).collect();
    let mut sender = Running::start(root, "sender", &args, false);
    let sent = sender.wait(Duration::from_secs(60));
    assert!(sent.success(), "send: {sent}; stderr: {}", read(root, "sender.stderr"));
    for (receiver, name, out) in
        [(&mut receiver_a, "receiver-a", &out_a), (&mut receiver_b, "receiver-b", &out_b)]
    {
        let received = receiver.wait(Duration::from_secs(15));
        assert!(received.success(), "{name}: {received}; stderr: {}", read(root, &format!("{name}.stderr")));
        let arrived = std::fs::read(out.join("transfer-1.bin")).unwrap();
        assert!(arrived == contents, "{name} wrote other bytes ({} of them)", arrived.len());
    }
    let delivered = read(root, "sender.stdout");
    for address in [address_a, address_b] {
        assert!(
            delivered
                .lines()
                .any(|line| line.contains(&format!("to {address}:")) && line.contains("verified")),
            "{delivered}"
        );
    }
    let progress = read(root, "sender.stderr");
    assert!(progress.lines().any(|line| line.starts_with("sent 24.0 of 24.0 MiB (100%)")), "{progress}");
}

#[test]
fn a_send_that_cannot_happen_fails_with_the_problem_named() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let cluster = root.join("cluster");
    // Nobody answers here: the socket is bound and silent.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap().to_string();
    let present = root.join("present.bin");
    std::fs::write(&present, pseudo_random_bytes(4096, 7)).unwrap();

    let check = |name: &'static str, file: &Path, expected: &[&str]| {
        let started = Instant::now();
        let args = [
            "send",
            file.to_str().unwrap(),
            "--to",
            &silent_address,
            "--cluster-dir",
            cluster.to_str().unwrap(),
        ];
        let mut sender = Running::start(root, name, &args, false);
        let status = sender.wait(Duration::from_secs(FAILURE_SECONDS_MAX));
        let error = read(root, &format!("{name}.stderr"));
        assert!(!status.success(), "{name}: exited with {status}");
        for text in expected {
            assert!(error.contains(text), "{name}: {text:?} not in {error}");
        }
        assert!(read(root, &format!("{name}.stdout")).is_empty(), "{name}: nothing delivered");
        eprintln!("{name}: failed after {:?}", started.elapsed());
    };
    let missing = root.join("missing.bin");
    check("missing", &missing, &["missing.bin", "No such file"]);
    check("unreachable", &present, &["present.bin", &silent_address, "cannot connect", "timed out"]);
    drop(silent);
}
