//! The image a kubernetes cloud's build makes: one new layer holding the
//! built tree at `/app`, on top of the base image's layers, and the config
//! and manifest that say so. Written here byte for byte, without a Docker
//! engine, so that the same tree on the same base always makes the same
//! digests — which is what lets an unchanged source push nothing.
//!
//! * [`app_layer`]: the tree as a tar (entries in name order, every one
//!   owned by root, mtime 0, directories 0755 and files 0644 or, with an
//!   execute bit, 0755: readable by all, writable by none but root),
//!   gzipped at a fixed level with no name or time in its header. Its
//!   `diff_id` is the digest of the tar, its digest that of the gzip.
//! * [`image_config`]: the base image's configuration with the layer's
//!   `diff_id` appended and how the agent runs: `Entrypoint` the agent
//!   contract's command, no `Cmd`, `WorkingDir` `/app`, `User`
//!   `65534:65534`, `Env` the base's plus `PYTHONUNBUFFERED=1` and
//!   `HOME=/tmp`. Everything else of the base (labels, ports) is kept.
//! * [`manifest`]: the base's layers then the new one, in the base
//!   manifest's own format (Docker's schema 2 or OCI's), so every layer
//!   keeps the media type it was pushed with.
//!
//! Not here: talking to the registry ([`crate::kubernetes`]).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use flate2::write::GzEncoder;
use oci_client::manifest::{self, OciImageManifest};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::artifact;
use crate::error::BuildError;

/// Where the tree goes in the image.
pub const APP_DIR: &str = "app";

/// The user a built image runs as (nobody; the pod runs non-root).
pub const IMAGE_USER: &str = "65534:65534";

/// The variables a built image sets over its base's: a writable home and
/// Python output that is not held back.
pub const IMAGE_ENV: [(&str, &str); 2] = [("PYTHONUNBUFFERED", "1"), ("HOME", "/tmp")];

/// A layer written to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:` of the gzip: how the manifest and registry name it.
    pub digest: String,
    /// `sha256:` of the uncompressed tar: how the config names it.
    pub diff_id: String,
    /// The gzip's size in bytes.
    pub size: u64,
}

/// Writes the tree at `dir` as a layer holding it at `/app`, gzipped, to
/// `out` (see the module docs). Blocking.
pub fn app_layer(dir: &Path, out: &Path) -> Result<Layer, BuildError> {
    let io = |path: &Path, err: std::io::Error| BuildError::Io {
        path: path.display().to_string(),
        source: err,
    };
    let file = std::fs::File::create(out).map_err(|err| io(out, err))?;
    let gzip = Hashing::new(std::io::BufWriter::new(file));
    let tar_out = Hashing::new(GzEncoder::new(gzip, flate2::Compression::new(6)));
    let mut tar = tar::Builder::new(tar_out);
    tar.mode(tar::HeaderMode::Deterministic);
    let append_dir = |tar: &mut tar::Builder<_>, name: &str| {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut header, name, std::io::empty())
    };
    append_dir(&mut tar, &format!("{APP_DIR}/")).map_err(|err| io(out, err))?;
    for (rel, meta) in artifact::walk(dir)? {
        let path = dir.join(&rel);
        let name = Path::new(APP_DIR).join(&rel);
        let kind = meta.file_type();
        let written = if kind.is_dir() {
            append_dir(&mut tar, &format!("{}/", name.display()))
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|err| io(&path, err))?;
            let mut header = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut header, &name, &target)
        } else if kind.is_file() {
            let mode = if meta.mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut header = header(tar::EntryType::Regular, mode, meta.len());
            let file = std::fs::File::open(&path).map_err(|err| io(&path, err))?;
            tar.append_data(&mut header, &name, file)
        } else {
            return Err(BuildError::SpecialFile {
                path: path.display().to_string(),
            });
        };
        written.map_err(|err| io(&path, err))?;
    }
    let tar_out = tar.into_inner().map_err(|err| io(out, err))?;
    let (gz, diff_id, _) = tar_out.finish();
    let gzip = gz.finish().map_err(|err| io(out, err))?;
    let (file, digest, size) = gzip.finish();
    file.into_inner()
        .map_err(|err| io(out, err.into_error()))?
        .sync_all()
        .map_err(|err| io(out, err))?;
    Ok(Layer {
        digest,
        diff_id,
        size,
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// The writer, the `sha256:` digest and the byte count.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hash.finalize()));
        (self.inner, digest, self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The `sha256:` digest of `bytes`.
#[must_use]
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The built image's configuration: `base` (the base image's config blob)
/// with `layer` on top, running `entrypoint` (see the module docs).
pub fn image_config(base: &str, layer: &Layer, entrypoint: &[String]) -> Result<Vec<u8>, String> {
    let mut config: Value = serde_json::from_str(base)
        .map_err(|err| format!("the base image's config is not JSON: {err}"))?;
    let object = config
        .as_object_mut()
        .ok_or("the base image's config is not a JSON object")?;
    let run = object
        .entry("config")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("the base image's config has a `config` that is not an object")?;
    let mut env: Vec<String> = run
        .get("Env")
        .and_then(Value::as_array)
        .map(|env| {
            env.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for (name, value) in IMAGE_ENV {
        env.retain(|entry| entry.split_once('=').map_or(entry.as_str(), |(n, _)| n) != name);
        env.push(format!("{name}={value}"));
    }
    run.insert("Env".to_owned(), json!(env));
    run.insert("Entrypoint".to_owned(), json!(entrypoint));
    // The base's Cmd would become the agent's arguments.
    run.remove("Cmd");
    run.insert("WorkingDir".to_owned(), json!(format!("/{APP_DIR}")));
    run.insert("User".to_owned(), json!(IMAGE_USER));
    let rootfs = object
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    rootfs["diff_ids"]
        .as_array_mut()
        .ok_or("the base image's config has no rootfs.diff_ids list")?
        .push(json!(layer.diff_id));
    if let Some(history) = object.get_mut("history").and_then(Value::as_array_mut) {
        history.push(json!({
            "created": "1970-01-01T00:00:00Z",
            "created_by": "hangar: the built source at /app",
        }));
    }
    serde_json::to_vec(&config).map_err(|err| format!("cannot write the image config: {err}"))
}

/// The built image's manifest and its media type: `base`'s layers, then
/// `layer`, with the config of `config_digest` and `config_size` (see the
/// module docs).
pub fn manifest(
    base: &OciImageManifest,
    config_digest: &str,
    config_size: usize,
    layer: &Layer,
) -> Result<(Vec<u8>, String), String> {
    let docker = base.media_type.as_deref() == Some(manifest::IMAGE_MANIFEST_MEDIA_TYPE)
        || base.config.media_type == manifest::IMAGE_DOCKER_CONFIG_MEDIA_TYPE;
    let (media_type, config_type, layer_type) = if docker {
        (
            manifest::IMAGE_MANIFEST_MEDIA_TYPE,
            manifest::IMAGE_DOCKER_CONFIG_MEDIA_TYPE,
            manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
        )
    } else {
        (
            manifest::OCI_IMAGE_MEDIA_TYPE,
            manifest::IMAGE_CONFIG_MEDIA_TYPE,
            manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE,
        )
    };
    let mut layers: Vec<Value> = base
        .layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
        .collect();
    layers.push(json!({"mediaType": layer_type, "digest": layer.digest, "size": layer.size}));
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let bytes =
        serde_json::to_vec(&body).map_err(|err| format!("cannot write the manifest: {err}"))?;
    Ok((bytes, media_type.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn tree(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hangar-layer-{tag}-{}",
            hangar_core::id::new_id(hangar_core::id::IdKind::Build)
        ));
        std::fs::create_dir_all(dir.join(".venv/bin")).expect("dir");
        std::fs::write(dir.join("main.py"), "print('hi')\n").expect("write");
        std::fs::write(dir.join(".venv/bin/activate"), "x\n").expect("write");
        std::fs::set_permissions(
            dir.join(".venv/bin/activate"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("/usr/bin/python3", dir.join(".venv/bin/python"))
            .expect("symlink");
        dir
    }

    #[test]
    fn the_same_tree_makes_the_same_layer_whenever_it_is_written() {
        let (a, b) = (tree("a"), tree("b"));
        // Other owners and times on disk change nothing.
        std::os::unix::fs::lchown(b.join("main.py"), Some(1234), Some(1234)).expect("chown");
        let old = std::fs::File::options()
            .write(true)
            .open(b.join("main.py"))
            .expect("open");
        old.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        )
        .expect("mtime");
        let la = app_layer(&a, &a.with_extension("tgz")).expect("layer a");
        let lb = app_layer(&b, &b.with_extension("tgz")).expect("layer b");
        assert_eq!(la, lb);
        let gz = std::fs::read(a.with_extension("tgz")).expect("read");
        assert_eq!(digest(&gz), la.digest);
        assert_eq!(gz.len() as u64, la.size);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .expect("gunzip");
        assert_eq!(digest(&tar), la.diff_id);
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.mode().expect("mode"),
                    h.uid().expect("uid"),
                    h.mtime().expect("mtime"),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "app/",
                "app/.venv/",
                "app/main.py",
                "app/.venv/bin/",
                "app/.venv/bin/activate",
                "app/.venv/bin/python"
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 0 && e.3 == 0), "{entries:?}");
        let mode = |name: &str| entries.iter().find(|e| e.0 == name).map(|e| e.1);
        assert_eq!(mode("app/main.py"), Some(0o644));
        assert_eq!(mode("app/.venv/bin/activate"), Some(0o755));
        for dir in [a, b] {
            let _ = std::fs::remove_file(dir.with_extension("tgz"));
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn the_config_runs_the_agent_on_the_base() {
        let base = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/bin", "HOME=/root"], "Cmd": ["python3"], "Labels": {"a": "b"}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:base"]},
            "history": [{"created_by": "base"}]
        });
        let layer = Layer {
            digest: "sha256:gz".into(),
            diff_id: "sha256:tar".into(),
            size: 10,
        };
        let argv = vec!["/app/.venv/bin/python".to_owned(), "-u".to_owned()];
        let config: Value = serde_json::from_slice(
            &image_config(&base.to_string(), &layer, &argv).expect("config"),
        )
        .expect("json");
        assert_eq!(config["config"]["Entrypoint"], json!(argv));
        assert!(config["config"].get("Cmd").is_none());
        assert_eq!(config["config"]["WorkingDir"], "/app");
        assert_eq!(config["config"]["User"], "65534:65534");
        assert_eq!(
            config["config"]["Env"],
            json!(["PATH=/usr/bin", "PYTHONUNBUFFERED=1", "HOME=/tmp"])
        );
        assert_eq!(config["config"]["Labels"], json!({"a": "b"}));
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!(["sha256:base", "sha256:tar"])
        );
        assert_eq!(config["history"].as_array().map(Vec::len), Some(2));
        assert!(image_config("[]", &layer, &argv).is_err());
    }

    #[test]
    fn the_manifest_keeps_the_base_format() {
        let descriptor = |media_type: &str, digest: &str| manifest::OciDescriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size: 5,
            ..Default::default()
        };
        let docker = OciImageManifest {
            schema_version: 2,
            media_type: Some(manifest::IMAGE_MANIFEST_MEDIA_TYPE.to_owned()),
            config: descriptor(manifest::IMAGE_DOCKER_CONFIG_MEDIA_TYPE, "sha256:c"),
            layers: vec![descriptor(
                manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
                "sha256:l1",
            )],
            ..Default::default()
        };
        let layer = Layer {
            digest: "sha256:gz".into(),
            diff_id: "sha256:tar".into(),
            size: 10,
        };
        let (bytes, media_type) = manifest(&docker, "sha256:cfg", 42, &layer).expect("manifest");
        assert_eq!(media_type, manifest::IMAGE_MANIFEST_MEDIA_TYPE);
        let body: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(body["config"]["digest"], "sha256:cfg");
        assert_eq!(body["config"]["size"], 42);
        assert_eq!(body["layers"][0]["digest"], "sha256:l1");
        assert_eq!(body["layers"][1]["digest"], "sha256:gz");
        assert_eq!(
            body["layers"][1]["mediaType"],
            manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
        );
        let oci = OciImageManifest {
            media_type: Some(manifest::OCI_IMAGE_MEDIA_TYPE.to_owned()),
            config: descriptor(manifest::IMAGE_CONFIG_MEDIA_TYPE, "sha256:c"),
            ..docker
        };
        let (bytes, media_type) = manifest(&oci, "sha256:cfg", 42, &layer).expect("manifest");
        assert_eq!(media_type, manifest::OCI_IMAGE_MEDIA_TYPE);
        let body: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(
            body["layers"][1]["mediaType"],
            manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE
        );
    }
}
