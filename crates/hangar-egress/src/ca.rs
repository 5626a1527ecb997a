//! The certificate authority sandboxes trust so that the proxy can terminate
//! their TLS to hosts that get injected headers.
//!
//! One CA per server, kept in its data directory (`egress-ca.key`, mode
//! 0600, and `egress-ca.pem`), so that replicas keep trusting it across
//! restarts. Leaf certificates are minted on demand for the hosts the proxy
//! terminates (only those with an injection), all on one key made at start,
//! and cached; a leaf lives 30 days and is re-minted after 7, so a
//! long-running server never serves an expired one.
//!
//! The key never leaves the host: sandboxes get [`CertificateAuthority::cert_pem`]
//! only. Anyone holding the key can impersonate any host to the sandboxes
//! that trust it, which is why it is written owner-only and why the proxy,
//! not the sandbox, is the only thing that signs with it.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// The CA key's file name in the data directory.
pub const KEY_FILE: &str = "egress-ca.key";
/// The CA certificate's file name in the data directory.
pub const CERT_FILE: &str = "egress-ca.pem";

/// How long a minted leaf is valid.
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a minted leaf is served before a new one is minted.
const LEAF_REUSE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Leaves cached at most; past this the cache starts over (only hosts with
/// an injection are terminated, so this is far more than a server needs).
const LEAF_CACHE: usize = 1024;

/// A CA key and certificate, and the leaves minted with them.
pub struct CertificateAuthority {
    key: KeyPair,
    /// The CA as an issuer: rebuilt from the key and the fixed name on load
    /// (a leaf names its issuer by subject and key identifier, both the
    /// same as the stored certificate's).
    issuer: rcgen::Certificate,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Leaf>>,
}

struct Leaf {
    config: Arc<ServerConfig>,
    minted: Instant,
}

/// Why the CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file of the CA.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A key or certificate could not be made or parsed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration for a leaf was refused.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

impl CertificateAuthority {
    /// The CA kept in `dir`: loaded when its key is there, created (key
    /// mode 0600) when not. A key whose file is readable by others is made
    /// owner-only again.
    ///
    /// # Errors
    /// When the directory or files cannot be read or written, or the key is
    /// not a PEM key rcgen can sign with.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key = match fs::read_to_string(&key_path) {
            Ok(pem) => {
                fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
                    .map_err(io_err(&key_path))?;
                KeyPair::from_pem(&pem)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                write_private(&key_path, key.serialize_pem().as_bytes())
                    .map_err(io_err(&key_path))?;
                // A new key makes any certificate left beside it wrong.
                let _ = fs::remove_file(&cert_path);
                key
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let issuer = ca_params()?.self_signed(&key)?;
        let cert_pem = match fs::read_to_string(&cert_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let pem = issuer.pem();
                write_public(&cert_path, pem.as_bytes()).map_err(io_err(&cert_path))?;
                pem
            }
            Err(e) => return Err(io_err(&cert_path)(e)),
        };
        let cert_der = pem_to_der(&cert_pem).ok_or(rcgen::Error::CouldNotParseCertificate)?;
        Ok(CertificateAuthority {
            key,
            issuer,
            cert_pem,
            cert_der,
            leaf_key: KeyPair::generate()?,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM: what sandboxes are given to trust.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A TLS server configuration presenting a leaf for `host` (normalized),
    /// minted now or taken from the cache.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let mut leaves = self
            .leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(leaf) = leaves.get(host) {
            if leaf.minted.elapsed() < LEAF_REUSE {
                return Ok(leaf.config.clone());
            }
        }
        let config = Arc::new(self.mint(host)?);
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(
            host.to_owned(),
            Leaf {
                config: config.clone(),
                minted: Instant::now(),
            },
        );
        Ok(config)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, CaError> {
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        let now = time::OffsetDateTime::now_utc();
        // A day of slack for clocks in sandboxes that run behind.
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + LEAF_LIFETIME;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&self.leaf_key, &self.issuer, &self.key)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)?;
        // The proxy reads HTTP/1.1 inside; offering h2 would be a lie.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Hangar");
    name.push(DnType::CommonName, "Hangar egress proxy CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

/// Written to a temporary file created 0600 and renamed, so the key is
/// never readable by others, not even half-written.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically(path, contents, 0o644)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    /// A directory removed when dropped (also when a test fails).
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("hangar-egress-ca-{name}-{}", std::process::id()));
        TempDir(dir)
    }

    #[test]
    fn the_key_is_owner_only_and_the_ca_survives_a_reload() {
        let tmp = temp_dir("reload");
        let dir = &tmp.0;
        let first = CertificateAuthority::load_or_create(dir).expect("create");
        let mode = fs::metadata(dir.join(KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = CertificateAuthority::load_or_create(dir).expect("load");
        assert_eq!(first.cert_pem(), second.cert_pem());
        assert_eq!(first.key.serialize_der(), second.key.serialize_der());

        // A leaf minted after the reload chains to the certificate stored
        // before it.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(first.cert_der().clone()).expect("root");
        let config = second.server_config("api.example").expect("leaf");
        let leaf = config
            .cert_resolver
            .resolve(fake_hello().as_ref().expect("hello").client_hello())
            .expect("cert");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::crypto_provider(),
        )
        .build()
        .expect("verifier");
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &rustls::pki_types::ServerName::try_from("api.example").expect("name"),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf chains to the stored CA");
    }

    #[test]
    fn a_loose_key_file_is_tightened() {
        let tmp = temp_dir("loose");
        let dir = &tmp.0;
        drop(CertificateAuthority::load_or_create(dir).expect("create"));
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(CertificateAuthority::load_or_create(dir).expect("load"));
        let mode = fs::metadata(dir.join(KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn leaves_are_cached_per_host() {
        let tmp = temp_dir("cache");
        let dir = &tmp.0;
        let ca = CertificateAuthority::load_or_create(dir).expect("create");
        let a = ca.server_config("a.example").expect("a");
        assert!(Arc::ptr_eq(
            &a,
            &ca.server_config("a.example").expect("a again")
        ));
        assert!(!Arc::ptr_eq(&a, &ca.server_config("b.example").expect("b")));
    }

    /// A parsed ClientHello to ask a resolver with.
    fn fake_hello() -> Option<rustls::server::Accepted> {
        let hello = crate::hello::tests::client_hello(Some("api.example"));
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor.read_tls(&mut hello.as_slice()).ok()?;
        acceptor.accept().ok()?
    }
}
