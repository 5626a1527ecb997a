//! Blobs: the bytes every server must be able to read, whichever of them
//! received or made them — uploads' archives and build artifacts — behind
//! one trait, [`Blobs`].
//!
//! Two homes:
//!
//! - [`DirBlobs`], files in the server's data dir (`uploads/<id>`,
//!   `artifacts/…`): one server's own disk, the default on SQLite, where
//!   there is only one server. Its blobs are read in place
//!   ([`Blobs::local_path`]), never copied.
//! - [`DatabaseBlobs`], content-addressed chunks in the store's own database
//!   (`blob_chunks`, `blobs`, `blob_parts`): the default on PostgreSQL, so
//!   servers sharing a database share blobs with nothing more to run.
//!   Chunks are addressed by their SHA-256, written once and never changed;
//!   a blob's list of chunks is written in one transaction after them, so a
//!   reader finds a blob whole or not at all, and a chunk's hash is checked
//!   again when it is read.
//! - [`BucketBlobs`], objects in an S3-compatible bucket through the
//!   `object_store` crate (`s3://bucket/prefix`, credentials, region and
//!   endpoint from the usual `AWS_*` variables): for servers sharing a
//!   database whose blobs should not live in it. An object is written
//!   whole (a single put, or a multipart upload completed at the end) or
//!   not at all.
//!
//! What is not here: what a blob holds (an archive, an artifact packed as a
//! tar — the builder's business) and the cache of artifacts a server keeps
//! unpacked in its data dir.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{now_ms, Store};

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file on this server could not be read or written.
    #[error("blob {key}: {source}")]
    Io {
        /// The blob.
        key: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("blob {key}: database error: {source}")]
    Database {
        /// The blob.
        key: String,
        /// What failed.
        source: sqlx::Error,
    },
    /// The bucket failed.
    #[error("blob {key}: the bucket failed: {source}")]
    Bucket {
        /// The blob.
        key: String,
        /// What failed.
        source: object_store::Error,
    },
    /// What was read back is not what was stored.
    #[error("blob {key} is damaged: {detail}")]
    Corrupt {
        /// The blob.
        key: String,
        /// How.
        detail: String,
    },
}

/// A blob's name: `uploads/<upload id>` or `artifacts/<name>`, made only
/// by [`BlobKey::upload`] and [`BlobKey::artifact`], so it is a safe
/// relative path wherever a home turns it into one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// The archive of upload `id`; `None` for an id that is not one.
    #[must_use]
    pub fn upload(id: &str) -> Option<Self> {
        let ok = id.starts_with("upl_")
            && id.len() < 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        ok.then(|| Self(format!("uploads/{id}")))
    }

    /// The packed artifact `name` (letters, digits, `-`, `_`, `.`, not
    /// starting with a dot); `None` for anything else.
    #[must_use]
    pub fn artifact(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        ok.then(|| Self(format!("artifacts/{name}")))
    }

    /// The key as stored.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where uploads' archives and build artifacts are kept (see the module
/// docs).
#[async_trait]
pub trait Blobs: Send + Sync + std::fmt::Debug {
    /// Where the blobs are, for the log and messages.
    fn describe(&self) -> String;

    /// Whether every server on the database reads these blobs (false: they
    /// are on this server's disk only).
    fn shared(&self) -> bool;

    /// The blob's file on this host, when blobs are files here: read it in
    /// place. `None` when blobs live elsewhere (use [`Blobs::get_file`]).
    fn local_path(&self, key: &BlobKey) -> Option<PathBuf>;

    /// Stores the file at `from` as `key` (replacing a blob of that key),
    /// whole or not at all, and returns its size. The file is taken: it may
    /// be moved rather than copied, so it may be gone afterwards.
    async fn put_file(&self, key: &BlobKey, from: &Path) -> Result<u64, BlobError>;

    /// Writes blob `key` to `to` (a new file, removed again on failure);
    /// `false` when there is no such blob.
    async fn get_file(&self, key: &BlobKey, to: &Path) -> Result<bool, BlobError>;

    /// Whether blob `key` exists.
    async fn exists(&self, key: &BlobKey) -> Result<bool, BlobError>;
}

/// Blobs as files under a directory of this server (its data dir): today's
/// `uploads/<id>` and `artifacts/…`.
#[derive(Debug, Clone)]
pub struct DirBlobs {
    root: PathBuf,
}

impl DirBlobs {
    /// Blobs under `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.as_str())
    }
}

fn io(key: &BlobKey) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        key: key.to_string(),
        source,
    }
}

#[async_trait]
impl Blobs for DirBlobs {
    fn describe(&self) -> String {
        format!("the data dir ({})", self.root.display())
    }

    fn shared(&self) -> bool {
        false
    }

    fn local_path(&self, key: &BlobKey) -> Option<PathBuf> {
        Some(self.path(key))
    }

    async fn put_file(&self, key: &BlobKey, from: &Path) -> Result<u64, BlobError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io(key))?;
        }
        let size = tokio::fs::metadata(from).await.map_err(io(key))?.len();
        // A rename is whole or nothing; across file systems, a copy beside
        // the name renamed over it is.
        if tokio::fs::rename(from, &path).await.is_err() {
            let partial = path.with_extension(format!("part-{:016x}", rand::random::<u64>()));
            let copied = async {
                tokio::fs::copy(from, &partial).await?;
                tokio::fs::File::open(&partial).await?.sync_all().await?;
                tokio::fs::rename(&partial, &path).await
            }
            .await;
            if let Err(err) = copied {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(io(key)(err));
            }
        }
        Ok(size)
    }

    async fn get_file(&self, key: &BlobKey, to: &Path) -> Result<bool, BlobError> {
        match tokio::fs::copy(self.path(key), to).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let _ = tokio::fs::remove_file(to).await;
                Ok(false)
            }
            Err(err) => {
                let _ = tokio::fs::remove_file(to).await;
                Err(io(key)(err))
            }
        }
    }

    async fn exists(&self, key: &BlobKey) -> Result<bool, BlobError> {
        tokio::fs::try_exists(self.path(key)).await.map_err(io(key))
    }
}

/// Bytes per chunk of a [`DatabaseBlobs`] blob: large enough that a big
/// artifact is a few hundred rows, small enough that one row is cheap to
/// hold in memory and to send.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Blobs as content-addressed chunks in the store's database (see the
/// module docs).
#[derive(Debug, Clone)]
pub struct DatabaseBlobs {
    pool: AnyPool,
}

impl Store {
    /// The blob store in this store's database.
    #[must_use]
    pub fn database_blobs(&self) -> DatabaseBlobs {
        DatabaseBlobs {
            pool: self.pool.clone(),
        }
    }
}

fn db(key: &BlobKey) -> impl FnOnce(sqlx::Error) -> BlobError + '_ {
    move |source| BlobError::Database {
        key: key.to_string(),
        source,
    }
}

/// Reads up to [`CHUNK_BYTES`] from `file`: fewer only at its end.
async fn read_chunk(file: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut filled = 0;
    while filled < chunk.len() {
        let n = file.read(&mut chunk[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    chunk.truncate(filled);
    Ok(chunk)
}

impl DatabaseBlobs {
    /// Stores `data` as the chunk `hash` unless it is there already (the
    /// same bytes, by their hash): nothing is sent twice.
    async fn put_chunk(&self, key: &BlobKey, hash: &str, data: Vec<u8>) -> Result<(), BlobError> {
        let present = sqlx::query("SELECT 1 FROM blob_chunks WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db(key))?
            .is_some();
        if !present {
            sqlx::query(
                "INSERT INTO blob_chunks (hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(hash)
            .bind(data)
            .execute(&self.pool)
            .await
            .map_err(db(key))?;
        }
        Ok(())
    }

    async fn write_to(&self, key: &BlobKey, to: &Path) -> Result<bool, BlobError> {
        let Some(blob) = sqlx::query("SELECT size_bytes FROM blobs WHERE key = $1")
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db(key))?
        else {
            return Ok(false);
        };
        let size: i64 = blob.try_get("size_bytes").map_err(db(key))?;
        let parts = sqlx::query(
            "SELECT chunk_hash, size_bytes FROM blob_parts WHERE blob_key = $1 ORDER BY seq",
        )
        .bind(key.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db(key))?;
        let corrupt = |detail: String| BlobError::Corrupt {
            key: key.to_string(),
            detail,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .await
            .map_err(io(key))?;
        let mut written: i64 = 0;
        for part in parts {
            let hash: String = part.try_get("chunk_hash").map_err(db(key))?;
            let expected: i64 = part.try_get("size_bytes").map_err(db(key))?;
            let data: Vec<u8> = sqlx::query("SELECT data FROM blob_chunks WHERE hash = $1")
                .bind(hash.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db(key))?
                .ok_or_else(|| corrupt(format!("its chunk {hash} is missing")))?
                .try_get("data")
                .map_err(db(key))?;
            if hex::encode(Sha256::digest(&data)) != hash
                || i64::try_from(data.len()).ok() != Some(expected)
            {
                return Err(corrupt(format!("its chunk {hash} does not match its hash")));
            }
            file.write_all(&data).await.map_err(io(key))?;
            written += expected;
        }
        if written != size {
            return Err(corrupt(format!(
                "its chunks hold {written} bytes, not {size}"
            )));
        }
        file.flush().await.map_err(io(key))?;
        file.sync_all().await.map_err(io(key))?;
        Ok(true)
    }
}

#[async_trait]
impl Blobs for DatabaseBlobs {
    fn describe(&self) -> String {
        "the database".to_owned()
    }

    fn shared(&self) -> bool {
        true
    }

    fn local_path(&self, _key: &BlobKey) -> Option<PathBuf> {
        None
    }

    async fn put_file(&self, key: &BlobKey, from: &Path) -> Result<u64, BlobError> {
        let mut file = tokio::fs::File::open(from).await.map_err(io(key))?;
        let mut parts: Vec<(String, i64)> = Vec::new();
        loop {
            let chunk = read_chunk(&mut file).await.map_err(io(key))?;
            if chunk.is_empty() && !parts.is_empty() {
                break;
            }
            let last = chunk.len() < CHUNK_BYTES;
            let hash = hex::encode(Sha256::digest(&chunk));
            let len = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
            self.put_chunk(key, &hash, chunk).await?;
            parts.push((hash, len));
            if last {
                break;
            }
        }
        let size: i64 = parts.iter().map(|(_, len)| len).sum();
        let mut tx = self.pool.begin().await.map_err(db(key))?;
        sqlx::query("DELETE FROM blob_parts WHERE blob_key = $1")
            .bind(key.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db(key))?;
        for (rows, first) in parts
            .chunks(crate::INSERT_CHUNK)
            .zip((0..).step_by(crate::INSERT_CHUNK))
        {
            let sql = format!(
                "INSERT INTO blob_parts (blob_key, seq, chunk_hash, size_bytes) VALUES {}",
                crate::value_rows(rows.len(), 4)
            );
            let mut insert = sqlx::query(&sql);
            for (offset, (hash, len)) in rows.iter().enumerate() {
                insert = insert
                    .bind(key.as_str())
                    .bind(i64::try_from(first + offset).unwrap_or(i64::MAX))
                    .bind(hash.as_str())
                    .bind(*len);
            }
            insert.execute(&mut *tx).await.map_err(db(key))?;
        }
        sqlx::query(
            "INSERT INTO blobs (key, size_bytes, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET size_bytes = excluded.size_bytes, created_at = excluded.created_at",
        )
        .bind(key.as_str())
        .bind(size)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(db(key))?;
        tx.commit().await.map_err(db(key))?;
        Ok(u64::try_from(size).unwrap_or(0))
    }

    async fn get_file(&self, key: &BlobKey, to: &Path) -> Result<bool, BlobError> {
        let written = self.write_to(key, to).await;
        if !matches!(written, Ok(true)) {
            let _ = tokio::fs::remove_file(to).await;
        }
        written
    }

    async fn exists(&self, key: &BlobKey) -> Result<bool, BlobError> {
        Ok(sqlx::query("SELECT 1 FROM blobs WHERE key = $1")
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db(key))?
            .is_some())
    }
}

/// Blobs as objects in an S3-compatible bucket (see the module docs).
#[derive(Debug, Clone)]
pub struct BucketBlobs {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    /// `s3://bucket/prefix`, as configured.
    url: String,
    /// Where under the bucket the blobs are (no slash at either end).
    prefix: String,
}

/// Bytes sent per part of a multipart upload (S3 takes at least 5 MiB).
const PART_BYTES: usize = 8 << 20;

impl BucketBlobs {
    /// The bucket of `url` (`s3://bucket[/prefix]`), with the settings of
    /// the `AWS_*` variables among `env` (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for a server
    /// other than AWS, `AWS_ALLOW_HTTP`, …) as `object_store` reads them.
    /// Nothing is sent until a blob is used.
    pub fn s3<'a>(
        url: &str,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, object_store::Error> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        let mut builder = AmazonS3Builder::new();
        for (name, value) in env {
            if name.starts_with("AWS_") {
                if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
        }
        let prefix = url
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, prefix)| prefix.trim_matches('/').to_owned())
            .unwrap_or_default();
        let store = builder.with_url(url).build()?;
        Ok(Self {
            store: std::sync::Arc::new(store),
            url: url.to_owned(),
            prefix,
        })
    }

    fn path(&self, key: &BlobKey) -> object_store::path::Path {
        if self.prefix.is_empty() {
            object_store::path::Path::from(key.as_str())
        } else {
            object_store::path::Path::from(format!("{}/{}", self.prefix, key.as_str()))
        }
    }
}

fn bucket(key: &BlobKey) -> impl FnOnce(object_store::Error) -> BlobError + '_ {
    move |source| BlobError::Bucket {
        key: key.to_string(),
        source,
    }
}

#[async_trait]
impl Blobs for BucketBlobs {
    fn describe(&self) -> String {
        format!("the bucket {}", self.url)
    }

    fn shared(&self) -> bool {
        true
    }

    fn local_path(&self, _key: &BlobKey) -> Option<PathBuf> {
        None
    }

    async fn put_file(&self, key: &BlobKey, from: &Path) -> Result<u64, BlobError> {
        let mut file = tokio::fs::File::open(from).await.map_err(io(key))?;
        // A small file is one put; a larger one a multipart upload, which
        // shows nothing under the key until it is completed.
        let mut out = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            self.path(key),
            PART_BYTES,
        );
        let size = match tokio::io::copy(&mut file, &mut out).await {
            Ok(size) => size,
            Err(err) => {
                // The parts sent so far are dropped, not left in the bucket.
                let _ = out.abort().await;
                return Err(io(key)(err));
            }
        };
        out.shutdown().await.map_err(io(key))?;
        Ok(size)
    }

    async fn get_file(&self, key: &BlobKey, to: &Path) -> Result<bool, BlobError> {
        use futures_util::StreamExt as _;
        let got = match self.store.get(&self.path(key)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(err) => return Err(bucket(key)(err)),
        };
        let expected = got.meta.size;
        let written = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)
                .await
                .map_err(io(key))?;
            let mut stream = got.into_stream();
            let mut size: u64 = 0;
            while let Some(bytes) = stream.next().await {
                let bytes = bytes.map_err(bucket(key))?;
                size += bytes.len() as u64;
                file.write_all(&bytes).await.map_err(io(key))?;
            }
            if size != expected {
                return Err(BlobError::Corrupt {
                    key: key.to_string(),
                    detail: format!("{size} bytes read of {expected}"),
                });
            }
            file.flush().await.map_err(io(key))?;
            file.sync_all().await.map_err(io(key))?;
            Ok(true)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(to).await;
        }
        written
    }

    async fn exists(&self, key: &BlobKey) -> Result<bool, BlobError> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(bucket(key)(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_relative_paths_or_nothing() {
        assert_eq!(
            BlobKey::upload("upl_01abc").map(|k| k.to_string()),
            Some("uploads/upl_01abc".to_owned())
        );
        assert_eq!(
            BlobKey::artifact("0123abcd.tar").map(|k| k.to_string()),
            Some("artifacts/0123abcd.tar".to_owned())
        );
        for bad in ["../x", "upl_../x", "x", "upl_a/b", ""] {
            assert!(BlobKey::upload(bad).is_none(), "{bad}");
        }
        for bad in ["..", ".hidden", "a/b", "", "a b"] {
            assert!(BlobKey::artifact(bad).is_none(), "{bad}");
        }
    }
}
