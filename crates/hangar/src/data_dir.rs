//! The files `hangar serve` keeps in its data dir: `secret.key`,
//! `admin.key`, `docker.owner`, `node.id` and `egress.port` (the egress
//! proxy's CA is in `egress/`, written by its crate).
//!
//! They are few, small and precious: a torn `secret.key` makes every sealed
//! secret unreadable, a `node.id` that changes makes the server a stranger
//! to the jobs it held, a `docker.owner` that changes orphans its replicas.
//! So they are written in one place, one way: a temporary file in the data
//! dir (mode 0600 from its creation, never readable by others even for a
//! moment), fsynced, then renamed over the name (or linked to it, for a file
//! made once, so two servers starting on one dir at once keep the same one),
//! and the directory fsynced so the name survives a crash. A reader sees the
//! old file or the new one, never a part.
//!
//! `secret.key` is the key of a server whose configuration gives none
//! (`--secret-key-file`, `HANGAR_SECRET_KEY`): servers sharing a database
//! must share a key, which a data dir cannot give them.
//!
//! What is not here: the database (SQLite's own file, its own journal), the
//! runtime's state dir and the builder's dirs, which their crates own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use hangar_store::seal::Sealer;

/// The 32-byte key secrets are sealed with (and other keys derived from).
const SECRET_KEY: &str = "secret.key";
/// The generated bootstrap API key, for the operator to pick up.
pub const ADMIN_KEY: &str = "admin.key";
/// The mark of this server's Docker containers and networks.
const DOCKER_OWNER: &str = "docker.owner";
const KUBERNETES_OWNER: &str = "kubernetes.owner";
/// This server's stable ID.
const NODE_ID: &str = "node.id";
/// The port the egress proxy listens on.
const EGRESS_PORT: &str = "egress.port";
/// The egress proxy's certificate authority.
const EGRESS_CA_DIR: &str = "egress";

/// A data dir, created (mode 0700) and resolved to an absolute path.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens `path`, creating it (and its parents) when missing.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("creating data dir {}", path.display()))?;
        // Absolute: build steps' sandboxes bind paths under it.
        let root = path
            .canonicalize()
            .with_context(|| format!("resolving data dir {}", path.display()))?;
        Ok(Self { root })
    }

    /// The data dir's absolute path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The data dir's 32-byte key, made on first start: the key of a server
    /// whose configuration gives none (see `--secret-key-file`).
    pub fn secret_key(&self) -> anyhow::Result<Vec<u8>> {
        let key = self.create_once(SECRET_KEY, || Sealer::generate_key().to_vec())?;
        anyhow::ensure!(
            key.len() == 32,
            "{} is not a 32-byte key",
            self.root.join(SECRET_KEY).display()
        );
        Ok(key)
    }

    /// Where the data dir's key is, said for messages.
    #[must_use]
    pub fn secret_key_source(&self) -> String {
        format!(
            "{} (made by this server at its first start)",
            self.root.join(SECRET_KEY).display()
        )
    }

    /// This server's ID: random, made on first start, the same for the
    /// data dir's life (the job runner's lease owner, the name of this
    /// server among several on one database). Files made by earlier builds
    /// are kept as they are.
    pub fn node_id(&self) -> anyhow::Result<String> {
        let bytes = self.create_once(NODE_ID, || {
            let id =
                hangar_core::id::new_id(hangar_core::id::IdKind::Request).replace("req_", "node-");
            format!("{id}\n").into_bytes()
        })?;
        let path = self.root.join(NODE_ID);
        let text =
            String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
        let id = text.trim();
        anyhow::ensure!(
            !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{} does not hold a node ID (letters, digits, - and _)",
            path.display()
        );
        Ok(id.to_owned())
    }

    /// The egress proxy's port: picked (free at that moment) on first start
    /// and kept, because running replicas were given it and outlive the
    /// server.
    pub fn egress_port(&self) -> anyhow::Result<u16> {
        let bytes = self.create_once(EGRESS_PORT, || {
            let port = std::net::TcpListener::bind("0.0.0.0:0")
                .and_then(|listener| listener.local_addr())
                .map_or(0, |addr| addr.port());
            format!("{port}\n").into_bytes()
        })?;
        let path = self.root.join(EGRESS_PORT);
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .with_context(|| format!("{} does not hold a port", path.display()))
    }

    /// Where the egress proxy's certificate authority is kept.
    #[must_use]
    pub fn egress_ca_dir(&self) -> PathBuf {
        self.root.join(EGRESS_CA_DIR)
    }

    /// Keeps a generated bootstrap key for the operator; returns its path.
    pub fn write_admin_key(&self, key: &str) -> anyhow::Result<PathBuf> {
        self.replace(ADMIN_KEY, format!("{key}\n").as_bytes())?;
        Ok(self.root.join(ADMIN_KEY))
    }

    /// The mark on this server's Docker containers and networks, as kept
    /// by [`DataDir::record_docker_owner`]; `None` before the first start
    /// with an engine. The mark is random ([`random_docker_owner`]), so two
    /// servers on one engine never take each other's replicas for their
    /// own, not even with data dirs at the same path on two machines, and a
    /// data dir that moves keeps its replicas.
    pub fn docker_owner(&self) -> anyhow::Result<Option<String>> {
        let path = self.root.join(DOCKER_OWNER);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let owner = text.trim();
                anyhow::ensure!(
                    owner.len() == 16 && owner.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{} does not hold 16 hex digits",
                    path.display()
                );
                Ok(Some(owner.to_ascii_lowercase()))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Keeps `owner` as the data dir's mark.
    pub fn record_docker_owner(&self, owner: &str) -> anyhow::Result<()> {
        self.replace(DOCKER_OWNER, format!("{owner}\n").as_bytes())
    }

    /// The mark on this server's Kubernetes objects (`hangar.owner`): 16
    /// random hex digits, made at the first start and kept, so servers
    /// sharing a namespace never take each other's pods for their own.
    pub fn kubernetes_owner(&self) -> anyhow::Result<String> {
        let made = self.create_once(KUBERNETES_OWNER, || {
            format!("{}\n", random_docker_owner()).into_bytes()
        })?;
        let owner = String::from_utf8_lossy(&made).trim().to_ascii_lowercase();
        anyhow::ensure!(
            owner.len() == 16 && owner.bytes().all(|b| b.is_ascii_hexdigit()),
            "{} does not hold 16 hex digits",
            self.root.join(KUBERNETES_OWNER).display()
        );
        Ok(owner)
    }

    /// The mark builds before `docker.owner` used: a hash of the data
    /// dir's path. Kept for the replicas they left on the engine.
    #[must_use]
    pub fn legacy_docker_owner(&self) -> String {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(self.root.as_os_str().as_encoded_bytes());
        hash[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The contents of `name`, made with `make` when it is missing (or
    /// empty: torn by a build that wrote in place). Of two servers making
    /// it at once, both end up with the one that was linked first.
    fn create_once(&self, name: &str, make: impl FnOnce() -> Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let path = self.root.join(name);
        match std::fs::read(&path) {
            Ok(contents) if !contents.is_empty() => return Ok(contents),
            Ok(_) => {
                // Empty: a write of an earlier build that did not finish.
                self.replace(name, &make())?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let temporary = self.write_temporary(name, &make())?;
                // A link, unlike a rename, fails when the name exists: a
                // server that lost the race reads the winner's file below.
                let linked = std::fs::hard_link(&temporary, &path);
                let _ = std::fs::remove_file(&temporary);
                match linked {
                    Ok(()) => self.sync_dir()?,
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(err) => {
                        return Err(err).with_context(|| format!("creating {}", path.display()))
                    }
                }
            }
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        }
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Writes `name` whole, replacing what was there.
    fn replace(&self, name: &str, contents: &[u8]) -> anyhow::Result<()> {
        let path = self.root.join(name);
        let temporary = self.write_temporary(name, contents)?;
        if let Err(err) = std::fs::rename(&temporary, &path) {
            let _ = std::fs::remove_file(&temporary);
            return Err(err).with_context(|| format!("writing {}", path.display()));
        }
        self.sync_dir()
    }

    /// A new file beside `name` holding `contents`, on disk, mode 0600.
    fn write_temporary(&self, name: &str, contents: &[u8]) -> anyhow::Result<PathBuf> {
        let suffix: u64 = rand::random();
        let temporary = self.root.join(format!(".{name}.{suffix:016x}.tmp"));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(contents)?;
            file.sync_all()
        })();
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(err).with_context(|| format!("writing {}", temporary.display()));
        }
        Ok(temporary)
    }

    /// Makes the data dir's entries (a rename, a link) durable.
    fn sync_dir(&self) -> anyhow::Result<()> {
        File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", self.root.display()))
    }
}

/// 16 random hex digits: a new Docker owner mark.
#[must_use]
pub fn random_docker_owner() -> String {
    rand::random::<[u8; 8]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A scratch dir removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "hangar-data-dir-{tag}-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    /// Nothing but `expected` in the dir: no temporary file left behind.
    fn only(dir: &DataDir, expected: &[&str]) {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> = expected.iter().map(|&n| n.to_owned()).collect();
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn the_dir_is_made_private_and_absolute() {
        let scratch = Scratch::new("open");
        let dir = DataDir::open(&scratch.0.join("nested/data")).expect("open");
        assert!(dir.path().is_absolute());
        assert_eq!(mode(dir.path()), 0o700);
    }

    #[test]
    fn the_secret_key_is_made_once_private_and_checked() {
        let scratch = Scratch::new("secret");
        let dir = DataDir::open(&scratch.0).expect("open");
        let key = dir.secret_key().expect("made");
        assert_eq!(key.len(), 32);
        assert_eq!(dir.secret_key().expect("kept"), key);
        assert_eq!(
            DataDir::open(&scratch.0)
                .expect("reopen")
                .secret_key()
                .expect("kept"),
            key
        );
        assert_eq!(mode(&dir.path().join(SECRET_KEY)), 0o600);
        only(&dir, &[SECRET_KEY]);
        std::fs::write(dir.path().join(SECRET_KEY), b"short").expect("write");
        let err = dir.secret_key().expect_err("a damaged key is refused");
        assert!(err.to_string().contains("32-byte"), "{err}");
    }

    #[test]
    fn a_file_made_once_is_never_replaced_by_a_second_maker() {
        let scratch = Scratch::new("once");
        let dir = DataDir::open(&scratch.0).expect("open");
        let first = dir.create_once("made", || b"first".to_vec()).expect("made");
        let second = dir
            .create_once("made", || b"second".to_vec())
            .expect("kept");
        assert_eq!(
            (first.as_slice(), second.as_slice()),
            (&b"first"[..], &b"first"[..])
        );
        // An empty file (a write that never finished) is made again.
        std::fs::write(dir.path().join("made"), b"").expect("truncate");
        assert_eq!(
            dir.create_once("made", || b"again".to_vec())
                .expect("remade"),
            b"again"
        );
        assert_eq!(mode(&dir.path().join("made")), 0o600);
        only(&dir, &["made"]);
    }

    #[test]
    fn the_node_id_is_stable_and_earlier_files_are_kept() {
        let scratch = Scratch::new("node");
        let dir = DataDir::open(&scratch.0).expect("open");
        let id = dir.node_id().expect("made");
        assert!(id.starts_with("node-"), "{id}");
        assert_eq!(dir.node_id().expect("kept"), id);
        assert_eq!(mode(&dir.path().join(NODE_ID)), 0o600);
        only(&dir, &[NODE_ID]);
        // As the job runner wrote it before this type existed.
        std::fs::write(dir.path().join(NODE_ID), "node-01jexample\n").expect("write");
        assert_eq!(dir.node_id().expect("legacy"), "node-01jexample");
        std::fs::write(dir.path().join(NODE_ID), "two\nlines\n").expect("write");
        assert!(dir.node_id().is_err(), "a damaged id is refused");
    }

    #[test]
    fn the_admin_key_is_written_whole_and_private() {
        let scratch = Scratch::new("admin");
        let dir = DataDir::open(&scratch.0).expect("open");
        // A file from an older build, readable by others: replaced, private.
        std::fs::write(dir.path().join(ADMIN_KEY), "old\n").expect("write");
        std::fs::set_permissions(
            dir.path().join(ADMIN_KEY),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let path = dir.write_admin_key("hgr_new").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "hgr_new\n");
        assert_eq!(mode(&path), 0o600);
        only(&dir, &[ADMIN_KEY]);
    }

    #[test]
    fn the_docker_owner_is_kept_whole_and_checked() {
        let scratch = Scratch::new("owner");
        let dir = DataDir::open(&scratch.0).expect("open");
        assert_eq!(dir.docker_owner().expect("none yet"), None);
        let owner = random_docker_owner();
        assert_eq!(owner.len(), 16);
        assert_ne!(owner, random_docker_owner());
        dir.record_docker_owner(&owner).expect("recorded");
        assert_eq!(dir.docker_owner().expect("kept"), Some(owner));
        assert_eq!(mode(&dir.path().join(DOCKER_OWNER)), 0o600);
        only(&dir, &[DOCKER_OWNER]);
        assert_eq!(dir.legacy_docker_owner().len(), 16);
        std::fs::write(dir.path().join(DOCKER_OWNER), "not hex\n").expect("write");
        let err = dir.docker_owner().expect_err("a damaged file is refused");
        assert!(err.to_string().contains("16 hex digits"), "{err}");
    }
}
