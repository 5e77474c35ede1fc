//! The run's trace: every input, output and injected fault in a stable text
//! form, folded into a CRC32 so that two runs of one seed can be compared by
//! a single number, with the last lines kept for violation reports.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use octopii_core::disk::{DiskDone, DiskFailure, DiskOp};
use octopii_core::transport::Delivery;
use octopii_core::{Command, Input, Output, Reply};

/// How many of the latest trace lines a run keeps for its report.
pub const TRACE_TAIL_LINES_MAX: usize = 48;

/// A running hash over trace lines, plus the latest lines.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    hasher: crc32fast::Hasher,
    lines: u64,
    tail: VecDeque<String>,
    echo: bool,
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// A trace that also prints every line to standard error as it comes.
    pub fn echoing() -> Self {
        Self { echo: true, ..Self::default() }
    }

    /// Adds one line, stamped with virtual time.
    pub fn record(&mut self, at: Duration, line: &str) {
        let stamped = format!("{:>12}ns {line}", at.as_nanos());
        self.hasher.update(stamped.as_bytes());
        self.hasher.update(b"\n");
        self.lines += 1;
        if self.echo {
            eprintln!("{stamped}");
        }
        if self.tail.len() == TRACE_TAIL_LINES_MAX {
            self.tail.pop_front();
        }
        self.tail.push_back(stamped);
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    /// How many lines were recorded.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The latest lines, oldest first (at most [`TRACE_TAIL_LINES_MAX`]).
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

/// A short, stable description of bytes: length and checksum.
fn bytes_digest(bytes: &[u8]) -> String {
    format!("len={} crc={:08x}", bytes.len(), crc32fast::hash(bytes))
}

/// Describes a disk operation without dumping its data.
pub fn describe_op(op: &DiskOp) -> String {
    match op {
        DiskOp::Write { io, file, offset, data } => {
            format!("write io={} {file} at={offset} {}", io.0, bytes_digest(data))
        }
        other => format!("{other:?}"),
    }
}

/// Describes the result of a disk operation without dumping read data.
pub fn describe_result(result: &Result<DiskDone, DiskFailure>) -> String {
    match result {
        Ok(DiskDone::Read(bytes)) => format!("read {}", bytes_digest(bytes)),
        other => format!("{other:?}"),
    }
}

/// Describes a kernel input.
pub fn describe_input(input: &Input) -> String {
    match input {
        Input::Command { id, command: Command::Append(payload) } => {
            format!("cmd#{} append {}", id.0, bytes_digest(payload))
        }
        Input::Command { id, command } => format!("cmd#{} {command:?}", id.0),
        Input::Disk(completion) => {
            format!("done io={} {}", completion.io.0, describe_result(&completion.result))
        }
        Input::Message { from, message } => format!("msg from={from} {}", bytes_digest(message)),
        Input::Datagrams(datagrams) => {
            let mut text = String::from("datagrams");
            for (from, data) in datagrams {
                let _ = write!(text, " from={from} {}", bytes_digest(data));
            }
            text
        }
        Input::FileRead { transfer, result: Ok(read) } => {
            format!("file read transfer={} {}", transfer.0, bytes_digest(&read.data))
        }
        Input::FileRead { transfer, result: Err(error) } => {
            format!("file read transfer={} {error}", transfer.0)
        }
        Input::DeliveriesTaken(room) => {
            format!("deliveries taken pieces={} messages={}", room.pieces, room.messages)
        }
        Input::Timeout => String::from("timeout"),
    }
}

/// Describes a kernel output.
pub fn describe_output(output: &Output) -> String {
    match output {
        Output::Disk(op) => format!("op {}", describe_op(op)),
        Output::Reply { id, reply: Reply::Entries(Ok(entries)) } => {
            let mut hasher = crc32fast::Hasher::new();
            let mut text = format!("reply#{} entries n={}", id.0, entries.len());
            for entry in entries {
                hasher.update(&entry.seq.to_le_bytes());
                hasher.update(&entry.payload);
            }
            let _ = write!(text, " crc={:08x}", hasher.finalize());
            if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                let _ = write!(text, " seqs={}..={}", first.seq, last.seq);
            }
            text
        }
        Output::Reply { id, reply } => format!("reply#{} {reply:?}", id.0),
        Output::Event(event) => format!("event {event:?}"),
        Output::Send { to, message } => format!("send to={to} {}", bytes_digest(message)),
        Output::Transmit(transmit) => {
            format!("transmit to={} {}", transmit.destination, bytes_digest(&transmit.contents))
        }
        Output::Delivery(Delivery::ChunkData { transfer, data }) => {
            format!("chunk data transfer={} {}", transfer.0, bytes_digest(data))
        }
        Output::Delivery(Delivery::Data { from, data }) => format!("data from={from} {}", bytes_digest(data)),
        Output::Delivery(delivery) => format!("delivery {delivery:?}"),
        Output::ReadFile { transfer, path, offset, len } => {
            format!("read file transfer={} {} at={offset} len={len}", transfer.0, path.display())
        }
    }
}
