//! The console's files, compiled into the binary: a fixed table, so a
//! request names an entry or gets a 404 — no path ever reaches a file system.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One embedded file.
pub(crate) struct Asset {
    /// Its path under the mount, without a leading `/`.
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

impl Asset {
    /// A strong ETag: the first 16 bytes of the content's SHA-256 (of every
    /// file at once, on the first request, then kept).
    pub fn etag(&self) -> &'static str {
        static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
        let etags = ETAGS.get_or_init(|| {
            ALL.iter()
                .map(|asset| {
                    let digest = Sha256::digest(asset.bytes);
                    format!("\"{}\"", hex::encode(&digest[..16]))
                })
                .collect()
        });
        ALL.iter()
            .position(|asset| std::ptr::eq(asset, self))
            .and_then(|i| etags.get(i))
            .map_or("\"\"", String::as_str)
    }
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! assets {
    ($($path:literal => $content_type:expr),* $(,)?) => {
        /// Every file the console serves.
        pub(crate) static ALL: &[Asset] = &[$(Asset {
            path: $path,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../assets/", $path)),
        }),*];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "js/main.js" => JS,
    "js/api.js" => JS,
    "js/stream.js" => JS,
    "js/ui.js" => JS,
    "js/plot.js" => JS,
    "js/pack.js" => JS,
    "js/pages/signin.js" => JS,
    "js/pages/agents.js" => JS,
    "js/pages/agent.js" => JS,
    "js/pages/logs.js" => JS,
    "js/pages/plots.js" => JS,
    "js/pages/invoke.js" => JS,
    "js/pages/jobs.js" => JS,
    "js/pages/webhooks.js" => JS,
    "js/pages/secrets.js" => JS,
    "js/pages/keys.js" => JS,
    "js/pages/orgs.js" => JS,
}

/// The file at `path` (no leading `/`), if the console has one.
pub(crate) fn get(path: &str) -> Option<&'static Asset> {
    ALL.iter().find(|asset| asset.path == path)
}
