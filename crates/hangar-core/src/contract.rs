//! The agent contract's run command: what a source tree at `/app` runs,
//! decided from its files, in one place for the two that must agree on it —
//! the controller, which starts a replica of a tree, and the builder, which
//! writes that command into the image it builds for a kubernetes cloud.
//!
//! In order of precedence (`ARCHITECTURE.md`):
//!
//! 1. `hangar.toml` with `[run] command = ["prog", "arg", …]` (or a string,
//!    split on whitespace);
//! 2. `main.py`, else `app.py` → `python3 -u /app/<file>` (the build's
//!    virtualenv's `/app/.venv/bin/python` when there is one);
//! 3. `package.json` with `scripts.start` → `npm start`; else `main` or
//!    `index.js` → `node /app/<file>`.
//!
//! Anything else cannot run, and says what it looked for. Pure: the caller
//! reads the files ([`TreeFiles`]), so this holds no I/O.

/// What the run command is decided from: a source tree's files, read by
/// the caller.
pub trait TreeFiles {
    /// The text of the regular file `name` (relative to the tree's root),
    /// `Ok(None)` when there is none; the error says why it cannot be read.
    fn text(&self, name: &str) -> Result<Option<String>, String>;
    /// Whether `name` is a regular file.
    fn is_file(&self, name: &str) -> bool;
    /// Whether `name` exists at all, a dangling symlink included (a
    /// virtualenv's `python` points into the runtime's `/usr`).
    fn exists(&self, name: &str) -> bool;
}

/// `hangar.toml`'s `[run] command`, if the tree has one.
pub fn run_command(files: &dyn TreeFiles) -> Result<Option<Vec<String>>, String> {
    let Some(text) = files.text("hangar.toml")? else {
        return Ok(None);
    };
    let value: toml::Table =
        toml::from_str(&text).map_err(|err| format!("hangar.toml is not valid TOML: {err}"))?;
    let Some(run) = value.get("run").and_then(|run| run.get("command")) else {
        return Ok(None);
    };
    let argv: Vec<String> = match run {
        toml::Value::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("hangar.toml: run.command must be a list of strings")?,
        _ => return Err("hangar.toml: run.command must be a string or a list".to_owned()),
    };
    if argv.is_empty() {
        return Err("hangar.toml: run.command is empty".to_owned());
    }
    Ok(Some(argv))
}

/// The command the tree runs, found as the module docs say.
pub fn command(files: &dyn TreeFiles) -> Result<Vec<String>, String> {
    if let Some(argv) = run_command(files)? {
        return Ok(argv);
    }
    // A build that installed dependencies left a virtualenv; its python sees
    // them.
    let python = if files.exists(".venv/bin/python") {
        "/app/.venv/bin/python"
    } else {
        "python3"
    };
    for file in ["main.py", "app.py"] {
        if files.is_file(file) {
            return Ok(vec![
                python.to_owned(),
                "-u".to_owned(),
                format!("/app/{file}"),
            ]);
        }
    }
    if let Some(text) = files.text("package.json")? {
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|err| format!("package.json is not valid JSON: {err}"))?;
        if json["scripts"]["start"].is_string() {
            return Ok(vec!["npm".to_owned(), "start".to_owned()]);
        }
        let main = json["main"].as_str().unwrap_or("index.js");
        let main = main.trim_start_matches("./");
        if !main.contains("..") && files.is_file(main) {
            return Ok(vec!["node".to_owned(), format!("/app/{main}")]);
        }
    }
    Err("nothing to run: no hangar.toml [run] command, main.py, app.py or package.json".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Files(BTreeMap<&'static str, &'static str>);

    impl TreeFiles for Files {
        fn text(&self, name: &str) -> Result<Option<String>, String> {
            Ok(self.0.get(name).map(|text| (*text).to_owned()))
        }
        fn is_file(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
        fn exists(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
    }

    fn files(list: &[(&'static str, &'static str)]) -> Files {
        Files(list.iter().copied().collect())
    }

    #[test]
    fn the_manifest_wins_then_python_then_node() {
        let argv = |list: &[(&'static str, &'static str)]| command(&files(list));
        assert_eq!(
            argv(&[
                ("main.py", ""),
                ("hangar.toml", "[run]\ncommand = \"./serve -v\"\n")
            ]),
            Ok(vec!["./serve".to_owned(), "-v".to_owned()])
        );
        assert_eq!(
            argv(&[("app.py", ""), (".venv/bin/python", "")]),
            Ok(vec![
                "/app/.venv/bin/python".to_owned(),
                "-u".to_owned(),
                "/app/app.py".to_owned()
            ])
        );
        assert_eq!(
            argv(&[("package.json", "{\"main\":\"./srv.js\"}"), ("srv.js", "")]),
            Ok(vec!["node".to_owned(), "/app/srv.js".to_owned()])
        );
        assert!(argv(&[("package.json", "{\"main\":\"../x.js\"}")]).is_err());
        assert!(argv(&[("hangar.toml", "[run]\ncommand = 3\n")]).is_err());
        assert!(argv(&[("README", "")]).is_err());
        assert_eq!(run_command(&files(&[("main.py", "")])), Ok(None));
    }
}
