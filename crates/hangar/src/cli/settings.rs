//! Which server and API key a client command uses: `--server`/`--key`, then
//! `HANGAR_URL`/`HANGAR_KEY`, then the file `hangar login` wrote — each value
//! on its own, so a flag can override one of them and keep the other. The
//! file lives under `$XDG_CONFIG_HOME/hangar/config.toml` (else
//! `~/.config/hangar/config.toml`) and is written readable by its owner only,
//! since it holds a key.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use super::UsageError;

/// `--server` and `--key`, taken by every client command.
#[derive(Debug, Clone, Default, Args)]
pub struct Connection {
    /// Hangar's URL, e.g. http://127.0.0.1:7070 [env: HANGAR_URL] [default: from `hangar login`]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// API key [env: HANGAR_KEY] [default: from `hangar login`]
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

/// The config file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The server's URL.
    pub server: Option<String>,
    /// The API key.
    pub key: Option<String>,
}

/// The server and key a command talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Base URL, without a trailing slash.
    pub server: String,
    /// API key.
    pub key: String,
}

/// Where the config file is: `$XDG_CONFIG_HOME/hangar/config.toml`, else
/// `$HOME/.config/hangar/config.toml`.
pub fn config_path(env: &HashMap<String, String>) -> anyhow::Result<PathBuf> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
    // The XDG spec ignores a relative XDG_CONFIG_HOME.
    if let Some(xdg) = get("XDG_CONFIG_HOME").filter(|v| Path::new(v).is_absolute()) {
        return Ok(Path::new(xdg).join("hangar/config.toml"));
    }
    match get("HOME") {
        Some(home) => Ok(Path::new(home).join(".config/hangar/config.toml")),
        None => Err(UsageError(
            "neither XDG_CONFIG_HOME nor HOME is set: no place for the config file".to_owned(),
        )
        .into()),
    }
}

/// Reads the config file; a missing one is empty.
pub fn read(path: &Path) -> anyhow::Result<ConfigFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| UsageError(format!("{}: {}", path.display(), e.message())).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the config file with mode 0600 (its directory 0700 when created),
/// through a temporary file renamed over it, so a reader never sees half.
pub fn write(path: &Path, config: &ConfigFile) -> anyhow::Result<()> {
    let dir = path.parent().context("the config path has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let text = toml::to_string(config).context("cannot serialize the config")?;
    let tmp = path.with_extension("toml.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // A file left from before keeps its mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Picks each of server and key from the flag, else the environment, else
/// the file.
pub fn resolve(
    flags: &Connection,
    env: &HashMap<String, String>,
    file: &ConfigFile,
) -> Result<Settings, UsageError> {
    let set = |v: &&String| !v.is_empty();
    let pick = |flag: &Option<String>, var: &str, saved: &Option<String>| {
        flag.as_ref()
            .filter(set)
            .or_else(|| env.get(var).filter(set))
            .or_else(|| saved.as_ref().filter(set))
            .cloned()
    };
    let server = pick(&flags.server, "HANGAR_URL", &file.server).ok_or_else(|| {
        UsageError("no server: pass --server URL, set HANGAR_URL or run `hangar login`".to_owned())
    })?;
    let key = pick(&flags.key, "HANGAR_KEY", &file.key).ok_or_else(|| {
        UsageError("no API key: pass --key KEY, set HANGAR_KEY or run `hangar login`".to_owned())
    })?;
    Ok(Settings {
        server: normalize_server(&server)?,
        key,
    })
}

/// Checks a server URL and drops a trailing slash.
pub fn normalize_server(server: &str) -> Result<String, UsageError> {
    let trimmed = server.trim().trim_end_matches('/');
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    if host.is_none_or(str::is_empty) {
        return Err(UsageError(format!(
            "{server:?} is not a server URL (http://host:port or https://host)"
        )));
    }
    Ok(trimmed.to_owned())
}

/// The settings of a command: its flags, the environment and the config file
/// (read only when a flag and the environment leave something open).
pub fn load(flags: &Connection, env: &HashMap<String, String>) -> anyhow::Result<Settings> {
    let given = |flag: &Option<String>, var: &str| {
        flag.as_ref().is_some_and(|v| !v.is_empty()) || env.get(var).is_some_and(|v| !v.is_empty())
    };
    let needs_file = !given(&flags.server, "HANGAR_URL") || !given(&flags.key, "HANGAR_KEY");
    let file = if needs_file {
        read(&config_path(env)?)?
    } else {
        ConfigFile::default()
    };
    Ok(resolve(flags, env, &file)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(server: &str, key: &str) -> ConfigFile {
        ConfigFile {
            server: Some(server.to_owned()),
            key: Some(key.to_owned()),
        }
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let flags = Connection {
            server: Some("http://flag:1/".to_owned()),
            key: Some("flag-key".to_owned()),
        };
        let vars = env(&[("HANGAR_URL", "http://env:2"), ("HANGAR_KEY", "env-key")]);
        let saved = file("http://file:3", "file-key");
        let all = resolve(&flags, &vars, &saved).expect("settings");
        assert_eq!(all.server, "http://flag:1");
        assert_eq!(all.key, "flag-key");

        let none = Connection::default();
        let from_env = resolve(&none, &vars, &saved).expect("settings");
        assert_eq!(
            (from_env.server.as_str(), from_env.key.as_str()),
            ("http://env:2", "env-key")
        );

        let from_file = resolve(&none, &env(&[]), &saved).expect("settings");
        assert_eq!(
            (from_file.server.as_str(), from_file.key.as_str()),
            ("http://file:3", "file-key")
        );
    }

    #[test]
    fn each_value_is_picked_on_its_own() {
        let flags = Connection {
            key: Some("flag-key".to_owned()),
            ..Connection::default()
        };
        let vars = env(&[("HANGAR_URL", "http://env:2")]);
        let s = resolve(&flags, &vars, &file("http://file:3", "file-key")).expect("settings");
        assert_eq!(
            (s.server.as_str(), s.key.as_str()),
            ("http://env:2", "flag-key")
        );

        let s = resolve(
            &Connection::default(),
            &env(&[("HANGAR_KEY", "env-key")]),
            &file("http://file:3", "file-key"),
        )
        .expect("settings");
        assert_eq!(
            (s.server.as_str(), s.key.as_str()),
            ("http://file:3", "env-key")
        );
    }

    #[test]
    fn missing_or_bad_values_are_usage_errors() {
        let err = resolve(&Connection::default(), &env(&[]), &ConfigFile::default())
            .expect_err("no server");
        assert!(err.0.contains("no server"), "{err}");
        let err = resolve(
            &Connection::default(),
            &env(&[("HANGAR_URL", "http://h:1")]),
            &ConfigFile::default(),
        )
        .expect_err("no key");
        assert!(err.0.contains("no API key"), "{err}");
        // An empty variable counts as unset.
        let err = resolve(
            &Connection::default(),
            &env(&[("HANGAR_URL", "http://h:1"), ("HANGAR_KEY", "")]),
            &ConfigFile::default(),
        )
        .expect_err("empty key");
        assert!(err.0.contains("no API key"), "{err}");
        assert!(normalize_server("localhost:7070").is_err());
        assert!(normalize_server("https://").is_err());
        assert_eq!(
            normalize_server("https://hangar.example.com/")
                .as_deref()
                .ok(),
            Some("https://hangar.example.com")
        );
    }

    #[test]
    fn the_config_path_follows_xdg_then_home() {
        let p = config_path(&env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])).expect("path");
        assert_eq!(p, Path::new("/x/hangar/config.toml"));
        let p = config_path(&env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")])).expect("path");
        assert_eq!(p, Path::new("/h/.config/hangar/config.toml"));
        assert!(config_path(&env(&[])).is_err());
    }

    #[test]
    fn the_file_is_written_for_its_owner_only_and_read_back() {
        let dir = std::env::temp_dir().join(format!("hangar-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("hangar/config.toml");
        let saved = file("http://h:1", "k");
        write(&path, &saved).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(&path).expect("read"), saved);
        // Rewriting a file someone opened up makes it private again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write(&path, &file("http://h:2", "k2")).expect("rewrite");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            read(&dir.join("missing.toml")).expect("missing"),
            ConfigFile::default()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
