//! Why a build failed: [`BuildError`], the one error every part of the
//! builder returns (fetching a source, unpacking an archive, cloning,
//! reading the recipe, publishing an artifact, pulling an image, running the
//! step). Its message is what the build's `reason` and last log line say, so
//! each variant carries what its sentence needs (the limit, the uid) instead
//! of reaching into the modules that raise it.
//!
//! It sits in a file of its own, below every other module of the crate:
//! they all depend on it and it on none of them (only on the store, whose
//! failures it passes on). Not here: what a failure does to its build (the
//! [`Builder`](crate::Builder) tries again after a store failure and fails
//! the build on any other), or any check that raises one.

/// Why a build failed. The message is what the build's `reason` and log say.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// This version of Hangar cannot build this kind of source.
    #[error("building {kind} sources is not available yet in this version of Hangar")]
    Unsupported {
        /// `git`, `docker` or `upload`.
        kind: &'static str,
    },
    /// The `file://` URL does not name a path on this server.
    #[error("{repo} does not name an absolute path on this server (file:///path/to/dir)")]
    BadFileUrl {
        /// The URL.
        repo: String,
    },
    /// A commit is pinned, but a plain directory has no commits.
    #[error("commit {commit} is pinned, but {dir} is a plain directory, not a git repository: it has no commits (remove commit)")]
    NoCommits {
        /// The pinned commit.
        commit: String,
        /// The directory.
        dir: String,
    },
    /// Nothing at the path.
    #[error("the directory {path} does not exist")]
    Missing {
        /// The path.
        path: String,
    },
    /// Something other than a directory at the path.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: String,
    },
    /// The source's `path` leads outside the source directory.
    #[error("path '{path}' leads outside the source directory {dir}")]
    Escapes {
        /// The source's `path`.
        path: String,
        /// The source directory.
        dir: String,
    },
    /// No file the agent contract runs.
    #[error("nothing to run in {dir}: looked for hangar.toml, main.py, app.py and package.json")]
    NothingToRun {
        /// The artifact directory.
        dir: String,
    },
    /// A file the sandbox's user could not read.
    #[error("{path} is not readable by the sandbox's unprivileged user (uid {uid}): its mode is {mode:o}; make it readable by others (chmod o+r)")]
    FileNotReadable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
        /// The user that must read it ([`crate::source::SANDBOX_UID`]).
        uid: u32,
    },
    /// A directory the sandbox's user could not list or enter.
    #[error("the directory {path} cannot be listed and entered by the sandbox's unprivileged user (uid {uid}): its mode is {mode:o}; make it readable and searchable by others (chmod o+rx)")]
    DirNotReadable {
        /// The directory.
        path: String,
        /// Its permission bits.
        mode: u32,
        /// The user that must list and enter it ([`crate::source::SANDBOX_UID`]).
        uid: u32,
    },
    /// A device, socket or FIFO.
    #[error("{path} is not a regular file, directory or symlink: devices, sockets and FIFOs cannot be part of an artifact")]
    SpecialFile {
        /// The entry.
        path: String,
    },
    /// Too many entries.
    #[error(
        "{dir} has more than {limit} entries: this builder takes directories of at most {limit}"
    )]
    TooManyEntries {
        /// The artifact directory.
        dir: String,
        /// The most it may have.
        limit: usize,
    },
    /// The artifact's path cannot be stored as text.
    #[error("{path} is not valid UTF-8")]
    NotUtf8 {
        /// The path, lossily.
        path: String,
    },
    /// Reading the directory failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was read.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The build step itself crashed (a bug).
    #[error("the builder crashed: {0}")]
    Crashed(String),
    /// The upload is not an archive this builder unpacks, or is corrupt.
    #[error("{0}")]
    Archive(String),
    /// An archive entry that would escape the build dir or is not allowed.
    #[error("refused archive entry '{entry}': {why}")]
    UnsafeEntry {
        /// The entry's name in the archive.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// An archive with too many entries.
    #[error("the archive has more than {limit} entries")]
    ArchiveTooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// An archive whose files unpack to too many bytes.
    #[error("the archive unpacks to more than {limit} bytes (at entry '{entry}')")]
    ArchiveTooLarge {
        /// The entry being unpacked when the limit was reached.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The upload has no archive yet, or is gone.
    #[error("upload {id} has no archive: PUT the archive to its upload_url before deploying")]
    UploadMissing {
        /// The upload.
        id: String,
    },
    /// Cloning or checking out failed.
    #[error("{0}")]
    Git(String),
    /// `hangar.toml` is not usable.
    #[error("{0}")]
    Manifest(String),
    /// A file the server reads from an artifact is a symlink.
    #[error("{name} is a symlink: the files that say how to run an agent must be plain files")]
    TopLevelSymlink {
        /// The file.
        name: String,
    },
    /// The build step ran and failed.
    #[error("the build step ({step}) {outcome}")]
    StepFailed {
        /// The step.
        step: String,
        /// How it ended: "exited with code 1", "timed out after 900 s".
        outcome: String,
    },
    /// The build step could not be run.
    #[error("cannot run the build step: {0}")]
    Sandbox(String),
    /// An OCI image could not be pulled or is not one this builder runs.
    #[error("{0}")]
    Image(String),
    /// The store failed (the build is retried, not failed).
    #[error(transparent)]
    Store(hangar_store::StoreError),
    /// An upload's archive or an artifact could not be read from or kept in
    /// the blob store.
    #[error("the blob store failed: {0}")]
    Blobs(#[from] hangar_store::blobs::BlobError),
}
