//! Encryption at rest for secret values and webhook signing secrets, and the
//! check that every server on one database holds the same key.
//!
//! XChaCha20-Poly1305 with a 32-byte key from the server's configuration, or
//! kept in its data dir (readable only by its owner). Each value is sealed with
//! a fresh random nonce and with its owner and name as associated data, so a
//! sealed value copied into another row — another organization's, or another
//! secret's — fails to open instead of leaking.
//!
//! Several servers on one PostgreSQL must seal with one key: a secret sealed by
//! one must open on the others. The store keeps a [`fingerprint`] of the key
//! (an HMAC of a fixed label under it, which does not give the key away) in
//! `key_fingerprints`; the first server writes it and every later one
//! compares ([`crate::Store::claim_key_fingerprint`]), so a server started
//! with another key refuses to start instead of sealing what no other server
//! can open.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::{now_ms, RowExt, Store};

/// The label a key's [`fingerprint`] is the HMAC of: fixed, so one key
/// always gives one fingerprint.
const FINGERPRINT_LABEL: &[u8] = b"hangar key fingerprint v1";

/// The fingerprint of `key` (hex): HMAC-SHA256 of a fixed label under it.
/// Two keys with one fingerprint are the same key, for all practical
/// purposes; the fingerprint tells nothing of the key.
#[must_use]
pub fn fingerprint(key: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(FINGERPRINT_LABEL);
    hex::encode(mac.finalize().into_bytes())
}

/// What [`Store::claim_key_fingerprint`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// No server had recorded this key's name: this one's fingerprint is now
    /// the store's.
    Recorded,
    /// The store has this fingerprint already.
    Matches,
    /// The store has another fingerprint under this name: the key differs
    /// from the one the first server used.
    Differs {
        /// The node that recorded the store's fingerprint.
        recorded_by: String,
        /// When (store time).
        recorded_at: hangar_core::model::Timestamp,
    },
}

impl Store {
    /// Records `fingerprint` as the store's for the key `name` unless one is
    /// recorded already, and says whether they agree. Of two servers starting
    /// at once, the first insert wins and the other compares against it.
    pub async fn claim_key_fingerprint(
        &self,
        name: &str,
        fingerprint: &str,
        node: &str,
    ) -> crate::Result<KeyCheck> {
        let inserted = sqlx::query(
            "INSERT INTO key_fingerprints (name, fingerprint, created_at, created_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(fingerprint)
        .bind(now_ms())
        .bind(node)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(KeyCheck::Recorded);
        }
        let row = sqlx::query(
            "SELECT fingerprint, created_at, created_by FROM key_fingerprints WHERE name = $1",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        if row.str("fingerprint")? == fingerprint {
            Ok(KeyCheck::Matches)
        } else {
            Ok(KeyCheck::Differs {
                recorded_by: row.text("created_by")?,
                recorded_at: row.time("created_at")?,
            })
        }
    }
}

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

    #[test]
    fn a_fingerprint_names_its_key_without_giving_it_away() {
        let key = Sealer::generate_key();
        let print = fingerprint(&key);
        assert_eq!(print, fingerprint(&key), "one key, one fingerprint");
        assert_eq!(print.len(), 64);
        assert_ne!(print, fingerprint(&Sealer::generate_key()));
        assert!(!print.contains(&hex::encode(key)));
    }
}
