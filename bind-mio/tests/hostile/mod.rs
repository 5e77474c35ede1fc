//! A hostile peer for the binding tests: a plain quinn client that holds a
//! certificate the cluster's CA really issued, and writes whatever bytes a
//! test asks for on the streams a node reads, past the core's encoders.
//! Shared by the tests of octopii-mio and octopii (`#[path]`); it runs on
//! tokio, as quinn does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use octopii_core::transport::frame::Frame;
use octopii_core::transport::tls::{ALPN, DevCa, TlsIdentity, node_name};

/// How long a node may take to react to hostile bytes: far below the idle
/// timeout (10 s), so a close seen within it is the node's decision.
pub const REACTION_MAX: Duration = Duration::from_secs(5);

/// The close code of a connection that broke the protocol
/// (`CLOSE_PROTOCOL` in core/src/transport/mod.rs).
pub const CLOSE_PROTOCOL: u32 = 1;

/// A connection to a node, identified by a hello, with the message stream
/// open for more bytes.
pub struct HostilePeer {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    messages: quinn::SendStream,
}

impl HostilePeer {
    /// Dials node `node` at `address` with `identity` and says hello as
    /// `claimed`.
    ///
    /// # Panics
    ///
    /// If the handshake fails: the identity is meant to be valid.
    pub async fn connect(identity: &TlsIdentity, claimed: u64, node: u64, address: SocketAddr) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.ca.clone()).expect("the CA certificate parses");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring offers TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .expect("the key belongs to the certificate");
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .expect("ring offers the suite of QUIC initial packets");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connecting = endpoint.connect(address, &node_name(node)).unwrap();
        let connection = tokio::time::timeout(REACTION_MAX, connecting)
            .await
            .expect("handshake timed out")
            .expect("a certificate of the cluster's CA is accepted");
        let mut messages = connection.open_uni().await.unwrap();
        messages.write_all(&Frame::Hello { node_id: claimed }.encode()).await.unwrap();
        Self { endpoint, connection, messages }
    }

    /// Writes raw bytes on the message stream, after the hello. Fails once
    /// the node has closed the connection.
    pub async fn write_messages(&mut self, bytes: &[u8]) -> Result<(), quinn::WriteError> {
        self.messages.write_all(bytes).await
    }

    /// Waits for the node to close the connection, and says why.
    ///
    /// # Panics
    ///
    /// If the connection is still open after [`REACTION_MAX`].
    pub async fn closed(&self) -> quinn::ConnectionError {
        tokio::time::timeout(REACTION_MAX, self.connection.closed())
            .await
            .expect("the node kept the connection")
    }

    /// Sends a Shipping Lane transfer for the application (purpose 0) on a
    /// stream of its own, `body` followed by `digest` whatever it is, and
    /// returns what the node answered: its status byte, then the end of
    /// the stream.
    ///
    /// The answer is read to its end: quinn stops (STOP_SENDING) a stream
    /// dropped before its end was read, and a node may close the whole
    /// connection for that ("stream stopped").
    pub async fn transfer(&self, body: &[u8], digest: [u8; 32]) -> Vec<u8> {
        let exchange = async {
            let (mut send, mut receive) = self.connection.open_bi().await?;
            send.write_all(&[0]).await?;
            send.write_all(&(body.len() as u64).to_be_bytes()).await?;
            send.write_all(body).await?;
            send.write_all(&digest).await?;
            send.finish()?;
            // Room for more than the one byte expected, to see it if sent.
            Ok::<_, Box<dyn std::error::Error>>(receive.read_to_end(16).await?)
        };
        match tokio::time::timeout(REACTION_MAX, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => panic!("transfer failed: {error:?}"),
            Err(_) => panic!("no status byte within {REACTION_MAX:?}"),
        }
    }

    /// Sends a valid transfer of `body` but stops its answer direction
    /// first, as quinn does for a stream dropped unread; waits until the
    /// node has taken the whole transfer.
    pub async fn transfer_ignoring_status(&self, body: &[u8], digest: [u8; 32]) {
        let exchange = async {
            let (mut send, mut receive) = self.connection.open_bi().await?;
            receive.stop(0u32.into())?;
            send.write_all(&[0]).await?;
            send.write_all(&(body.len() as u64).to_be_bytes()).await?;
            send.write_all(body).await?;
            send.write_all(&digest).await?;
            send.finish()?;
            let _ = send.stopped().await;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        match tokio::time::timeout(REACTION_MAX, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("transfer failed: {error:?}"),
            Err(_) => panic!("transfer not taken within {REACTION_MAX:?}"),
        }
    }

    /// Opens a transfer for the application announcing `size` body bytes
    /// and sends `part` of the body; the transfer stays unfinished while
    /// the returned streams live.
    pub async fn begin_transfer(&self, size: u64, part: &[u8]) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, receive) = self.connection.open_bi().await.unwrap();
        send.write_all(&[0]).await.unwrap();
        send.write_all(&size.to_be_bytes()).await.unwrap();
        send.write_all(part).await.unwrap();
        (send, receive)
    }

    /// Whether the node has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// Closes the connection and waits until the node has been told.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// Asserts that the node closed `error`'s connection for breaking the
/// protocol.
pub fn assert_closed_for_protocol(error: &quinn::ConnectionError) {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_PROTOCOL.into(), "closed for another reason: {close}")
        }
        other => panic!("connection ended without the node's protocol close: {other}"),
    }
}

/// Identities no cluster node may accept, each with what it is: node
/// `claimed`'s name certified by another CA, trusting that CA or (which gets
/// the handshake as far as the node's check of the client certificate) the
/// cluster's own.
pub fn stranger_identities(cluster_ca: &DevCa, claimed: u64) -> Vec<(&'static str, TlsIdentity)> {
    let other_ca = DevCa::from_seed([0xee; 32]).unwrap();
    let forged = other_ca.identity(claimed, [0xef; 32]).unwrap();
    let cluster_root = cluster_ca.identity(claimed, [0xef; 32]).unwrap().ca;
    vec![
        ("a certificate of another CA", forged.clone()),
        (
            "a certificate of another CA, trusting the cluster's CA",
            TlsIdentity { ca: cluster_root, ..forged },
        ),
    ]
}

/// A field of `/proc/self/status` in bytes: `VmRSS` (resident now) or
/// `VmPeak` (the largest the address space has been, so that a huge
/// allocation shows even if it was never touched, or was freed since).
pub fn process_memory_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux has /proc/self/status");
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().expect("sizes are in kB");
    kib * 1024
}

/// The 4 GiB length prefix test's frame: a header announcing
/// `u32::MAX` bytes of `Data` (kind 6), then some of them.
pub fn four_gib_frame() -> Vec<u8> {
    let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 6];
    bytes.extend(std::iter::repeat_n(0x5a, 4096));
    bytes
}

/// How much resident memory the node may gain from the hostile frame.
pub const RESIDENT_GROWTH_MAX: u64 = 64 << 20;
/// How much the address space may have grown at its peak: far below the
/// 4 GiB the header announces, far above what threads of tests running
/// alongside reserve.
pub const PEAK_GROWTH_MAX: u64 = 2 << 30;
