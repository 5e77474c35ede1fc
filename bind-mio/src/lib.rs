//! Octopii on a blocking `mio` event loop: no async runtime anywhere.
//!
//! The loop thread owns the core's [`Kernel`](octopii_core::Kernel) and
//! waits in [`mio::Poll`] with the kernel's next timeout; callers' commands
//! and the disk thread's completions wake it through a [`mio::Waker`].
//!
//! [`BlockingNode`] is the replicated node from plain threads, started
//! from a [`Config`]; [`Node`] is the same loop driven by raw kernel
//! commands, and [`WriteAheadLog`] the log on its own.
//!
//! This crate also holds the pieces every real binding shares: the file
//! executor ([`disk::FileDisk`], [`disk::DiskThread`]) and the loop body
//! ([`driver::Driver`]); the tokio binding reuses them.

mod blocking;
pub mod config;
pub mod disk;
pub mod driver;
pub mod identity;
pub mod node;
mod wal;

pub use blocking::{BlockingError, BlockingNode, ConfStateCompat};
pub use config::{Config, ConfigError, TlsPaths};
pub use node::{LoopError, Node, NodeOptions};
pub use octopii_core::wal::{RecoveryReport, WalConfig, WalEntry, WalError, WalStats};
pub use wal::{Error, WriteAheadLog};
