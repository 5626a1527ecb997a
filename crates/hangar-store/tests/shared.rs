//! What servers sharing one database share through it, against real
//! databases (SQLite always, PostgreSQL when configured and always in CI):
//! the fingerprint of their key, and blobs kept as chunks in the database;
//! blobs kept in a directory, as one server does alone; and blobs in an
//! S3-compatible bucket, when `HANGAR_TEST_S3_ENDPOINT` names a server that
//! takes any credentials (moto's, as CI runs it; always in CI).

use std::path::{Path, PathBuf};

use hangar_store::blobs::{
    BlobError, BlobKey, Blobs, BucketBlobs, DatabaseBlobs, DirBlobs, CHUNK_BYTES,
};
use hangar_store::seal::{fingerprint, KeyCheck, Sealer};
use hangar_store::testing::{backends, TestDb};
use sqlx::{Connection, Executor};

/// A scratch dir removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hangar-store-{tag}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` bytes that do not repeat within a chunk.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 31 + usize::from(seed) * 7) % 251).expect("byte"))
        .collect()
}

#[tokio::test]
async fn the_first_key_is_the_stores_and_another_is_told_apart() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let key = Sealer::generate_key();
        let mine = fingerprint(&key);
        assert_eq!(
            db.store
                .claim_key_fingerprint("secret", &mine, "node-a")
                .await
                .expect("claim"),
            KeyCheck::Recorded
        );
        assert_eq!(
            db.store
                .claim_key_fingerprint("secret", &mine, "node-b")
                .await
                .expect("claim"),
            KeyCheck::Matches,
            "{backend:?}: the same key on another node"
        );
        let other = fingerprint(&Sealer::generate_key());
        match db
            .store
            .claim_key_fingerprint("secret", &other, "node-c")
            .await
            .expect("claim")
        {
            KeyCheck::Differs { recorded_by, .. } => assert_eq!(recorded_by, "node-a"),
            found => panic!("{backend:?}: another key was taken for the same: {found:?}"),
        }
        // The one that differed did not replace the first.
        assert_eq!(
            db.store
                .claim_key_fingerprint("secret", &mine, "node-d")
                .await
                .expect("claim"),
            KeyCheck::Matches
        );
    }
}

/// Stores, reads back and checks blobs in `blobs`, with files in `scratch`.
async fn round_trip(blobs: &dyn Blobs, scratch: &Path) {
    // Two chunks and a bit, an empty one, and an exact chunk.
    for (name, data) in [
        ("upl_big", bytes(2 * CHUNK_BYTES + 17, 1)),
        ("upl_empty", Vec::new()),
        ("upl_exact", bytes(CHUNK_BYTES, 2)),
    ] {
        let key = BlobKey::upload(name).expect("key");
        assert!(!blobs.exists(&key).await.expect("exists"));
        let from = scratch.join(format!("{name}.in"));
        std::fs::write(&from, &data).expect("write");
        assert_eq!(
            blobs.put_file(&key, &from).await.expect("put"),
            data.len() as u64
        );
        assert!(blobs.exists(&key).await.expect("exists"));
        let to = scratch.join(format!("{name}.out"));
        assert!(blobs.get_file(&key, &to).await.expect("get"));
        assert!(std::fs::read(&to).expect("read") == data, "{name}");
    }
    // Replacing a blob: the new bytes are read.
    let key = BlobKey::upload("upl_big").expect("key");
    let from = scratch.join("replace.in");
    std::fs::write(&from, b"smaller now").expect("write");
    blobs.put_file(&key, &from).await.expect("replace");
    let to = scratch.join("replace.out");
    assert!(blobs.get_file(&key, &to).await.expect("get"));
    assert_eq!(std::fs::read(&to).expect("read"), b"smaller now");
    // No such blob: false, and no file left.
    let missing = scratch.join("missing.out");
    assert!(!blobs
        .get_file(&BlobKey::artifact("nothing.tar").expect("key"), &missing)
        .await
        .expect("get"));
    assert!(!missing.exists());
}

#[tokio::test]
async fn blobs_in_a_directory_are_its_files() {
    let scratch = Scratch::new("dir-blobs");
    let root = scratch.0.join("data");
    let blobs = DirBlobs::new(&root);
    round_trip(&blobs, &scratch.0).await;
    assert!(!blobs.shared());
    let key = BlobKey::upload("upl_exact").expect("key");
    assert_eq!(
        blobs.local_path(&key),
        Some(root.join("uploads/upl_exact")),
        "read in place"
    );
    assert_eq!(
        std::fs::read(root.join("uploads/upl_exact")).expect("file"),
        bytes(CHUNK_BYTES, 2)
    );
}

async fn chunk_count(url: &str) -> i64 {
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let row = sqlx::query("SELECT COUNT(*) AS n FROM blob_chunks")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    sqlx::Row::try_get(&row, "n").expect("n")
}

#[tokio::test]
async fn blobs_in_the_database_are_chunks_shared_and_checked() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let scratch = Scratch::new("db-blobs");
        let blobs: DatabaseBlobs = db.store.database_blobs();
        round_trip(&blobs, &scratch.0).await;
        assert!(blobs.shared());
        assert_eq!(
            blobs.local_path(&BlobKey::upload("upl_x").expect("key")),
            None
        );

        // A second store on the database (another server) reads the same blob.
        let other = hangar_store::Store::connect(
            &db.url,
            Sealer::new(&Sealer::generate_key()).expect("key"),
        )
        .await
        .expect("second store");
        let key = BlobKey::upload("upl_exact").expect("key");
        let to = scratch.0.join("other.out");
        assert!(other
            .database_blobs()
            .get_file(&key, &to)
            .await
            .expect("get"));
        assert!(std::fs::read(&to).expect("read") == bytes(CHUNK_BYTES, 2));

        // The same bytes under another key add no chunk.
        let before = chunk_count(&db.url).await;
        let from = scratch.0.join("again.in");
        std::fs::write(&from, bytes(CHUNK_BYTES, 2)).expect("write");
        blobs
            .put_file(&BlobKey::artifact("again.tar").expect("key"), &from)
            .await
            .expect("put");
        assert_eq!(chunk_count(&db.url).await, before, "{backend:?}");

        // A chunk changed in the database is found out, not handed on.
        let mut conn = sqlx::AnyConnection::connect(&db.url)
            .await
            .expect("connect");
        // (SQLite's `||` makes text of bytes: cast back.)
        let tamper = match backend {
            hangar_store::Backend::Sqlite => {
                "UPDATE blob_chunks SET data = CAST(data || data AS BLOB)"
            }
            hangar_store::Backend::Postgres => "UPDATE blob_chunks SET data = data || data",
        };
        conn.execute(tamper).await.expect("tamper");
        let damaged = scratch.0.join("damaged.out");
        match blobs.get_file(&key, &damaged).await {
            Err(BlobError::Corrupt { .. }) => {}
            other => panic!("{backend:?}: a damaged chunk was read: {other:?}"),
        }
        assert!(!damaged.exists(), "no part of a damaged blob is left");
        other.close().await;
    }
}

/// The S3-compatible server of the bucket tests, or `None` (not in CI).
#[allow(
    clippy::disallowed_methods,
    reason = "test support: where the test S3 server is, as CI sets it"
)]
fn s3_endpoint() -> Option<String> {
    let endpoint = std::env::var("HANGAR_TEST_S3_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty());
    if endpoint.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but HANGAR_TEST_S3_ENDPOINT is not set: the bucket blobs would not be tested"
        );
        eprintln!("SKIPPED: no S3-compatible server (HANGAR_TEST_S3_ENDPOINT)");
    }
    endpoint
}

#[tokio::test]
async fn blobs_in_a_bucket_are_objects_under_its_prefix() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = format!("hangar-test-{:016x}", rand::random::<u64>());
    // A test server makes buckets on an unsigned PUT.
    let made = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("make the bucket");
    assert!(made.status().is_success(), "{made:?}");
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "hangar"),
        ("AWS_SECRET_ACCESS_KEY", "hangar"),
        ("AWS_REGION", "us-east-1"),
        ("HOME", "/nowhere"),
    ];
    let blobs = BucketBlobs::s3(&format!("s3://{bucket}/hangar/blobs"), env).expect("bucket blobs");
    assert!(blobs.shared());
    assert_eq!(
        blobs.local_path(&BlobKey::upload("upl_x").expect("key")),
        None
    );
    let scratch = Scratch::new("bucket-blobs");
    round_trip(&blobs, &scratch.0).await;
    // Under the prefix, as any S3 client sees it.
    let client = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_access_key_id("hangar")
        .with_secret_access_key("hangar")
        .with_region("us-east-1")
        .with_bucket_name(&bucket)
        .build()
        .expect("client");
    let object = object_store::ObjectStore::get(
        &client,
        &object_store::path::Path::from("hangar/blobs/uploads/upl_exact"),
    )
    .await
    .expect("the object")
    .bytes()
    .await
    .expect("bytes");
    assert!(object.as_ref() == bytes(CHUNK_BYTES, 2).as_slice());
    // A bucket that is not there: an error, not "no such blob".
    let missing = BucketBlobs::s3(&format!("s3://{bucket}-missing"), env).expect("bucket blobs");
    let from = scratch.0.join("x.in");
    std::fs::write(&from, b"x").expect("write");
    assert!(missing
        .put_file(&BlobKey::upload("upl_x").expect("key"), &from)
        .await
        .is_err());
}
