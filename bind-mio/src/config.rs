//! A node's configuration as an operator writes it: the fields of the
//! spec's `Config`, plus an explicit id map for peers and TLS file paths.
//! Both bindings start a node from it ([`Config::node_options`]).
//!
//! In a TOML file every field is optional (missing ones take the
//! defaults) and unknown fields are refused; an environment variable
//! `OCTOPII_<FIELD>` (for example `OCTOPII_NODE_ID=2`) overrides the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use octopii_core::KernelConfig;
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::StateMachine;
use octopii_core::transport::{MTU_MAX_DEFAULT, MTU_RANGE};
use octopii_core::wal::{WalConfig, WalConfigError};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::identity::{IdentityError, TlsFiles, load_identity, transport_config};
use crate::node::NodeOptions;

/// A node's configuration. `Default` gives the spec's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id: non-zero, unique in the cluster.
    pub node_id: u64,
    /// The UDP address the node listens on (port 0 picks a free one).
    pub bind_addr: SocketAddr,
    /// Where other nodes listen, when their ids are not given: the node
    /// dials each to learn its id, and a leader brings each into the
    /// cluster as a learner, then a voter once caught up.
    pub peers: Vec<SocketAddr>,
    /// Other nodes by id. When given, every node of a new cluster lists the
    /// same members and the cluster starts with all of them as voters
    /// (`is_initial_leader` is then not needed). In TOML, a table whose
    /// keys are the ids: `[peer_ids]` then `2 = "127.0.0.1:5002"`.
    #[serde(with = "id_keys")]
    pub peer_ids: BTreeMap<u64, SocketAddr>,
    /// The directory of the node's log (and of its TLS files when `tls` is
    /// not given). Each node needs its own.
    pub wal_dir: PathBuf,
    /// Threads of the runtime a node makes for itself
    /// (`OctopiiNode::new_blocking`).
    pub worker_threads: usize,
    /// Most log records written in one batch (one sync covers a batch).
    pub wal_batch_size: usize,
    /// A sync taking longer than this many milliseconds is reported.
    /// Batches never wait for it.
    pub wal_flush_interval_ms: u64,
    /// With an empty log: start a new cluster whose only voter is this
    /// node. A node with an empty log and no peers does so too. A node
    /// with state never starts a cluster again.
    pub is_initial_leader: bool,
    /// Entries applied between snapshots (the log before a snapshot is
    /// removed; a peer further behind is sent the snapshot).
    pub snapshot_lag_threshold: u64,
    /// The cluster CA's certificate and this node's certificate and key.
    /// Without them, a development CA is made next to `wal_dir` (see
    /// `octopii_mio::identity`).
    pub tls: Option<TlsPaths>,
    /// Largest UDP payload the node sends and accepts: connections start
    /// at 1200 bytes and probe upwards to it, keeping what the path
    /// carries (see `TransportConfig::mtu_max`). Within `MTU_RANGE`.
    pub mtu_max: u16,
}

/// The PEM files of a node's TLS identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This node's certificate for `node-<id>.octopii`, then intermediates.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8).
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            peers: Vec::new(),
            peer_ids: BTreeMap::new(),
            wal_dir: PathBuf::from("./octopii_data"),
            worker_threads: 4,
            wal_batch_size: 100,
            wal_flush_interval_ms: 100,
            is_initial_leader: false,
            snapshot_lag_threshold: 1000,
            tls: None,
            mtu_max: MTU_MAX_DEFAULT,
        }
    }
}

/// The fields an `OCTOPII_<FIELD>` variable may override.
const FIELDS: [&str; 12] = [
    "node_id",
    "bind_addr",
    "peers",
    "peer_ids",
    "wal_dir",
    "worker_threads",
    "wal_batch_size",
    "wal_flush_interval_ms",
    "is_initial_leader",
    "snapshot_lag_threshold",
    "tls",
    "mtu_max",
];

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field holds a value outside its range.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML text (or an override) does not parse, names an unknown
    /// field or holds a value of the wrong type.
    #[error("config {origin}: {reason}")]
    Parse {
        /// The file or variable.
        origin: String,
        /// The parser's message (with the line for a syntax error).
        reason: String,
    },
    /// The TLS identity could not be read or made.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl Config {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.node_id == 0 {
            return invalid("node_id", "must be non-zero (Raft reserves 0)".into());
        }
        if self.peers.contains(&self.bind_addr) {
            return invalid("peers", format!("lists this node's own bind_addr {}", self.bind_addr));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(duplicate) = self.peers.iter().find(|address| !seen.insert(**address)) {
            return invalid("peers", format!("lists {duplicate} twice"));
        }
        if self.peer_ids.contains_key(&self.node_id) {
            return invalid("peer_ids", format!("lists this node's own id {}", self.node_id));
        }
        if self.peer_ids.contains_key(&0) {
            return invalid("peer_ids", "node id 0 is reserved by Raft".into());
        }
        if self.wal_dir.as_os_str().is_empty() {
            return invalid("wal_dir", "must not be empty".into());
        }
        if self.worker_threads == 0 {
            return invalid("worker_threads", "must be at least 1".into());
        }
        let wal = self.wal_config();
        if let Err(error) = wal.validate() {
            let field = match error {
                WalConfigError::BatchRecords(_) => "wal_batch_size",
                _ => "wal_flush_interval_ms",
            };
            return invalid(field, error.to_string());
        }
        if self.snapshot_lag_threshold == 0 {
            return invalid("snapshot_lag_threshold", "must be at least 1".into());
        }
        if !MTU_RANGE.contains(&self.mtu_max) {
            return invalid("mtu_max", format!("{} is not within {MTU_RANGE:?}", self.mtu_max));
        }
        Ok(())
    }

    /// Parses TOML text, then applies `OCTOPII_<FIELD>` overrides from
    /// `env` (a value is read as TOML, or as a string if it is not TOML),
    /// then validates.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] naming `origin` or the variable,
    /// [`ConfigError::Invalid`].
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse = |origin: &str, error: &dyn std::fmt::Display| ConfigError::Parse {
            origin: origin.to_owned(),
            reason: error.to_string(),
        };
        let mut table: toml::Table = text.parse().map_err(|error: toml::de::Error| parse(origin, &error))?;
        for (name, value) in env {
            let Some(field) = name.strip_prefix("OCTOPII_").map(str::to_ascii_lowercase) else { continue };
            if !FIELDS.contains(&field.as_str()) {
                continue;
            }
            let value = format!("value = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut parsed| parsed.remove("value"))
                .unwrap_or(toml::Value::String(value));
            table.insert(field, value);
        }
        let config: Config = table.try_into().map_err(|error: toml::de::Error| parse(origin, &error))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file, with `OCTOPII_<FIELD>` overrides from the
    /// process environment.
    ///
    /// # Errors
    ///
    /// As [`Config::from_toml`], or [`ConfigError::Read`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, &path.display().to_string(), std::env::vars())
    }

    fn wal_config(&self) -> WalConfig {
        WalConfig {
            batch_records_max: self.wal_batch_size,
            flush_interval: Duration::from_millis(self.wal_flush_interval_ms),
            ..WalConfig::default()
        }
    }

    /// Whether a node with an empty log starts a new cluster (rather than
    /// waiting to be added to one).
    pub fn bootstraps(&self) -> bool {
        self.is_initial_leader || !self.peer_ids.is_empty() || self.peers.is_empty()
    }

    /// Everything a node needs to start from this configuration: its TLS
    /// identity (read, or made by the development CA), a fresh seed, and
    /// `state_machine`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`], or [`ConfigError::Identity`].
    pub fn node_options(&self, state_machine: StateMachine) -> Result<NodeOptions, ConfigError> {
        self.validate()?;
        let files = self.tls.as_ref().map(|tls| TlsFiles {
            ca: tls.ca.clone(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        });
        std::fs::create_dir_all(&self.wal_dir)
            .map_err(|source| ConfigError::Read { path: self.wal_dir.clone(), source })?;
        let identity = load_identity(&self.wal_dir, self.node_id, files.as_ref())?;
        let mut transport = transport_config(self.node_id, identity);
        transport.peers = self.peer_ids.clone();
        transport.mtu_max = self.mtu_max;
        let voters = match (self.bootstraps(), self.peer_ids.is_empty()) {
            (false, _) => Vec::new(),
            (true, true) => vec![self.node_id],
            (true, false) => self.peer_ids.keys().copied().chain([self.node_id]).collect(),
        };
        let node = NodeConfig {
            id: self.node_id,
            voters,
            seed: rand::rng().next_u64(),
            snapshot_lag_threshold: self.snapshot_lag_threshold,
            peer_addresses: self.peers.clone(),
            ..NodeConfig::default()
        };
        let wal = self.wal_config();
        Ok(NodeOptions {
            data_dir: self.wal_dir.clone(),
            bind_addr: self.bind_addr,
            kernel: KernelConfig { wal },
            node,
            transport,
            state_machine,
        })
    }
}

/// TOML keys are strings: node ids are written as such and parsed back.
mod id_keys {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<u64, SocketAddr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(map.iter().map(|(id, address)| (id.to_string(), address)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<u64, SocketAddr>, D::Error> {
        BTreeMap::<String, SocketAddr>::deserialize(deserializer)?
            .into_iter()
            .map(|(id, address)| {
                let id =
                    id.parse().map_err(|_| D::Error::custom(format!("node id `{id}` is not a number")))?;
                Ok((id, address))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn a_file_with_overrides_gives_the_config_and_bad_input_names_its_field() {
        let text = r#"
            node_id = 2
            bind_addr = "127.0.0.1:5002"
            peers = ["127.0.0.1:5001"]
            wal_dir = "/tmp/node2"
            [peer_ids]
            3 = "127.0.0.1:5003"
        "#;
        let overrides = env(&[("OCTOPII_WAL_BATCH_SIZE", "7"), ("OCTOPII_TRACE", "1")]);
        let config = Config::from_toml(text, "node.toml", overrides).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.wal_batch_size, 7);
        assert_eq!(config.peer_ids[&3], "127.0.0.1:5003".parse().unwrap());
        assert_eq!(config.snapshot_lag_threshold, 1000, "missing fields take the defaults");
        let overridden =
            Config::from_toml(text, "node.toml", env(&[("OCTOPII_WAL_DIR", "/data/two")])).unwrap();
        assert_eq!(overridden.wal_dir, PathBuf::from("/data/two"), "a value that is not TOML is a string");

        let unknown = Config::from_toml("node_idd = 2", "node.toml", []).unwrap_err().to_string();
        assert!(unknown.contains("node.toml") && unknown.contains("node_idd"), "{unknown}");
        let huge = Config::from_toml("wal_batch_size = 1000000", "node.toml", []).unwrap_err();
        assert!(matches!(huge, ConfigError::Invalid { field: "wal_batch_size", .. }), "{huge}");
        let zero = Config::from_toml("node_id = 0", "node.toml", []).unwrap_err().to_string();
        assert!(zero.contains("node_id"), "{zero}");
        let own = Config::from_toml(
            "bind_addr = \"127.0.0.1:5001\"\npeers = [\"127.0.0.1:5001\"]",
            "node.toml",
            [],
        )
        .unwrap_err();
        assert!(matches!(own, ConfigError::Invalid { field: "peers", .. }), "{own}");
        let bad_env = Config::from_toml("", "node.toml", env(&[("OCTOPII_NODE_ID", "two")])).unwrap_err();
        assert!(bad_env.to_string().contains("node_id"), "{bad_env}");
        let tiny = Config::from_toml("mtu_max = 1000", "node.toml", []).unwrap_err();
        assert!(matches!(tiny, ConfigError::Invalid { field: "mtu_max", .. }), "{tiny}");
        let ethernet = Config::from_toml("", "node.toml", env(&[("OCTOPII_MTU_MAX", "1452")])).unwrap();
        assert_eq!(ethernet.mtu_max, 1452);
    }

    #[test]
    fn the_datagram_bound_reaches_the_transport() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { wal_dir: dir.path().join("node"), mtu_max: 1452, ..Config::default() };
        let state_machine =
            std::sync::Arc::new(octopii_core::raft::state_machine::KvStateMachine::in_memory());
        assert_eq!(config.node_options(state_machine).unwrap().transport.mtu_max, 1452);
    }

    #[test]
    fn who_bootstraps_a_new_cluster() {
        let joining = Config { peers: vec!["127.0.0.1:5001".parse().unwrap()], ..Config::default() };
        assert!(!joining.bootstraps());
        assert!(Config { is_initial_leader: true, ..joining.clone() }.bootstraps());
        assert!(Config::default().bootstraps(), "a node without peers is a cluster of one");
        let mut static_members = joining;
        static_members.peer_ids.insert(2, "127.0.0.1:5002".parse().unwrap());
        assert!(static_members.bootstraps());
    }
}
