//! What a source's build step is, read from its files (the agent contract):
//!
//! 1. `hangar.toml` with `[build] command = "…"` (run by `/bin/sh -c`) or
//!    `["prog", "arg", …]`: exactly that;
//! 2. `requirements.txt`: a virtualenv at `/app/.venv` and
//!    `pip install -r requirements.txt` into it;
//! 3. `pyproject.toml`: a virtualenv at `/app/.venv` and `pip install /app`;
//! 4. `package.json` declaring dependencies: `npm ci` with a lock file
//!    (`package-lock.json` or `npm-shrinkwrap.json`: exactly the locked
//!    versions), else `npm install`; production dependencies only, into
//!    `/app/node_modules`;
//! 5. anything else: no build step — the source is the artifact.
//!
//! The step runs inside a sandbox with `/app` (the build's copy of the
//! source) writable; see the crate docs. The recipe's text is part of the
//! artifact's content hash, so changing how sources are built never reuses
//! an artifact built the old way.

use std::path::Path;

use crate::error::BuildError;

/// A build step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The program and its arguments, run in `/app`.
    pub argv: Vec<String>,
    /// Where it came from, for the log.
    pub origin: &'static str,
}

impl Recipe {
    fn shell(line: &str, origin: &'static str) -> Self {
        Self {
            argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), line.to_owned()],
            origin,
        }
    }

    /// The step as one line, for the log and the content hash.
    #[must_use]
    pub fn describe(&self) -> String {
        self.argv.join(" ")
    }
}

const VENV: &str = "python3 -m venv /app/.venv";
const PIP: &str =
    "/app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-input";

/// The build step `dir` asks for, if any.
pub fn recipe(dir: &Path) -> Result<Option<Recipe>, BuildError> {
    let manifest = dir.join("hangar.toml");
    if manifest.symlink_metadata().is_ok_and(|m| m.is_file()) {
        let text = std::fs::read_to_string(&manifest).map_err(|err| BuildError::Io {
            path: "hangar.toml".to_owned(),
            source: err,
        })?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|err| BuildError::Manifest(format!("hangar.toml is not valid TOML: {err}")))?;
        if let Some(command) = table.get("build").and_then(|build| build.get("command")) {
            let recipe = match command {
                toml::Value::String(line) if !line.trim().is_empty() => {
                    Recipe::shell(line, "hangar.toml [build] command")
                }
                toml::Value::Array(items) if !items.is_empty() => Recipe {
                    argv: items
                        .iter()
                        .map(|item| item.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            BuildError::Manifest(
                                "hangar.toml: build.command must be a list of strings".to_owned(),
                            )
                        })?,
                    origin: "hangar.toml [build] command",
                },
                _ => {
                    return Err(BuildError::Manifest(
                        "hangar.toml: build.command must be a non-empty string or list".to_owned(),
                    ))
                }
            };
            return Ok(Some(recipe));
        }
    }
    let is_file = |name: &str| dir.join(name).symlink_metadata().is_ok_and(|m| m.is_file());
    if is_file("requirements.txt") {
        return Ok(Some(Recipe::shell(
            &format!("{VENV} && {PIP} -r /app/requirements.txt"),
            "requirements.txt",
        )));
    }
    if is_file("pyproject.toml") {
        return Ok(Some(Recipe::shell(
            &format!("{VENV} && {PIP} /app"),
            "pyproject.toml",
        )));
    }
    if is_file("package.json") && declares_dependencies(dir)? {
        let locked = is_file("package-lock.json") || is_file("npm-shrinkwrap.json");
        let (command, origin) = if locked {
            ("ci", "package.json and its lock file")
        } else {
            ("install", "package.json")
        };
        return Ok(Some(Recipe {
            argv: [
                "npm",
                command,
                "--omit=dev",
                "--no-audit",
                "--no-fund",
                "--no-update-notifier",
            ]
            .map(str::to_owned)
            .to_vec(),
            origin,
        }));
    }
    Ok(None)
}

/// Whether `package.json` names any (non-dev) dependencies: without any,
/// a Node source runs as it is and skips npm altogether.
fn declares_dependencies(dir: &Path) -> Result<bool, BuildError> {
    let text = std::fs::read_to_string(dir.join("package.json")).map_err(|err| BuildError::Io {
        path: "package.json".to_owned(),
        source: err,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|err| BuildError::Manifest(format!("package.json is not valid JSON: {err}")))?;
    Ok(
        ["dependencies", "optionalDependencies", "bundleDependencies"]
            .iter()
            .any(|key| match &json[key] {
                serde_json::Value::Object(map) => !map.is_empty(),
                serde_json::Value::Array(list) => !list.is_empty(),
                _ => false,
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hangar-recipe-{}-{}",
            std::process::id(),
            hangar_core::id::new_id(hangar_core::id::IdKind::Build)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        dir
    }

    #[test]
    fn node_sources_install_their_dependencies_locked_when_they_can() {
        let deps = r#"{"dependencies": {"is-number": "7.0.0"}}"#;
        let plain = recipe(&dir(&[("package.json", deps)]))
            .expect("ok")
            .expect("a step");
        assert_eq!(plain.argv[..2], ["npm", "install"]);
        assert!(plain.argv.contains(&"--omit=dev".to_owned()));
        let locked = recipe(&dir(&[("package.json", deps), ("package-lock.json", "{}")]))
            .expect("ok")
            .expect("a step");
        assert_eq!(locked.argv[..2], ["npm", "ci"]);
        // Nothing to install: no step at all.
        for none in [
            r#"{"name": "x"}"#,
            r#"{"dependencies": {}, "devDependencies": {"a": "1"}}"#,
        ] {
            assert_eq!(
                recipe(&dir(&[("package.json", none)])).expect("ok"),
                None,
                "{none}"
            );
        }
        assert!(matches!(
            recipe(&dir(&[("package.json", "{nope")])),
            Err(BuildError::Manifest(_))
        ));
        // Python first, as before.
        let both = recipe(&dir(&[("package.json", deps), ("requirements.txt", "x\n")]))
            .expect("ok")
            .expect("a step");
        assert_eq!(both.origin, "requirements.txt");
    }
}
