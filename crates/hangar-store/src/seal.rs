//! Encryption at rest for secret values and webhook signing secrets.
//!
//! XChaCha20-Poly1305 with a 32-byte key kept in the data dir (readable only by its
//! owner). Each value is sealed with a fresh random nonce and with its owner and
//! name as associated data, so a sealed value copied into another row — another
//! organization's, or another secret's — fails to open instead of leaking.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key is not 32 bytes.
    #[error("the secret key must be 32 bytes")]
    BadKey,
    /// The sealed text is damaged, was sealed with another key, or belongs to
    /// another row.
    #[error("a sealed value could not be opened (wrong key or damaged data)")]
    Open,
}

/// Seals and opens values with one key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    /// A sealer over a 32-byte key.
    pub fn new(key: &[u8]) -> Result<Self, SealError> {
        let cipher = XChaCha20Poly1305::new_from_slice(key).map_err(|_| SealError::BadKey)?;
        Ok(Self { cipher })
    }

    /// A fresh random key.
    #[must_use]
    pub fn generate_key() -> [u8; 32] {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        key
    }

    /// Seals `plaintext`, bound to `context` (who owns it and what it is).
    pub fn seal(&self, context: &str, plaintext: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(B64.encode(out))
    }

    /// Opens what [`Sealer::seal`] sealed with the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, SealError> {
        let bytes = B64.decode(sealed).map_err(|_| SealError::Open)?;
        if bytes.len() < 24 {
            return Err(SealError::Open);
        }
        let (nonce, body) = bytes.split_at(24);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(&Sealer::generate_key()).expect("key");
        let sealed = s.seal("org_a/API", "hunter2").expect("seal");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(s.open("org_a/API", &sealed).expect("open"), "hunter2");
        assert!(s.open("org_b/API", &sealed).is_err(), "bound to its row");
        let other = Sealer::new(&Sealer::generate_key()).expect("key");
        assert!(
            other.open("org_a/API", &sealed).is_err(),
            "bound to its key"
        );
        assert!(s.open("org_a/API", "garbage").is_err());
        assert!(Sealer::new(&[0u8; 5]).is_err());
    }
}
