//! Hangar's web console: a page an operator or an agent author keeps open all
//! day — agents and their builds, live logs, metric plots, an invoke
//! playground, jobs, webhooks, secrets, API keys, organizations — served by
//! `hangar serve` itself at [`MOUNT`], from assets compiled into the binary.
//!
//! The console is a client of the public API and nothing else: it signs in
//! with an API key (kept in the tab's `sessionStorage`, sent as
//! `Authorization: Bearer`), and follows streams (build logs, live logs)
//! through stream tokens (`POST /v1/tokens`), since a browser's
//! `EventSource` cannot send headers. This crate knows no handler, no store
//! and no state: it serves files. So the API mounts it (see
//! `hangar_api::app`), and the console can never do what a `curl` with the
//! same key could not.
//!
//! # Why plain ES modules, no bundler
//! The console is a few thousand lines of HTML, CSS and JavaScript written
//! as native ES modules, served as they are in the repository:
//! - `cargo build` needs no Node and no generated file: what is reviewed is
//!   what is served, and there is no build output to keep in step (nor a CI
//!   check that it is).
//! - Every browser the console targets loads modules natively; the handful
//!   of files a first load fetches over one HTTP/1.1 keep-alive connection
//!   (or HTTP/2 behind a proxy) cost less than the bundler's runtime would
//!   add, and the whole console is well under 100 KB uncompressed.
//! - No dependency tree to audit or update: no framework, no chart library
//!   (plots are plain SVG), nothing fetched from a CDN, so it works offline.
//!
//! A bundler would win with many dependencies or with TypeScript; should the
//! console grow into that, the trade is to check in the bundler's output and
//! have CI check it is current.
//!
//! # Caching
//! Asset names carry no content hash (that would need a build step), so every
//! answer says `Cache-Control: no-cache` with a strong `ETag` (a SHA-256 of
//! the content): a browser revalidates each file and gets `304 Not Modified`
//! until the binary changes, so a new release is never mixed with an old
//! cached module.
//!
//! # Layout
//! - [`router`]: the axum `Router` to mount at [`MOUNT`].
//! - `assets`: the embedded files, their content types and ETags.
//! - `assets/` (beside `src/`): the console itself — `index.html`,
//!   `console.css`, and `js/` (`main.js` the shell and routes, `api.js` the
//!   API client and sign-in, `stream.js` stream-token SSE, `ui.js` DOM
//!   helpers, `plot.js` SVG plots, `pack.js` a folder as a .tar.gz, `pages/*.js` one module per page).
//! - `e2e/` (beside `src/`): the browser test's script, run by the `hangar`
//!   crate's `tests/console.rs` against a real `hangar serve`.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

mod assets;

/// Where the API mounts the console; `index.html` sets it as its base URL,
/// so every other asset is referred to relatively.
pub const MOUNT: &str = "/console";

/// The console's routes, relative to [`MOUNT`]: `/` is the page, anything
/// else an asset (404 when there is no such file).
pub fn router() -> Router {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

/// What the console's pages may load and talk to: only this origin. A key in
/// `sessionStorage` is readable by any script the page runs, so the page runs
/// none but its own (no inline script, no third-party origin), and no other
/// site may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = assets::get(path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file in the console\n",
        )
            .into_response();
    };
    let etag = HeaderValue::from_str(asset.etag()).unwrap_or(HeaderValue::from_static("\"\""));
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == asset.etag() || tag.trim() == "*")
        });
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        Body::from(asset.bytes),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    #[tokio::test]
    async fn the_page_is_html_with_a_strong_etag_and_revalidation() {
        let res = get("/", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache");
        // The key in sessionStorage is safe only from scripts that never run.
        let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"));
        let etag = res.headers()[header::ETAG]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("<base href=\"/console/\">"));

        let again = get("/", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert!(again
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .is_empty());
        // Another file's tag is not this one's.
        let other = get("/console.css", None).await;
        assert_ne!(other.headers()[header::ETAG], etag.as_str());
    }

    #[tokio::test]
    async fn modules_and_styles_carry_their_content_types() {
        for (path, want) in [
            ("/js/main.js", "text/javascript; charset=utf-8"),
            ("/js/pages/logs.js", "text/javascript; charset=utf-8"),
            ("/console.css", "text/css; charset=utf-8"),
            ("/favicon.svg", "image/svg+xml"),
        ] {
            let res = get(path, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(res.headers()[header::CONTENT_TYPE], want, "{path}");
            assert_eq!(res.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[tokio::test]
    async fn unknown_files_and_path_tricks_are_404() {
        for path in ["/nope.js", "/js/../Cargo.toml", "/js/", "/src/lib.rs"] {
            assert_eq!(
                get(path, None).await.status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }

    /// Every module the page imports is embedded: a file added to `assets/`
    /// but not to the table would be a 404 only a browser would notice.
    #[test]
    fn every_import_resolves_to_an_embedded_file() {
        for asset in assets::ALL {
            if !asset.path.ends_with(".js") && asset.path != "index.html" {
                continue;
            }
            let text = std::str::from_utf8(asset.bytes).expect("utf-8");
            let dir = asset.path.rsplit_once('/').map_or("", |(d, _)| d);
            for quote in ["from \"", "import(\"", "src=\"", "href=\""] {
                for piece in text.split(quote).skip(1) {
                    let Some(target) = piece.split('"').next() else {
                        continue;
                    };
                    let relative = target.starts_with("./") || target.starts_with("../");
                    // index.html names its files plainly (`console.css`).
                    let page_file = asset.path == "index.html"
                        && !target.contains(':')
                        && !target.starts_with('/')
                        && !target.starts_with('#');
                    if !relative && !page_file {
                        continue;
                    }
                    let mut parts: Vec<&str> = if dir.is_empty() {
                        vec![]
                    } else {
                        dir.split('/').collect()
                    };
                    for part in target.split('/') {
                        match part {
                            "." | "" => {}
                            ".." => {
                                parts.pop();
                            }
                            p => parts.push(p),
                        }
                    }
                    let resolved = parts.join("/");
                    assert!(
                        assets::get(&resolved).is_some(),
                        "{} refers to {target} ({resolved}), which is not embedded",
                        asset.path
                    );
                }
            }
        }
    }

    #[test]
    fn a_first_load_is_well_under_300_kb() {
        let total: usize = assets::ALL.iter().map(|a| a.bytes.len()).sum();
        assert!(total < 300 * 1024, "{total} bytes");
    }
}
