//! Octopii on tokio: the API an application embeds.
//!
//! Every decision is made by the sans-IO core ([`octopii_core`]); this crate
//! runs it on a tokio task, executes its disk work on a dedicated thread, and
//! hands answers back to async callers.
//!
//! So far it offers the write-ahead log ([`WriteAheadLog`]) and a
//! replicated node driven by commands ([`NodeLoop`]).

mod error;
mod node_loop;
mod wal;

pub use error::{OctopiiError, Result};
pub use node_loop::NodeLoop;
pub use octopii_core::wal::{RecoveryReport, TornTail, WalConfig, WalEntry, WalError, WalStats};
pub use octopii_mio::NodeOptions;
pub use octopii_mio::driver::Delivery;
pub use wal::WriteAheadLog;
