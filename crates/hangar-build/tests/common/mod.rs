//! Temporary directories for the builder's tests.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A fresh directory under the temp dir, removed (with everything in it) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "hangar-build-test-{}",
            hangar_core::id::new_id(hangar_core::id::IdKind::Request)
        ));
        std::fs::create_dir(&path).expect("temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `file://` URL of the directory, or of `sub` inside it.
    pub fn url(&self, sub: &str) -> String {
        let p = if sub.is_empty() {
            self.0.clone()
        } else {
            self.0.join(sub)
        };
        format!("file://{}", p.display())
    }

    /// Writes `rel` (making its directories, 0755) with mode 0644.
    pub fn file(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        self.dir(
            path.parent()
                .expect("parent")
                .strip_prefix(&self.0)
                .expect("inside"),
        );
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }

    /// Makes directory `rel` and its parents, 0755.
    pub fn dir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(&path).expect("mkdir");
        let mut p = path.as_path();
        while p != self.0 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            p = p.parent().expect("parent");
        }
        path
    }

    pub fn chmod(&self, rel: &str, mode: u32) {
        std::fs::set_permissions(self.0.join(rel), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
