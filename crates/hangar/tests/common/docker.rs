//! Docker for the tests: an engine that answers (or a skip, or with
//! `CI=true` a failure, saying why), and a Python base image made here from
//! the host's own files, since no registry is reachable: `FROM scratch`
//! with the host's `python3`, the libraries it and its extension modules
//! link, its standard library (with `venv` and `ensurepip`, and Debian's
//! pip wheels, so a build step on it makes virtualenvs), and a static
//! busybox for `/bin/sh` and the usual commands.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use hangar_runtime::{DockerDriver, DockerDriverConfig};
use tokio::sync::OnceCell;

/// The tag of the base image; bump it when what goes in changes.
pub const BASE_IMAGE: &str = "hangar-test-python:4";

const PYTHON: &str = "/usr/bin/python3";
const BUSYBOX: &str = "/bin/busybox";
const PYTHON_WHEELS: &str = "/usr/share/python-wheels";

/// A driver on the local engine with `owner`, or why there is none: a
/// skip, except with `CI=true`, where it panics.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
pub async fn driver_or_skip(test: &str, owner: &str) -> Option<DockerDriver> {
    let config = DockerDriverConfig {
        host: None,
        owner: owner.to_owned(),
        default_image: BASE_IMAGE.to_owned(),
    };
    let driver = match DockerDriver::connect(config).await {
        Ok(driver) => driver,
        Err(err) => {
            let why = format!("no Docker engine: {err}");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}, and CI=true"
            );
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
    };
    base_image(&driver).await;
    Some(driver)
}

/// A owner label of 16 characters unique to this test in this run.
pub fn owner(test: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{}-{test}", std::process::id()));
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes every container and network labelled with `owner`, with the
/// docker CLI (for `Drop`, where nothing async runs).
pub fn remove_owned(owner: &str) {
    let filter = format!("label=hangar.docker.owner={owner}");
    let steps: [(&[&str], &[&str]); 2] = [
        (&["ps", "-aq", "--filter"], &["rm", "-f"]),
        (&["network", "ls", "-q", "--filter"], &["network", "rm"]),
    ];
    for (list, remove) in steps {
        let Ok(out) = Command::new("docker").args(list).arg(&filter).output() else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(remove).args(&ids).output();
        }
    }
}

static BASE: OnceCell<()> = OnceCell::const_new();

/// Builds [`BASE_IMAGE`] once per engine (kept between runs).
pub async fn base_image(driver: &DockerDriver) {
    BASE.get_or_init(|| async {
        let present = Command::new("docker")
            .args(["image", "inspect", BASE_IMAGE])
            .output()
            .is_ok_and(|out| out.status.success());
        if present {
            return;
        }
        let context = make_context();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let dockerfile = "FROM scratch\nCOPY root/ /\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/usr/bin:/bin\n";
        let limits = hangar_runtime::BuildLimits {
            memory_bytes: 512 << 20,
            cpu_millis: 1000,
            cpu_limit_millis: None,
        };
        driver
            .build_image(&context, Some(dockerfile), BASE_IMAGE, limits, tx)
            .await
            .expect("building the test base image");
        drain.await.expect("drain");
        let _ = std::fs::remove_dir_all(&context);
    })
    .await;
}

/// The build context: `root/` with the files at their host paths.
fn make_context() -> PathBuf {
    let context = std::env::temp_dir().join(format!("hangar-test-base-{}", std::process::id()));
    let root = context.join("root");
    let python = std::fs::canonicalize(PYTHON).expect("python3 on the host");
    let stdlib = Path::new("/usr/lib").join(python.file_name().expect("a name"));
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    files.insert(python.clone());
    files.insert(PathBuf::from(BUSYBOX));
    // Debian's pip wheels, which its `ensurepip` installs from: a build step
    // on this image makes virtualenvs with pip.
    for wheel in walk(Path::new(PYTHON_WHEELS)) {
        files.insert(wheel);
    }
    let mut linked = vec![python.clone()];
    for entry in walk(&stdlib) {
        let relative = entry.strip_prefix(&stdlib).expect("under");
        let skip = relative.components().any(|c| {
            matches!(
                c.as_os_str().to_str(),
                Some("test" | "__pycache__" | "idlelib" | "tkinter")
            )
        });
        if skip {
            continue;
        }
        if entry.extension().is_some_and(|e| e == "so") {
            linked.push(entry.clone());
        }
        files.insert(entry);
    }
    for binary in linked {
        files.extend(libraries(&binary));
    }
    for file in &files {
        let target = root.join(file.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(file, &target)
            .unwrap_or_else(|err| panic!("copying {}: {err}", file.display()));
    }
    let bin = root.join("usr/bin");
    std::os::unix::fs::symlink(python.file_name().expect("name"), bin.join("python3"))
        .expect("symlink python3");
    // /lib64 is a directory on the host too (the loader); nothing to link.
    context
}

/// Every regular file under `dir`, at any depth.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            found.extend(walk(&path));
        } else if kind.is_file() {
            found.push(path);
        }
    }
    found
}

/// The shared libraries `ldd` says `binary` loads, resolved to real files
/// but kept at the path the loader asks for.
pub fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}
