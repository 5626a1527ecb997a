//! What Hangar keeps of an OCI image's configuration beside the image's
//! unpacked root filesystem, and how a replica of it runs.
//!
//! The builder writes an [`ImageRun`] as [`IMAGE_CONFIG_FILE`] next to the
//! [`ROOTFS_DIR`] in an image artifact (`artifacts/oci-<digest>/`); the
//! controller reads it back to make the replica's command, environment,
//! working directory and user. It lives here, without I/O, so the two agree
//! on one meaning of each field.

use serde::{Deserialize, Serialize};

/// The file, in an image artifact, holding its [`ImageRun`].
pub const IMAGE_CONFIG_FILE: &str = "image.json";

/// The directory, in an image artifact, holding the unpacked root filesystem.
pub const ROOTFS_DIR: &str = "rootfs";

/// How an image artifact's directory name starts (the rest is the image
/// manifest's digest): what tells it apart from a source tree's artifact.
pub const ARTIFACT_PREFIX: &str = "oci-";

/// The uid and gid a replica runs as when the image names no usable user.
pub const UNPRIVILEGED_ID: u32 = 65_534;

/// The parts of an OCI image's config (`config` in the image configuration
/// JSON) that say how its process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRun {
    /// The image reference it was pulled as.
    pub image: String,
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`: the entrypoint's arguments, or the command without one.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`, in order.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`; empty: `/`.
    #[serde(default)]
    pub working_dir: String,
    /// `User`: `uid`, `uid:gid`, or a name.
    #[serde(default)]
    pub user: String,
    /// The TCP port of `ExposedPorts`, when it names exactly one.
    #[serde(default)]
    pub exposed_port: Option<u16>,
}

impl ImageRun {
    /// The command: entrypoint then cmd (empty: the image says nothing to run).
    #[must_use]
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// The environment as pairs, in order; entries without `=` are left out.
    #[must_use]
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// The working directory, absolute.
    #[must_use]
    pub fn cwd(&self) -> String {
        if self.working_dir.starts_with('/') {
            self.working_dir.clone()
        } else {
            format!("/{}", self.working_dir)
        }
    }

    /// The uid and gid the replica runs as: the image's `User` when it is
    /// numeric (`uid` or `uid:gid`; a missing or named group is
    /// [`UNPRIVILEGED_ID`]), else [`UNPRIVILEGED_ID`] for both. Root (uid 0,
    /// also an empty `User`) is never used: replicas share the host's user
    /// namespace, so they never run as its root.
    #[must_use]
    pub fn uid_gid(&self) -> (u32, u32) {
        let (user, group) = match self.user.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (self.user.as_str(), None),
        };
        match user.parse::<u32>() {
            Ok(uid) if uid != 0 => {
                let gid = group
                    .and_then(|g| g.parse::<u32>().ok())
                    .filter(|&gid| gid != 0)
                    .unwrap_or(UNPRIVILEGED_ID);
                (uid, gid)
            }
            _ => (UNPRIVILEGED_ID, UNPRIVILEGED_ID),
        }
    }
}

/// Whether an artifact directory's name is an image artifact's.
#[must_use]
pub fn is_image_artifact_name(name: &str) -> bool {
    name.strip_prefix(ARTIFACT_PREFIX).is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The artifact directory name of the image whose manifest has `digest`
/// (`sha256:abc…` → `oci-sha256-abc…`); `None` for a digest that cannot be a
/// file name.
#[must_use]
pub fn artifact_name(digest: &str) -> Option<String> {
    let name = format!("{ARTIFACT_PREFIX}{}", digest.replacen(':', "-", 1));
    (digest.len() <= 200 && is_image_artifact_name(&name)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_numeric_and_never_root() {
        let run = |user: &str| ImageRun {
            user: user.to_owned(),
            ..ImageRun::default()
        };
        assert_eq!(run("1000").uid_gid(), (1000, UNPRIVILEGED_ID));
        assert_eq!(run("1000:1001").uid_gid(), (1000, 1001));
        assert_eq!(run("1000:staff").uid_gid(), (1000, UNPRIVILEGED_ID));
        assert_eq!(run("1000:0").uid_gid(), (1000, UNPRIVILEGED_ID));
        for named_or_root in ["", "0", "0:0", "root", "app", "app:app"] {
            assert_eq!(
                run(named_or_root).uid_gid(),
                (UNPRIVILEGED_ID, UNPRIVILEGED_ID),
                "{named_or_root}"
            );
        }
    }

    #[test]
    fn command_env_and_cwd_come_from_the_config() {
        let run = ImageRun {
            entrypoint: vec!["/bin/busybox".into(), "httpd".into()],
            cmd: vec!["-f".into()],
            env: vec!["A=1".into(), "B=x=y".into(), "broken".into(), "=v".into()],
            working_dir: "www".into(),
            ..ImageRun::default()
        };
        assert_eq!(run.argv(), ["/bin/busybox", "httpd", "-f"]);
        assert_eq!(
            run.env_pairs(),
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(run.cwd(), "/www");
        assert_eq!(ImageRun::default().cwd(), "/");
    }

    #[test]
    fn artifact_names_come_from_digests() {
        assert_eq!(
            artifact_name("sha256:ab12").as_deref(),
            Some("oci-sha256-ab12")
        );
        assert!(artifact_name("sha256:../x").is_none());
        assert!(is_image_artifact_name("oci-sha256-ab12"));
        assert!(!is_image_artifact_name("0123abcd"));
        assert!(!is_image_artifact_name("oci-"));
    }
}
