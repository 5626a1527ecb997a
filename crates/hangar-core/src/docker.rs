//! Docker clouds: what the API, the builder and the controller must agree on
//! when a cloud's `driver` is `docker`, kept here without I/O so there is one
//! meaning of each.
//!
//! * A build for a docker cloud makes one image, tagged [`image_tag`] of the
//!   build's id, on the engine that will run it; replicas run that tag.
//! * The build's artifact is still the source tree. A [`DOCKERFILE`] at its
//!   root means the image came from the tree's own Dockerfile (or, for a
//!   `docker` source, is the pulled image: its artifact is a tree holding
//!   just `FROM <image>`), and runs its own entrypoint, cmd and working
//!   directory; without one, the builder generated the Dockerfile (the tree
//!   at `/app`), and replicas run the command the agent contract finds in
//!   the tree, as on a sandbox.
//! * A cloud's `config` is [`DockerCloudConfig`]; anything else in it is
//!   refused when the cloud is created, so a typo never goes unnoticed.

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// The Dockerfile a source tree may bring (at its root).
pub const DOCKERFILE: &str = "Dockerfile";

/// The image tag a build for a docker cloud makes and its replicas run:
/// `hangar-build:<build id>`, lowercase as image tags must be.
#[must_use]
pub fn image_tag(build_id: &str) -> String {
    format!("hangar-build:{}", build_id.to_ascii_lowercase())
}

/// The settings a docker cloud takes in its `config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerCloudConfig {
    /// The image a generated Dockerfile starts `FROM` (default: one per
    /// runtime, chosen by the builder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
}

impl DockerCloudConfig {
    /// Reads a cloud's `config`; errors name the field under `config`.
    pub fn parse(config: &serde_json::Value) -> Result<Self, Invalid> {
        let object = match config {
            serde_json::Value::Object(object) => object,
            serde_json::Value::Null => return Ok(Self::default()),
            _ => return Err(Invalid::new("config", "must be an object")),
        };
        let mut parsed = Self::default();
        for (key, value) in object {
            match key.as_str() {
                "base_image" => {
                    let image = value.as_str().ok_or_else(|| {
                        Invalid::new("config.base_image", "must be a string (an image reference)")
                    })?;
                    if image.is_empty()
                        || image.len() > 255
                        || image.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(Invalid::new(
                            "config.base_image",
                            "must be an image reference: 1 to 255 characters, no whitespace",
                        ));
                    }
                    parsed.base_image = Some(image.to_owned());
                }
                other => {
                    return Err(Invalid::new(
                        format!("config.{other}"),
                        "unknown setting for a docker cloud (it takes: base_image)",
                    ))
                }
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tags_are_lowercase_build_ids() {
        assert_eq!(
            image_tag("build_01HZX3ABCDEF"),
            "hangar-build:build_01hzx3abcdef"
        );
    }

    #[test]
    fn config_takes_a_base_image_and_nothing_else() {
        assert_eq!(
            DockerCloudConfig::parse(&json!({})),
            Ok(DockerCloudConfig::default())
        );
        assert_eq!(
            DockerCloudConfig::parse(&json!(null)),
            Ok(DockerCloudConfig::default())
        );
        assert_eq!(
            DockerCloudConfig::parse(&json!({"base_image": "python:3.12-slim"}))
                .map(|c| c.base_image),
            Ok(Some("python:3.12-slim".to_owned()))
        );
        for (config, field) in [
            (json!({"base_image": ""}), "config.base_image"),
            (json!({"base_image": "python 3"}), "config.base_image"),
            (json!({"base_image": "a\nb"}), "config.base_image"),
            (json!({"base_image": 3}), "config.base_image"),
            (json!({"base_imag": "x"}), "config.base_imag"),
            (json!([1]), "config"),
        ] {
            let err = DockerCloudConfig::parse(&config).expect_err("refused");
            assert_eq!(err.field, field, "{config}");
        }
    }
}
