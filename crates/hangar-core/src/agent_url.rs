//! Path-style agent URLs, as the Agents API shows them:
//! `<cloud base URL>/agents/<agent name>/<any path>`.
//!
//! A path under one host needs no wildcard DNS, unlike the host-style
//! instance URLs (`http://<resource name>.<base domain>`) the Instances API
//! shows. A cloud's base URL is an origin (scheme, host, port) of its own
//! or, by default, the server's public URL; every request that reaches the
//! server with a path under `/agents/` and no instance host is an agent URL.
//!
//! Which agent a request reaches is told by its `Host` and the name in the
//! path, so an agent's **URL key** — the authority of its cloud's own base
//! URL (empty for the server's) and its name — is unique among live agents,
//! across organizations: clouds that share a base URL share agent names.
//! A request whose host is a cloud's own base URL reaches that cloud's
//! agent first; otherwise the agent of that name on a cloud with the
//! server's URL.

use crate::Invalid;

/// Where agent URLs start, under a cloud's base URL.
pub const PREFIX: &str = "/agents/";

/// A cloud's `base_url` checked and made canonical: an absolute `http` or
/// `https` origin, with no user, path, query or fragment and no default
/// port (`https://Agents.Example.com:443/` → `https://agents.example.com`).
pub fn origin(field: &str, value: &str) -> Result<String, Invalid> {
    let url = url::Url::parse(value)
        .map_err(|err| Invalid::new(field, format!("must be an absolute URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid::new(field, "must be an http or https URL"));
    }
    let Some(host) = url.host_str() else {
        return Err(Invalid::new(field, "must name a host"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Invalid::new(field, "must not carry a user or password"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(Invalid::new(
            field,
            "must be an origin (scheme, host and port, like https://agents.example.com): agent URLs are <base_url>/agents/<name>",
        ));
    }
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// The authority (`host[:port]`) of an origin made by [`origin`].
#[must_use]
pub fn authority(origin: &str) -> &str {
    origin.split_once("://").map_or(origin, |(_, rest)| rest)
}

/// An agent's URL key: the authority of its cloud's own base URL (`None`:
/// the server's, written as nothing) and its name.
#[must_use]
pub fn key(cloud_origin: Option<&str>, name: &str) -> String {
    format!("{}/{name}", cloud_origin.map_or("", authority))
}

/// The URL keys a request to `host` for agent `name` may mean, the cloud's
/// own base URL first. `host` is the request's `Host` (any case, a
/// default port or a trailing dot allowed).
#[must_use]
pub fn candidates(host: Option<&str>, name: &str) -> [String; 2] {
    let own = host.map(|host| {
        let host = host.to_ascii_lowercase();
        let host = host
            .strip_suffix(":80")
            .or_else(|| host.strip_suffix(":443"))
            .unwrap_or(&host);
        let host = match host.rsplit_once(':') {
            Some((name, port)) => format!("{}:{port}", name.trim_end_matches('.')),
            None => host.trim_end_matches('.').to_owned(),
        };
        format!("{host}/{name}")
    });
    let shared = key(None, name);
    [own.unwrap_or_else(|| shared.clone()), shared]
}

/// The agent's URL (`endpoints.base_url`), under its cloud's base URL.
#[must_use]
pub fn url(cloud_base_url: &str, name: &str) -> String {
    format!("{}{PREFIX}{name}", cloud_base_url.trim_end_matches('/'))
}

/// A request path under [`PREFIX`] split into the agent's name and the path
/// the agent sees (`/agents/bot/v1/x` → `("bot", "/v1/x")`, `/agents/bot`
/// → `("bot", "/")`). `None` for any other path, or a name no agent can
/// have.
#[must_use]
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    let (name, tail) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    crate::validate::name("name", name).ok()?;
    Some((name, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_is_an_origin() {
        assert_eq!(
            origin("b", "https://Agents.Example.com:443/").as_deref(),
            Ok("https://agents.example.com")
        );
        assert_eq!(
            origin("b", "http://127.0.0.1:7070").as_deref(),
            Ok("http://127.0.0.1:7070")
        );
        for bad in [
            "agents.example.com",
            "ftp://x",
            "https://x/base",
            "https://x/?q=1",
            "https://u:p@x",
            "https://x/#f",
            "",
        ] {
            let err = origin("base_url", bad).expect_err(bad);
            assert_eq!(err.field, "base_url");
        }
    }

    #[test]
    fn keys_match_what_a_request_can_mean() {
        assert_eq!(key(None, "bot"), "/bot");
        assert_eq!(
            key(Some("https://a.example.com"), "bot"),
            "a.example.com/bot"
        );
        assert_eq!(
            candidates(Some("A.Example.com:443"), "bot"),
            ["a.example.com/bot".to_owned(), "/bot".to_owned()]
        );
        assert_eq!(
            candidates(Some("a.example.com.:8080"), "bot"),
            ["a.example.com:8080/bot".to_owned(), "/bot".to_owned()]
        );
        assert_eq!(
            candidates(None, "bot"),
            ["/bot".to_owned(), "/bot".to_owned()]
        );
        assert_eq!(
            url("http://127.0.0.1:7070/", "bot"),
            "http://127.0.0.1:7070/agents/bot"
        );
    }

    #[test]
    fn paths_split_into_name_and_the_agents_own_path() {
        assert_eq!(split_path("/agents/bot"), Some(("bot", "/")));
        assert_eq!(split_path("/agents/bot/"), Some(("bot", "/")));
        assert_eq!(split_path("/agents/bot/v1/x"), Some(("bot", "/v1/x")));
        assert_eq!(split_path("/agents/"), None);
        assert_eq!(split_path("/agents//x"), None);
        assert_eq!(split_path("/agents/%2e%2e/x"), None);
        assert_eq!(split_path("/v1/agents/bot"), None);
        assert_eq!(split_path("/agentsbot"), None);
    }
}
