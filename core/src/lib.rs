//! Octopii's core: every protocol decision of a node, and no I/O.
//!
//! This crate never touches a file, a socket, a thread, the clock or the
//! operating system's randomness. Time enters as the `now` argument of
//! [`Kernel::handle_input`]; randomness enters as seeds in the configuration
//! (`NodeConfig::seed`, `TransportConfig::seed`). Work that needs
//! the outside world leaves as an [`Output`] (such as a [`disk::DiskOp`]) for a
//! binding to execute, and its result comes back as an [`Input`]. The same
//! inputs therefore always produce the same outputs, which is what lets the
//! simulator replay a run from its seed. `core/clippy.toml` turns any use of
//! `std::fs`, `std::net`, `std::thread::spawn`, `std::env::var`,
//! `Instant::now`, `SystemTime::now` or OS randomness into a lint error.
//!
//! The bindings are `octopii` (tokio), `octopii-mio` (a blocking loop) and
//! `octopii-sim` (the deterministic simulator).

pub mod client;
pub mod disk;
pub mod fanout;
pub mod formation;
pub mod kernel;
pub mod node;
pub mod raft;
pub mod transport;
pub mod wal;

pub use kernel::{
    Command, CommandId, Event, Input, Kernel, KernelConfig, KernelConfigError, Output, Reply, TimerReason,
};
pub use node::{Membership, NodeStatus, PeerProgress};
