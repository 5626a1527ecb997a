//! A CA a sandbox trusts besides its root's own
//! ([`crate::network::NetworkPolicy::trusted_ca`]): the egress proxy's, so
//! that the proxy can terminate TLS to the hosts it injects headers for.
//!
//! TLS libraries read their trust from files, not from the environment, and
//! most of them (OpenSSL through `SSL_CERT_FILE`, Python's `requests`,
//! curl, pip, git) take one file that *replaces* the system's list. So the
//! sandbox gets, read-only at [`CA_DIR`], the CA alone and a bundle of its
//! root's own CAs followed by it, and the variables those libraries read
//! name the bundle (Node's `NODE_EXTRA_CA_CERTS` adds to its list, and names
//! the CA alone). A variable the agent sets itself is left as it is.
//!
//! The root's bundle is read where distributions keep it, inside the root:
//! for an image, with every path resolved as if the image's root were `/`
//! (`openat2` with `RESOLVE_IN_ROOT`), so a symbolic link in an image cannot
//! make Hangar copy a file of the host into the sandbox.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix_spawn::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix_spawn::sys::stat::Mode;

/// Where the CA and the bundle are shown in the sandbox.
pub const CA_DIR: &str = "/run/hangar/ca";
/// The CA alone, in [`CA_DIR`].
pub const CA_FILE: &str = "hangar-ca.pem";
/// The root's CAs and the CA, in [`CA_DIR`].
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

/// Where distributions keep their bundle, relative to the root: Debian,
/// Ubuntu and Alpine; Fedora and RHEL; openSUSE; the BSDs' name.
const SYSTEM_BUNDLES: [&str; 4] = [
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
    "etc/ssl/ca-bundle.pem",
    "etc/ssl/cert.pem",
];

/// Largest root bundle read (Debian's is about 200 KiB).
const MAX_BUNDLE_BYTES: u64 = 8 << 20;

/// Largest CA accepted.
pub(super) const MAX_CA_BYTES: usize = 64 << 10;

/// The variables set to the bundle, and the one set to the CA alone.
const BUNDLE_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
];
const CA_VARIABLE: &str = "NODE_EXTRA_CA_CERTS";

/// Whether `pem` looks like what [`NetworkPolicy::trusted_ca`] must be: PEM
/// certificates, nothing a file or a variable could not hold.
///
/// [`NetworkPolicy::trusted_ca`]: crate::network::NetworkPolicy::trusted_ca
pub(super) fn check(pem: &str) -> Result<(), String> {
    if pem.len() > MAX_CA_BYTES {
        return Err(format!("the trusted CA is over {MAX_CA_BYTES} bytes"));
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.contains('\0') {
        return Err("the trusted CA is not a PEM certificate".to_owned());
    }
    Ok(())
}

/// Adds the variables naming the files in [`CA_DIR`] to `env`, but for
/// those it already has.
pub(super) fn add_variables(env: &mut Vec<(String, String)>) {
    let bundle = format!("{CA_DIR}/{BUNDLE_FILE}");
    let ca = format!("{CA_DIR}/{CA_FILE}");
    let wanted = BUNDLE_VARIABLES
        .iter()
        .map(|key| (*key, bundle.as_str()))
        .chain([(CA_VARIABLE, ca.as_str())]);
    for (key, value) in wanted {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.to_owned(), value.to_owned()));
        }
    }
}

/// Writes the CA and the bundle for a sandbox whose root is `root` into
/// `<dir>/ca`, readable by anyone (they are public certificates), and
/// returns that directory, to be shown at [`CA_DIR`].
pub(super) fn write(dir: &Path, root: &Path, pem: &str) -> io::Result<PathBuf> {
    let ca_dir = dir.join("ca");
    fs::create_dir(&ca_dir)?;
    fs::set_permissions(&ca_dir, fs::Permissions::from_mode(0o755))?;
    let mut bundle = root_bundle(root)?.unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(pem.as_bytes());
    for (name, data) in [(CA_FILE, pem.as_bytes()), (BUNDLE_FILE, &bundle[..])] {
        let path = ca_dir.join(name);
        fs::write(&path, data)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(ca_dir)
}

/// The first of [`SYSTEM_BUNDLES`] that is a regular file in `root`,
/// resolved inside it; `None` when the root has none (then the bundle is
/// the CA alone, which loses nothing: the sandbox trusted no one before).
fn root_bundle(root: &Path) -> io::Result<Option<Vec<u8>>> {
    let root = File::open(root)?;
    for name in SYSTEM_BUNDLES {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let file = match openat2(&root, name, how) {
            Ok(fd) => File::from(fd),
            Err(nix_spawn::errno::Errno::ENOENT | nix_spawn::errno::Errno::ENOTDIR) => continue,
            Err(errno) => return Err(errno.into()),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let mut data = Vec::new();
        file.take(MAX_BUNDLE_BYTES).read_to_end(&mut data)?;
        return Ok(Some(data));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_bundle_is_the_roots_cas_then_the_ca_and_links_stay_inside_the_root() {
        let tmp = std::env::temp_dir().join(format!("hangar-trust-{}", std::process::id()));
        let root = tmp.join("root");
        fs::create_dir_all(root.join("etc/ssl/certs")).expect("root");
        fs::write(tmp.join("host-secret"), "not for the sandbox").expect("secret");
        // An image whose bundle is a link to a file of the host: resolved in
        // the root, it is not there, and the next candidate is read.
        std::os::unix::fs::symlink(
            tmp.join("host-secret"),
            root.join("etc/ssl/certs/ca-certificates.crt"),
        )
        .expect("link");
        fs::write(root.join("etc/ssl/cert.pem"), "ROOT CAS").expect("bundle");
        let sandbox = tmp.join("sandbox");
        fs::create_dir_all(&sandbox).expect("sandbox dir");
        let dir = write(&sandbox, &root, PEM).expect("write");
        assert_eq!(
            fs::read_to_string(dir.join(BUNDLE_FILE)).expect("bundle"),
            format!("ROOT CAS\n{PEM}")
        );
        assert_eq!(fs::read_to_string(dir.join(CA_FILE)).expect("ca"), PEM);
        let mode = fs::metadata(dir.join(BUNDLE_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        fs::remove_dir_all(&tmp).expect("cleanup");
    }

    #[test]
    fn variables_name_the_files_but_the_agents_own_stay() {
        let mut env = vec![("SSL_CERT_FILE".to_owned(), "/mine.pem".to_owned())];
        add_variables(&mut env);
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("SSL_CERT_FILE"), Some("/mine.pem"));
        assert_eq!(
            get("REQUESTS_CA_BUNDLE"),
            Some("/run/hangar/ca/ca-bundle.pem")
        );
        assert_eq!(
            get("NODE_EXTRA_CA_CERTS"),
            Some("/run/hangar/ca/hangar-ca.pem")
        );
        assert!(check(PEM).is_ok());
        assert!(check("hello").is_err());
        assert!(check(&"-----BEGIN CERTIFICATE-----".repeat(5000)).is_err());
    }
}
