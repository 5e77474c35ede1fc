//! Where a node's TLS identity comes from: PEM files the operator gives, or
//! a development CA made on first use.
//!
//! The development CA lives next to the data directories, in
//! `<parent of data dir>/octopii-dev-ca/`, so nodes whose data directories
//! are siblings (the usual layout of a cluster on one machine) trust each
//! other without any setup. Each node keeps its own certificate and key in
//! `<data dir>/tls/`. The CA's key seed is stored in the clear with mode
//! 0600: anyone who can read it can join the cluster. Production clusters
//! give [`TlsFiles`] instead.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use octopii_core::transport::TransportConfig;
use octopii_core::transport::tls::{DevCa, TlsError, TlsIdentity};
use rand::RngCore;

/// The PEM files of a node's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This node's certificate (then any intermediates), for
    /// `node-<id>.octopii`.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8).
    pub key: PathBuf,
}

/// Why a node's identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The PEM contents or the certificate generation failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The stored development CA seed is damaged.
    #[error("{0}: not a 32-byte hex seed")]
    BadSeed(PathBuf),
}

/// The transport settings of a production node: `identity`, ring's
/// cryptography, the system clock, a seed from the operating system, and
/// the defaults of [`TransportConfig::new`].
#[must_use]
pub fn transport_config(node_id: u64, identity: TlsIdentity) -> TransportConfig {
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let time = Arc::new(rustls::time_provider::DefaultTimeProvider);
    TransportConfig::new(node_id, identity, crypto, time, random_seed())
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_path_buf(), source }
}

/// The identity of node `node_id`: read from `files` if given, otherwise
/// the development CA's (see the module documentation), made on first use.
///
/// # Errors
///
/// Unreadable or invalid PEM, or files that cannot be written.
pub fn load_identity(
    data_dir: &Path,
    node_id: u64,
    files: Option<&TlsFiles>,
) -> Result<TlsIdentity, IdentityError> {
    if let Some(files) = files {
        let read = |path: &Path| fs::read(path).map_err(io_error(path));
        return Ok(TlsIdentity::from_pem(&read(&files.ca)?, &read(&files.cert)?, &read(&files.key)?)?);
    }
    let parent = data_dir.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let ca_dir = parent.join("octopii-dev-ca");
    fs::create_dir_all(&ca_dir).map_err(io_error(&ca_dir))?;
    let ca = DevCa::from_seed(shared_seed(&ca_dir.join("ca.seed"))?)?;
    let ca_pem = ca.certificate_pem();

    let tls_dir = data_dir.join("tls");
    fs::create_dir_all(&tls_dir).map_err(io_error(&tls_dir))?;
    let (ca_copy, cert_path, key_path) =
        (tls_dir.join("ca.pem"), tls_dir.join("node.pem"), tls_dir.join("node.key"));
    // A certificate from another CA (the shared one was removed) or for
    // another id is replaced.
    let current = fs::read_to_string(&ca_copy).is_ok_and(|stored| stored == ca_pem)
        && fs::read_to_string(tls_dir.join("node.id"))
            .is_ok_and(|stored| stored.trim() == node_id.to_string());
    if !current {
        let issued = ca.issue(node_id, random_seed())?;
        write_private(&key_path, issued.key_pem.as_bytes())?;
        fs::write(&cert_path, issued.chain_pem).map_err(io_error(&cert_path))?;
        fs::write(&ca_copy, &ca_pem).map_err(io_error(&ca_copy))?;
        let id_path = tls_dir.join("node.id");
        fs::write(&id_path, node_id.to_string()).map_err(io_error(&id_path))?;
    }
    let read = |path: &Path| fs::read(path).map_err(io_error(path));
    Ok(TlsIdentity::from_pem(ca_pem.as_bytes(), &read(&cert_path)?, &read(&key_path)?)?)
}

/// Reads the seed at `path`, or creates it. Nodes starting at once race
/// here: each writes a candidate file and links it into place, which
/// succeeds for exactly one; the others read the winner's.
fn shared_seed(path: &Path) -> Result<[u8; 32], IdentityError> {
    if !path.exists() {
        let candidate =
            path.with_extension(format!("{}.{:016x}", std::process::id(), rand::rng().next_u64()));
        let hex: String = random_seed().iter().map(|byte| format!("{byte:02x}")).collect();
        write_private(&candidate, hex.as_bytes())?;
        let linked = fs::hard_link(&candidate, path);
        let _ = fs::remove_file(&candidate);
        match linked {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(IdentityError::Io { path: path.to_path_buf(), source: error }),
        }
    }
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let text = text.trim();
    let mut seed = [0; 32];
    if text.len() != 64 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(IdentityError::BadSeed(path.to_path_buf()));
    }
    for (index, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16)
            .map_err(|_| IdentityError::BadSeed(path.to_path_buf()))?;
    }
    Ok(seed)
}

fn random_seed() -> [u8; 32] {
    let mut seed = [0; 32];
    rand::rng().fill_bytes(&mut seed);
    seed
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(contents).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_data_dirs_share_a_dev_ca_and_keep_their_certificates() {
        let root = tempfile::tempdir().unwrap();
        let (dir_1, dir_2) = (root.path().join("node-1"), root.path().join("node-2"));
        let first = load_identity(&dir_1, 1, None).unwrap();
        let second = load_identity(&dir_2, 2, None).unwrap();
        assert_eq!(first.ca, second.ca, "one CA for both");
        assert_ne!(first.chain, second.chain);
        let again = load_identity(&dir_1, 1, None).unwrap();
        assert_eq!(again.chain, first.chain, "a restart keeps the certificate");
        let renamed = load_identity(&dir_1, 7, None).unwrap();
        assert_ne!(renamed.chain, first.chain, "another id gets another certificate");

        let files = TlsFiles {
            ca: dir_2.join("tls/ca.pem"),
            cert: dir_2.join("tls/node.pem"),
            key: dir_2.join("tls/node.key"),
        };
        let from_files = load_identity(&root.path().join("elsewhere"), 2, Some(&files)).unwrap();
        assert_eq!(from_files.chain, second.chain);
        let missing = TlsFiles { key: root.path().join("missing.key"), ..files };
        let error = load_identity(&dir_2, 2, Some(&missing)).unwrap_err();
        assert!(error.to_string().contains("missing.key"), "{error}");
    }

    #[test]
    fn a_damaged_ca_seed_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("octopii-dev-ca")).unwrap();
        let seed = root.path().join("octopii-dev-ca/ca.seed");
        // 64 bytes each: a two-byte character across a hex pair, and a
        // letter that is no hex digit.
        for text in [format!("0\u{e9}{}", "0".repeat(61)), format!("g{}", "0".repeat(63))] {
            assert_eq!(text.len(), 64);
            std::fs::write(&seed, &text).unwrap();
            let error = load_identity(&root.path().join("node-1"), 1, None).unwrap_err();
            assert!(matches!(&error, IdentityError::BadSeed(path) if *path == seed), "{error}");
        }
    }

    #[test]
    fn nodes_starting_at_once_agree_on_one_ca() {
        let root = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (1..=8u64)
            .map(|id| {
                let dir = root.path().join(format!("node-{id}"));
                std::thread::spawn(move || load_identity(&dir, id, None).unwrap().ca)
            })
            .collect();
        let cas: Vec<_> = threads.into_iter().map(|thread| thread.join().unwrap()).collect();
        assert!(cas.windows(2).all(|pair| pair[0] == pair[1]));
    }
}
