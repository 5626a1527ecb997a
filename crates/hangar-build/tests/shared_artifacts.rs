//! Artifacts shared through a blob store in a real database (SQLite always,
//! PostgreSQL when configured and always in CI): one server packs what it
//! published, another unpacks the same tree into its own artifacts dir —
//! files, modes, owners, symlinks (absolute ones too, as image roots have)
//! and names that an image layer would take for whiteouts.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hangar_build::artifact::{local_copy, share, tree_hash};
use hangar_store::blobs::{Blobs, DirBlobs};
use hangar_store::testing::{backends, TestDb};

/// A scratch dir removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hangar-build-{tag}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir.canonicalize().expect("absolute"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A published artifact `artifacts/<name>` with one of everything.
fn artifact(artifacts: &Path, name: &str) -> PathBuf {
    let dir = artifacts.join(name);
    std::fs::create_dir_all(dir.join("lib/pkg")).expect("dirs");
    std::fs::write(dir.join("main.py"), "print('hi')\n").expect("file");
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\n").expect("file");
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::write(dir.join("lib/pkg/.wh.data"), "not a whiteout").expect("file");
    std::fs::write(dir.join("lib/pkg/data"), vec![7u8; 300_000]).expect("file");
    std::os::unix::fs::symlink("pkg/data", dir.join("lib/link")).expect("link");
    std::os::unix::fs::symlink("/usr/bin/python3", dir.join("python")).expect("link");
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(dir.join("lib/pkg/data"), Some(1000), Some(1000)).expect("chown");
    }
    dir
}

#[tokio::test]
async fn an_artifact_built_on_one_server_runs_from_a_copy_on_another() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let scratch = Scratch::new("shared-artifacts");
        let (here, there) = (scratch.0.join("a/artifacts"), scratch.0.join("b/artifacts"));
        let built = artifact(&here, "0123456789abcdef0123456789abcdef");
        let blobs = db.store.database_blobs();

        assert!(share(&built, &here, &blobs).await.expect("shared"));
        assert!(
            !share(&built, &here, &blobs).await.expect("shared"),
            "{backend:?}: stored once"
        );

        let recorded = built.to_str().expect("utf-8");
        let copy = local_copy(recorded, &there, &blobs).await.expect("copy");
        assert_eq!(copy, there.join("0123456789abcdef0123456789abcdef"));
        assert_eq!(
            tree_hash(&copy).expect("hash"),
            tree_hash(&built).expect("hash"),
            "{backend:?}: the same tree"
        );
        assert_eq!(
            std::fs::read_link(copy.join("python")).expect("link"),
            Path::new("/usr/bin/python3")
        );
        assert_eq!(
            std::fs::read_to_string(copy.join("lib/pkg/.wh.data")).expect("kept"),
            "not a whiteout"
        );
        let data = std::fs::symlink_metadata(copy.join("lib/pkg/data")).expect("data");
        assert_eq!(data.mode() & 0o7777, 0o644);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((data.uid(), data.gid()), (1000, 1000), "owners kept");
        }
        // Nothing but the copy is left in the artifacts dir.
        let names: Vec<_> = std::fs::read_dir(&there)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        // The copy is used from then on, even with the blob gone from view.
        std::fs::write(copy.join("marker"), "").expect("marker");
        assert_eq!(
            local_copy(recorded, &there, &blobs).await.expect("again"),
            copy
        );

        // Built here: itself. Never shared (a directory used in place): itself.
        assert_eq!(
            local_copy(recorded, &here, &blobs).await.expect("here"),
            built
        );
        let in_place = scratch.0.join("agent");
        std::fs::create_dir_all(&in_place).expect("dir");
        let in_place = in_place.to_str().expect("utf-8");
        assert!(!share(Path::new(in_place), &here, &blobs)
            .await
            .expect("not shared"));
        assert_eq!(
            local_copy(in_place, &there, &blobs)
                .await
                .expect("in place"),
            Path::new(in_place)
        );
    }
}

#[tokio::test]
async fn servers_whose_data_dirs_have_one_path_fetch_what_another_built() {
    // Pods of one Deployment all keep their data dir at the same path: the
    // artifact recorded by the server that built it names this server's
    // artifacts dir, where it is not.
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let scratch = Scratch::new("same-path-artifacts");
        let artifacts = scratch.0.join("data/artifacts");
        let built = artifact(&artifacts, "00112233445566778899aabbccddeeff");
        let blobs = db.store.database_blobs();
        assert!(share(&built, &artifacts, &blobs).await.expect("shared"));
        let original = tree_hash(&built).expect("hash");
        // Another pod: the same path, without the artifact.
        std::fs::remove_dir_all(&built).expect("another pod");

        let recorded = built.to_str().expect("utf-8");
        let copy = local_copy(recorded, &artifacts, &blobs)
            .await
            .expect("fetched");
        assert_eq!(copy, built);
        assert_eq!(
            tree_hash(&copy).expect("fetched from the blob store"),
            original,
            "{backend:?}: the same tree"
        );
    }
}

#[tokio::test]
async fn blobs_in_the_data_dir_share_nothing() {
    let scratch = Scratch::new("unshared-artifacts");
    let here = scratch.0.join("artifacts");
    let built = artifact(&here, "fedcba9876543210fedcba9876543210");
    let blobs = DirBlobs::new(&scratch.0);
    assert!(!blobs.shared());
    assert!(!share(&built, &here, &blobs).await.expect("nothing"));
    assert!(!scratch
        .0
        .join("artifacts/fedcba9876543210fedcba9876543210.tar")
        .exists());
    let recorded = built.to_str().expect("utf-8");
    assert_eq!(
        local_copy(recorded, &scratch.0.join("elsewhere"), &blobs)
            .await
            .expect("as recorded"),
        built
    );
}
