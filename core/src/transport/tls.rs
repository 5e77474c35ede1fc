//! Mutual TLS between nodes: every node holds a certificate issued by the
//! cluster's CA for the name `node-<id>.octopii`, presents it on every
//! connection and checks the peer's against the same CA.
//!
//! Certificates are Ed25519: signing is deterministic, so the simulator can
//! replay a handshake byte for byte. [`DevCa`] makes a CA and node
//! certificates from seeds the caller draws (the core draws no randomness).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// The protocol name both ends must offer.
pub const ALPN: &[u8] = b"octopii";

/// The DNS name a node's certificate must hold.
#[must_use]
pub fn node_name(node_id: u64) -> String {
    format!("node-{node_id}.octopii")
}

/// A node's credentials: the cluster CA it trusts, and its own certificate
/// chain and private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The cluster CA's certificate.
    pub ca: CertificateDer<'static>,
    /// The node's certificate, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl TlsIdentity {
    /// Reads PEM text: the CA certificate, the node's chain, its key.
    ///
    /// # Errors
    ///
    /// A PEM input without the expected item, naming which one.
    pub fn from_pem(ca: &[u8], chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let pem = |what: &'static str| {
            move |error: rustls::pki_types::pem::Error| TlsError::Pem { what, reason: error.to_string() }
        };
        let ca = CertificateDer::from_pem_slice(ca).map_err(pem("CA certificate"))?;
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem("certificate chain"))?;
        if chain.is_empty() {
            return Err(TlsError::Pem { what: "certificate chain", reason: "no certificate".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem("private key"))?;
        Ok(Self { ca, chain, key })
    }
}

/// Why TLS could not be set up or a peer's identity was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// PEM input lacks an item or does not parse.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// rustls or quinn refused the configuration.
    #[error("tls configuration: {0}")]
    Config(String),
    /// A certificate could not be made.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// A peer's certificate does not name the node it claims to be.
    #[error("certificate does not belong to node {claimed}: {reason}")]
    WrongIdentity {
        /// The node id the peer claimed.
        claimed: u64,
        /// Why the certificate does not match.
        reason: String,
    },
}

/// The rustls configurations of one node, both directions.
pub(crate) struct TlsConfigs {
    pub(crate) server: rustls::ServerConfig,
    /// For dialing a known node: rustls checks the certificate names it.
    pub(crate) client: rustls::ClientConfig,
    /// For dialing an address: the certificate must come from the cluster
    /// CA, and the node it names is checked against the hello the dialed
    /// node sends (see [`check_identity`]).
    pub(crate) any_node_client: rustls::ClientConfig,
}

/// Builds TLS 1.3 configurations that require and verify certificates from
/// the cluster CA on both sides.
pub(crate) fn configs(
    identity: &TlsIdentity,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    time: &Arc<dyn rustls::time_provider::TimeProvider>,
) -> Result<TlsConfigs, TlsError> {
    let config_error = |error: rustls::Error| TlsError::Config(error.to_string());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity.ca.clone()).map_err(config_error)?;
    let roots = Arc::new(roots);
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_details(provider.clone(), time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_details(provider.clone(), time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let anchor = webpki::anchor_from_trusted_cert(&identity.ca)
        .map_err(|error| TlsError::Config(format!("CA certificate: {error}")))?
        .to_owned();
    let any_node = AnyNodeVerifier { roots: vec![anchor], provider: provider.clone() };
    let mut any_node_client = rustls::ClientConfig::builder_with_details(provider.clone(), time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(any_node))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    any_node_client.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsConfigs { server, client, any_node_client })
}

/// Accepts a server certificate that chains to the cluster CA, whatever
/// node it names: the name is checked once the node says who it is.
#[derive(Debug)]
struct AnyNodeVerifier {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AnyNodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let invalid = |error: webpki::Error| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                error,
            ))))
        };
        let certificate = webpki::EndEntityCert::try_from(end_entity).map_err(invalid)?;
        certificate
            .verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                &self.roots,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(invalid)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, certificate, signature, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, certificate, signature, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks that a peer's end-entity certificate (already verified against
/// the CA by rustls) names node `claimed`.
pub(crate) fn check_identity(certificate: &CertificateDer<'_>, claimed: u64) -> Result<(), TlsError> {
    let wrong = |reason: String| TlsError::WrongIdentity { claimed, reason };
    let certificate =
        webpki::EndEntityCert::try_from(certificate).map_err(|error| wrong(error.to_string()))?;
    let name = ServerName::try_from(node_name(claimed)).map_err(|error| wrong(error.to_string()))?;
    certificate.verify_is_valid_for_subject_name(&name).map_err(|error| wrong(error.to_string()))
}

/// A development certificate authority, made from a seed. Production
/// clusters bring their own CA; see `docs/transport.md`.
pub struct DevCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    certificate: rcgen::Certificate,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// An Ed25519 key from a 32-byte seed, as PKCS#8 v1 (RFC 8410).
fn ed25519_key(seed: [u8; 32]) -> Result<rcgen::KeyPair, TlsError> {
    const PKCS8_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let der = PrivatePkcs8KeyDer::from(der);
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(|error| TlsError::Generate(error.to_string()))
}

impl DevCa {
    /// A CA whose key is derived from `seed`: the same seed gives the same
    /// CA, byte for byte.
    ///
    /// # Errors
    ///
    /// rcgen refused the parameters (not expected).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, TlsError> {
        let generate = |error: rcgen::Error| TlsError::Generate(error.to_string());
        let key = ed25519_key(seed)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "octopii development CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).map_err(generate)?;
        Ok(Self { params, key, certificate })
    }

    /// The CA certificate in PEM.
    #[must_use]
    pub fn certificate_pem(&self) -> String {
        self.certificate.pem()
    }

    /// Issues node `node_id` a certificate for [`node_name`] with a key
    /// derived from `key_seed`, as PEM text to store.
    ///
    /// # Errors
    ///
    /// rcgen refused the parameters (not expected).
    pub fn issue(&self, node_id: u64, key_seed: [u8; 32]) -> Result<NodeCertificate, TlsError> {
        let generate = |error: rcgen::Error| TlsError::Generate(error.to_string());
        let key = ed25519_key(key_seed)?;
        let mut params = rcgen::CertificateParams::new(vec![node_name(node_id)]).map_err(generate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, node_name(node_id));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).map_err(generate)?;
        Ok(NodeCertificate { chain_pem: certificate.pem(), key_pem: key.serialize_pem() })
    }

    /// [`DevCa::issue`], parsed into the identity a transport takes.
    ///
    /// # Errors
    ///
    /// As [`DevCa::issue`].
    pub fn identity(&self, node_id: u64, key_seed: [u8; 32]) -> Result<TlsIdentity, TlsError> {
        let issued = self.issue(node_id, key_seed)?;
        TlsIdentity::from_pem(
            self.certificate_pem().as_bytes(),
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
    }
}

/// A node certificate and its key, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertificate {
    /// The certificate.
    pub chain_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}
