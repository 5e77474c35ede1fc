//! A deterministic TLS crypto provider, for the simulator only.
//!
//! rustls with ring draws randomness in three places the core cannot
//! reach: the provider's `secure_random` (hello randoms, ticket nonces),
//! ring's X25519 key generation (which calls the OS directly), and ECDSA
//! signatures. This provider replaces the first two with a seeded
//! generator and an X25519 group on x25519-dalek; node certificates are
//! Ed25519 (`octopii_core::transport::tls::DevCa`), whose signatures are
//! deterministic. With the transport's own seed, a QUIC session between
//! simulated nodes is then the same bytes in every run of the same seed.
//!
//! Never use it outside the simulator: its "randomness" is predictable.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::pki_types::UnixTime;
use rustls::{NamedGroup, PeerMisbehaved};

thread_local! {
    /// The provider's generator. `'static` providers cannot carry state, so
    /// it lives here; every simulated node of a run shares it, drawing in
    /// the run's deterministic event order.
    static RNG: RefCell<ChaCha20Rng> = RefCell::new(ChaCha20Rng::seed_from_u64(0));
}

/// Restarts the generator of this thread from `seed`; call it at the start
/// of every simulated run.
pub fn reseed(seed: u64) {
    RNG.with(|rng| *rng.borrow_mut() = ChaCha20Rng::seed_from_u64(seed));
}

fn fill(bytes: &mut [u8]) {
    RNG.with(|rng| rng.borrow_mut().fill_bytes(bytes));
}

#[derive(Debug)]
struct SeededRandom;

impl SecureRandom for SeededRandom {
    fn fill(&self, bytes: &mut [u8]) -> Result<(), GetRandomFailed> {
        fill(bytes);
        Ok(())
    }
}

#[derive(Debug)]
struct SeededX25519;

struct X25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut bytes = [0; 32];
        fill(&mut bytes);
        let secret = x25519_dalek::StaticSecret::from(bytes);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] =
            peer.try_into().map_err(|_| rustls::Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

static SEEDED_RANDOM: SeededRandom = SeededRandom;
static SEEDED_X25519: SeededX25519 = SeededX25519;

/// ring's provider with seeded randomness and key exchange.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.secure_random = &SEEDED_RANDOM;
    provider.kx_groups = vec![&SEEDED_X25519];
    Arc::new(provider)
}

/// The simulator's wall clock for certificate checks: a fixed date inside
/// the development certificates' validity.
#[derive(Debug)]
pub struct SimWallClock;

impl rustls::time_provider::TimeProvider for SimWallClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)))
    }
}
