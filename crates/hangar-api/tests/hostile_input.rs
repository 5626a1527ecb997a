//! Nothing a client sends makes the server fail: every route of the OpenAPI
//! document (so every route there is, old or new) gets odd path parameters, every
//! kind of JSON body and odd query strings, and must answer in the envelope with a
//! status below 500.

mod common;

use axum::http::Method;
use common::each_backend;

const PARAMS: [&str; 6] = [
    "x",
    "inst_%00",
    "..%2F..%2Fetc",
    "%F0%9F%92%A9",
    "org_01aaaaaaaaaaaaaaaaaaaaaaaa",
    "a%20b",
];
const BODIES: [&str; 12] = [
    "",
    "null",
    "{}",
    "[]",
    "\"x\"",
    "1e309",
    "-1",
    r#"{"name": null, "cloud_id": [], "source": {"type": "github"}}"#,
    r#"{"input": {"a": [1, {"b": null}]}, "async": "yes", "options": {"timeout": -5}}"#,
    r#"{"resources": {"cpu": "99999999999999999999Ei", "memory": -1}, "config": {"replicas": 4294967296}}"#,
    r#"["sh", "-c", "\u0000"]"#,
    "\u{feff}{}",
];
const QUERIES: [&str; 4] = [
    "",
    "?limit=-1&cursor=%FF%FE",
    "?since=9999-99-99&follow=2&lines=99999999999",
    "?status=all&agent_id=&user_id=%00",
];

#[tokio::test]
async fn no_request_gets_a_server_error() {
    let doc = serde_json::to_value(hangar_api::openapi()).expect("serializes");
    let paths: Vec<(String, Vec<String>)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, ops)| {
            (
                path.clone(),
                ops.as_object().expect("ops").keys().cloned().collect(),
            )
        })
        .collect();
    assert!(paths.len() >= 30, "the document lists the routes");
    each_backend(|h| {
        let paths = paths.clone();
        async move {
            let mut sent = 0;
            for (template, methods) in &paths {
                for method in methods {
                    let method: Method = method.to_uppercase().parse().expect("method");
                    for (i, param) in PARAMS.iter().enumerate() {
                        let mut path = template.clone();
                        while let Some(start) = path.find('{') {
                            let end = path[start..].find('}').expect("closing brace") + start;
                            path.replace_range(start..=end, param);
                        }
                        let query = QUERIES[i % QUERIES.len()];
                        for body in BODIES {
                            let r = h.raw(method.clone(), &format!("{path}{query}"), Some(&h.a.key), Some(body)).await;
                            sent += 1;
                            assert!(r.status.as_u16() < 500, "{method} {path}{query} {body:?} → {}: {}", r.status, r.text);
                            if !r.status.is_success() {
                                assert!(r.body["error"]["code"].is_string(), "{method} {path} {body:?}: not in the envelope: {}", r.text);
                            }
                        }
                    }
                }
            }
            assert!(sent > 2000, "{sent} requests");
            // NUL (which PostgreSQL cannot store in text) in every field that is
            // stored or looked up as text: a clear 400, never a 500.
            let nul = r"\u0000";
            let targeted = [
                ("/instances", format!(r#"{{"name":"n","agent_id":"a{nul}","build_id":"b","organization_id":"o"}}"#)),
                ("/v1/agents", format!(r#"{{"name":"n","cloud_id":"{nul}","source":{{"type":"github","repo":"a/b"}}}}"#)),
                ("/v1/agents", format!(r#"{{"name":"n","cloud_id":"local","display_name":"{nul}","source":{{"type":"github","repo":"a/b"}}}}"#)),
                ("/v1/agents", format!(r#"{{"name":"n","cloud_id":"local","source":{{"type":"github","repo":"file:///x{nul}"}}}}"#)),
                ("/v1/api_keys", format!(r#"{{"name":"k","user_id":"{nul}"}}"#)),
                ("/v1/api_keys", format!(r#"{{"name":"k{nul}"}}"#)),
                ("/v1/users", format!(r#"{{"email":"a{nul}@b.c"}}"#)),
                ("/v1/organizations", format!(r#"{{"name":"o{nul}","admin_email":"a@b.c"}}"#)),
                ("/v1/webhooks", format!(r#"{{"url":"https://example.com/{nul}"}}"#)),
                ("/v1/webhooks", format!(r#"{{"url":"https://example.com/","description":"{nul}"}}"#)),
                ("/v1/clouds", format!(r#"{{"name":"c{nul}","driver":"docker"}}"#)),
                ("/v1/secrets", format!(r#"{{"name":"S{nul}","value":"v"}}"#)),
            ];
            for (path, body) in targeted {
                let r = h.raw(Method::POST, path, Some(&h.a.key), Some(&body)).await;
                assert!(r.status.is_client_error(), "{path} {body} → {}: {}", r.status, r.text);
            }
            for path in ["/v1/agents?cloud_id=%00", "/v1/agents?cursor=%00", "/instances/by_org_id/x?agent_id=%00", "/instances/%FF%FE", "/v1/agents/%C0%AF"] {
                let r = h.raw(Method::GET, path, Some(&h.a.key), None).await;
                assert!(r.status.is_client_error(), "{path} → {}: {}", r.status, r.text);
                assert!(r.body["error"]["code"].is_string(), "{path}: not in the envelope: {}", r.text);
            }
            // The server still answers normally afterwards.
            assert_eq!(h.get("/v1/me", &h.a.key).await.status, axum::http::StatusCode::OK);
        }
    })
    .await;
}
