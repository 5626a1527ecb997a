//! Field rules shared by both APIs: names, environment maps, metadata, secret
//! references, paths and URLs, and which values are redacted in responses.
//!
//! Each check returns [`Invalid`] naming the field, so a client learns exactly what
//! to fix; none of them allocates on the success path beyond what it returns.

use std::collections::BTreeMap;

use crate::Invalid;

/// Longest name of an agent, instance, cloud, secret or key.
pub const MAX_NAME_LEN: usize = 63;
/// Most environment variables one agent or instance may set.
pub const MAX_ENV_VARS: usize = 256;
/// Longest environment value (32 KiB).
pub const MAX_ENV_VALUE_LEN: usize = 32 * 1024;
/// Most metadata keys.
pub const MAX_METADATA_KEYS: usize = 50;

/// A display name: 1–63 characters of letters, digits, `.`, `_`, `-`, starting with
/// a letter or digit (so it can become part of a DNS label).
pub fn name(field: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(Invalid::new(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Invalid::new(
            field,
            "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// A DNS-label-safe slug of a name (`My_Agent.v2` → `my-agent-v2`), at most `max` chars.
#[must_use]
pub fn slug(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() >= max {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push('x');
    }
    out
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, not one Hangar sets.
pub fn env_key(field: &str, key: &str) -> Result<(), Invalid> {
    let path = format!("{field}.{key}");
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || key.len() > 128 {
        return Err(Invalid::new(
            path,
            "environment variable names are letters, digits and '_', not starting with a digit, at most 128 characters",
        ));
    }
    if key == "PORT" || key.starts_with("HANGAR_") {
        return Err(Invalid::new(
            path,
            "is set by Hangar and cannot be overridden",
        ));
    }
    Ok(())
}

/// An environment map: names, sizes and well-formed `${secrets.NAME}` references.
pub fn env_map(field: &str, env: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if env.len() > MAX_ENV_VARS {
        return Err(Invalid::new(
            field,
            format!("at most {MAX_ENV_VARS} variables"),
        ));
    }
    for (k, v) in env {
        env_key(field, k)?;
        if v.chars().count() > MAX_ENV_VALUE_LEN {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "value is longer than 32768 characters",
            ));
        }
        if v.contains('\0') {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "value contains a NUL byte",
            ));
        }
        secret_refs(v).map_err(|e| e.under(&format!("{field}.{k}")))?;
    }
    Ok(())
}

/// An environment map as the document shows it ([`env_map`]'s rules; the
/// names `PORT` and `HANGAR_…`, which Hangar sets, are refused too).
#[must_use]
pub fn env_map_schema() -> utoipa::openapi::schema::Object {
    env_map_schema_of(false, false)
}

/// [`env_map_schema`], or `null` (an update that keeps the map).
#[must_use]
pub fn env_map_update_schema() -> utoipa::openapi::schema::Object {
    env_map_schema_of(true, false)
}

/// [`env_map_update_schema`] whose values may be `null` too (an update that
/// removes that variable).
#[must_use]
pub fn env_map_patch_schema() -> utoipa::openapi::schema::Object {
    env_map_schema_of(true, true)
}

/// `nullable`: the map may be `null`; `unset`: a value may be.
fn maybe_null(
    schema_type: utoipa::openapi::schema::Type,
    nullable: bool,
) -> utoipa::openapi::schema::SchemaType {
    use utoipa::openapi::schema::{SchemaType, Type};
    if nullable {
        SchemaType::from_iter([schema_type, Type::Null])
    } else {
        SchemaType::Type(schema_type)
    }
}

fn env_map_schema_of(nullable: bool, unset: bool) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let value = if unset {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(maybe_null(Type::Object, nullable))
        .max_properties(Some(MAX_ENV_VARS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(value)
                .max_length(Some(MAX_ENV_VALUE_LEN))
                .pattern(Some(r"^[^\x00]*$")),
        ))
        .description(Some(
            "Environment variables: names are letters, digits and `_`, not starting with a digit \
             (not `PORT` nor `HANGAR_…`, which Hangar sets); values at most 32 KiB without NUL, \
             `${secrets.NAME}` references resolved at start.",
        ))
        .build()
}

/// Metadata as the document shows it ([`metadata`]'s rules).
#[must_use]
pub fn metadata_schema() -> utoipa::openapi::schema::Object {
    metadata_schema_of(false)
}

/// [`metadata_schema`] of an update: the map, or a value (removing that
/// key), may be `null`.
#[must_use]
pub fn metadata_patch_schema() -> utoipa::openapi::schema::Object {
    metadata_schema_of(true)
}

fn metadata_schema_of(patch: bool) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let unset = patch;
    let value = if unset {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(maybe_null(Type::Object, patch))
        .max_properties(Some(MAX_METADATA_KEYS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64)),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(value)
                .max_length(Some(512)),
        ))
        .description(Some(
            "At most 50 keys of 1–64 characters, values of at most 512.",
        ))
        .build()
}

/// Metadata: at most 50 string keys (≤ 64 chars) with string values (≤ 512 chars).
pub fn metadata(field: &str, meta: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if meta.len() > MAX_METADATA_KEYS {
        return Err(Invalid::new(
            field,
            format!("at most {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (k, v) in meta {
        // Counted in characters, as the document's lengths count.
        if k.is_empty() || k.chars().count() > 64 {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "keys are 1 to 64 characters",
            ));
        }
        if v.chars().count() > 512 {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "values are at most 512 characters",
            ));
        }
    }
    Ok(())
}

const SECRET_REF_OPEN: &str = "${secrets.";

/// The secret names a value refers to with `${secrets.NAME}`; a malformed reference
/// is an error rather than a literal, so a typo cannot leak into an agent's env.
pub fn secret_refs(value: &str) -> Result<Vec<&str>, Invalid> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find(SECRET_REF_OPEN) {
        let after = &rest[start + SECRET_REF_OPEN.len()..];
        let end = after
            .find('}')
            .ok_or_else(|| Invalid::new("", "unterminated ${secrets.NAME} reference"))?;
        let name = &after[..end];
        secret_name("", name).map_err(|_| {
            Invalid::new(
                "",
                format!("'{name}' is not a valid secret name in ${{secrets.NAME}}"),
            )
        })?;
        names.push(name);
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// A secret's name: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters.
pub fn secret_name(field: &str, name: &str) -> Result<(), Invalid> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.len() > MAX_NAME_LEN
    {
        return Err(Invalid::new(
            field,
            "secret names are letters, digits and '_', not starting with a digit, at most 63 characters",
        ));
    }
    Ok(())
}

/// Whether an environment value is shown redacted: it comes from a secret, or its
/// name says it holds a credential. Everything else (`LOG_LEVEL`, a query) is shown,
/// as in both seed documents.
#[must_use]
pub fn is_sensitive(key: &str, value: &str) -> bool {
    const MARKERS: [&str; 13] = [
        "KEY",
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "PRIVATE",
        "DSN",
        "CONNECTION",
        "WEBHOOK",
    ];
    // From a secret, or a URL that carries a password (`postgres://u:pw@h/db`).
    if value.contains(SECRET_REF_OPEN) || redact_url_credentials(value) != value {
        return true;
    }
    let upper = key.to_ascii_uppercase();
    upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|part| MARKERS.contains(&part))
        || MARKERS.iter().any(|m| upper.ends_with(m))
}

/// An environment map as a response shows it, sensitive values replaced by `mask`.
#[must_use]
pub fn redact_env(env: &BTreeMap<String, String>, mask: &str) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let shown = if is_sensitive(k, v) {
                mask.to_owned()
            } else {
                v.clone()
            };
            (k.clone(), shown)
        })
        .collect()
}

/// An HTTP path on the agent: starts with `/`, no whitespace, at most 256 characters.
pub fn http_path(field: &str, path: &str) -> Result<(), Invalid> {
    // Counted in characters, as the document's `maxLength` counts.
    if !path.starts_with('/')
        || path.chars().count() > 256
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Invalid::new(
            field,
            "must start with '/' and contain no spaces, at most 256 characters",
        ));
    }
    Ok(())
}

/// An absolute `http`/`https` URL with a host.
pub fn http_url(field: &str, s: &str) -> Result<url::Url, Invalid> {
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Invalid::new(
            field,
            "must not contain spaces or control characters",
        ));
    }
    let parsed =
        url::Url::parse(s).map_err(|e| Invalid::new(field, format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new(
            field,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if s.len() > 2048 {
        return Err(Invalid::new(field, "must be at most 2048 characters"));
    }
    Ok(parsed)
}

/// A reference to an object by ID (or, where the route allows it, by name):
/// 1–128 letters, digits, `.`, `_`, `-`. Anything else can name no object.
pub fn object_ref(field: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Invalid::new(field, "is not an ID"));
    }
    Ok(())
}

/// A short free-text field (display names, descriptions): at most `max` characters,
/// no control characters.
pub fn text(field: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.chars().count() > max {
        return Err(Invalid::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// A token-like field (`python`, `3.11`, `langchain`): 1–32 characters of letters,
/// digits, `.`, `_`, `+`, `-`.
pub fn token(field: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty()
        || s.len() > 32
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
    {
        return Err(Invalid::new(
            field,
            "must be 1 to 32 letters, digits, '.', '_', '+' or '-'",
        ));
    }
    Ok(())
}

/// `scheme://user:secret@host/…` → `scheme://user:****@host/…`; `scheme://token@host`
/// → `scheme://****@host`. Anything else is returned as it is.
#[must_use]
pub fn redact_url_credentials(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        None => "****".to_owned(),
    };
    format!("{}{shown}{}", &url[..scheme_end + 3], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("name", "market-tracker-prod").is_ok());
        assert!(name("name", "v1.2_b").is_ok());
        for bad in ["", "-x", "has space", "ü", &"a".repeat(64)] {
            assert_eq!(name("name", bad).expect_err(bad).field, "name");
        }
        assert_eq!(slug("My_Agent.v2", 40), "my-agent-v2");
        assert_eq!(slug("---", 40), "x");
        assert_eq!(slug(&"ab".repeat(40), 10).len(), 10);
    }

    #[test]
    fn env_rules() {
        let ok: BTreeMap<_, _> = [("API_KEY".into(), "${secrets.OPENAI_KEY}".into())].into();
        assert!(env_map("environment", &ok).is_ok());
        let bad_ref: BTreeMap<_, _> = [("X".into(), "${secrets.9bad}".into())].into();
        assert_eq!(
            env_map("environment", &bad_ref).expect_err("bad ref").field,
            "environment.X"
        );
        let unterminated: BTreeMap<_, _> = [("X".into(), "${secrets.A".into())].into();
        assert!(env_map("env_vars", &unterminated).is_err());
        let reserved: BTreeMap<_, _> = [("PORT".into(), "1".into())].into();
        assert_eq!(
            env_map("env_vars", &reserved).expect_err("reserved").field,
            "env_vars.PORT"
        );
        let bad_key: BTreeMap<_, _> = [("1X".into(), "1".into())].into();
        assert!(env_map("env_vars", &bad_key).is_err());
        assert_eq!(
            secret_refs("a ${secrets.A} b ${secrets.B_2}"),
            Ok(vec!["A", "B_2"])
        );
    }

    #[test]
    fn redaction_follows_the_seeds() {
        let env: BTreeMap<_, _> = [
            ("API_KEY".to_owned(), "secret-key-123".to_owned()),
            (
                "OPENAI_API_KEY".to_owned(),
                "${secrets.OPENAI_KEY}".to_owned(),
            ),
            (
                "TARGET_QUERY".to_owned(),
                "renewable energy stocks".to_owned(),
            ),
            ("LOG_LEVEL".to_owned(), "INFO".to_owned()),
            ("DB_PASSWORD".to_owned(), "x".to_owned()),
            ("GITHUB_TOKEN".to_owned(), "x".to_owned()),
            ("FROM_SECRET".to_owned(), "prefix-${secrets.S}".to_owned()),
            ("DATABASE_URL".to_owned(), "postgres://u:pw@h/db".to_owned()),
            (
                "SENTRY_DSN".to_owned(),
                "https://abc@o1.ingest.example/1".to_owned(),
            ),
            (
                "SLACK_WEBHOOK_URL".to_owned(),
                "https://hooks.example/T/B/x".to_owned(),
            ),
        ]
        .into();
        let shown = redact_env(&env, "***REDACTED***");
        assert_eq!(shown["API_KEY"], "***REDACTED***");
        assert_eq!(shown["OPENAI_API_KEY"], "***REDACTED***");
        assert_eq!(shown["DB_PASSWORD"], "***REDACTED***");
        assert_eq!(shown["GITHUB_TOKEN"], "***REDACTED***");
        assert_eq!(shown["FROM_SECRET"], "***REDACTED***");
        assert_eq!(shown["TARGET_QUERY"], "renewable energy stocks");
        assert_eq!(shown["DATABASE_URL"], "***REDACTED***");
        assert_eq!(shown["SENTRY_DSN"], "***REDACTED***");
        assert_eq!(shown["SLACK_WEBHOOK_URL"], "***REDACTED***");
        assert_eq!(shown["LOG_LEVEL"], "INFO");
    }

    #[test]
    fn paths_and_urls() {
        assert!(http_path("p", "/health").is_ok());
        assert!(http_path("p", "health").is_err());
        assert!(http_path("p", "/a b").is_err());
        assert!(http_url("url", "https://example.com/hook").is_ok());
        assert!(http_url("url", "ftp://example.com").is_err());
        assert!(http_url("url", "not a url").is_err());
        assert!(http_url("url", "https://example.com/\0").is_err());
        assert!(object_ref("agent_id", "agent_01jd7x").is_ok());
        assert!(object_ref("cloud_id", "local").is_ok());
        assert!(object_ref("agent_id", "a\0b").is_err());
        assert!(object_ref("agent_id", "").is_err());
        assert!(token("language", "python").is_ok());
        assert!(token("language", "py thon").is_err());
        assert!(text("display_name", "Sentiment Analyzer v2", 128).is_ok());
        assert!(text("display_name", "a\nb", 128).is_err());
    }
}
