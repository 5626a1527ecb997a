//! HTTP-level behaviour: malformed bodies, unknown fields, wrong types, oversized
//! bodies, unknown routes and methods all answer in the error envelope; OpenAPI
//! covers every route of both seeds.

mod common;

use axum::http::{Method, StatusCode};
use common::each_backend;
use serde_json::json;

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    each_backend(|h| async move {
        let key = h.a.key.clone();
        let cases: [(&str, &str, Option<&str>); 6] = [
            ("/v1/agents", "{not json", None),
            ("/v1/agents", "", None),
            ("/v1/agents", "[1,2]", None),
            ("/v1/agents", r#"{"name":"x","cloud_id":"local","source":{"type":"github","repo":"a/b"},"extra":1}"#, Some("extra")),
            ("/v1/agents", r#"{"name":7,"cloud_id":"local","source":{"type":"github","repo":"a/b"}}"#, Some("name")),
            ("/instances", r#"{"name":"x","agent_id":"a","build_id":"b","organization_id":"o","resources":{"cpu":"250m","memory":true}}"#, Some("resources.memory")),
        ];
        for (path, body, field) in cases {
            let r = h.raw(Method::POST, path, Some(&key), Some(body)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
            assert_eq!(r.code(), "INVALID_REQUEST", "{body}");
            assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            if let Some(f) = field {
                assert_eq!(r.body["error"]["field"], f, "{body}: {}", r.text);
            }
        }
        // 413 for a body over the limit (64 KiB in tests), nothing stored.
        let big = format!(r#"{{"name":"big","cloud_id":"local","source":{{"type":"github","repo":"a/b"}},"display_name":"{}"}}"#, "x".repeat(100 * 1024));
        let r = h.raw(Method::POST, "/v1/agents", Some(&key), Some(&big)).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
        assert_eq!(r.code(), "PAYLOAD_TOO_LARGE");
        assert!(h.get("/v1/agents", &key).await.body["data"].as_array().expect("data").is_empty());

        let r = h.raw(Method::GET, "/no/such/route", Some(&key), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "NOT_FOUND");
        let r = h.raw(Method::PATCH, "/instances/inst_x", Some(&key), None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.code(), "METHOD_NOT_ALLOWED");
        let r = h.raw(Method::PUT, "/v1/agents", Some(&key), None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        // Deeply nested JSON is refused, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let r = h.raw(Method::POST, &format!("/instances/{}/inst_x/exec", h.a.org), Some(&key), Some(&deep)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        // Invalid UTF-8 and control bytes in JSON.
        let r = h.raw(Method::POST, "/v1/secrets", Some(&key), Some("{\"name\":\"A\",\"value\":\"\u{0}\"}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test]
async fn openapi_covers_both_seeds() {
    let doc = serde_json::to_value(hangar_api::openapi()).expect("serializes");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"));
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        ("get", "/instances/by_org_id/{org_id}"),
        ("get", "/instances/{instance_id}"),
        ("post", "/instances"),
        ("put", "/instances/{instance_id}"),
        ("delete", "/instances/{instance_id}"),
        ("get", "/instances/status/{org_id}/{instance_id}"),
        ("post", "/instances/{org_id}/{instance_id}/exec"),
        ("post", "/instances/{org_id}/{instance_id}/stdin"),
        ("get", "/instances/{org_id}/{instance_id}/logs"),
        ("get", "/v1/agents"),
        ("post", "/v1/agents"),
        ("get", "/v1/agents/{id}"),
        ("patch", "/v1/agents/{id}"),
        ("delete", "/v1/agents/{id}"),
        ("post", "/v1/agents/{id}/invoke"),
        ("post", "/v1/agents/{id}/start"),
        ("post", "/v1/agents/{id}/stop"),
        ("post", "/v1/agents/{id}/redeploy"),
        ("get", "/v1/agents/{id}/logs"),
        ("get", "/v1/agents/{id}/metrics"),
        ("get", "/v1/me"),
        ("post", "/v1/organizations"),
        ("post", "/v1/api_keys"),
        ("delete", "/v1/api_keys/{id}"),
        ("get", "/v1/builds/{id}"),
        ("get", "/v1/jobs/{id}"),
        ("post", "/v1/jobs/{id}/cancel"),
        ("post", "/v1/uploads"),
        ("post", "/v1/secrets"),
        ("post", "/v1/webhooks"),
        ("post", "/v1/clouds"),
    ];
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "OpenAPI lacks {method} {path}"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for s in [
        "InstanceObject",
        "AgentObject",
        "InstanceStatusObject",
        "ResourcesInput",
        "Source",
        "DeploymentType",
    ] {
        assert!(schemas.contains_key(s), "OpenAPI lacks schema {s}");
    }
}

#[test]
fn openapi_names_every_event_type() {
    let doc = serde_json::to_value(hangar_api::openapi()).expect("serializes");
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("CreateWebhook", "events"),
        ("UpdateWebhook", "events"),
        ("EventObject", "type"),
    ] {
        let description = schemas[schema]["properties"][field]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("OpenAPI lacks {schema}.{field}'s description"));
        for kind in hangar_core::model::EVENT_TYPES {
            assert!(
                description.contains(&format!("`{kind}`")),
                "{schema}.{field} does not name {kind}: {description}"
            );
        }
    }
}

#[tokio::test]
async fn docs_and_spec_are_served() {
    each_backend(|h| async move {
        let r = h.raw(Method::GET, "/openapi.json", None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body["paths"]["/v1/agents"].is_object());
        let r = h.raw(Method::GET, "/docs/", None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.text.to_lowercase().contains("swagger"),
            "{}",
            &r.text[..r.text.len().min(200)]
        );
        let _ = json!({});
    })
    .await;
}

/// Every row an invocation can fail with is documented on the invoke route
/// under its status, and in the job object's `error`, since jobs store the
/// same codes; exec and stdin document the control errors' rows.
#[test]
fn openapi_documents_every_invoke_and_control_error_code() {
    use hangar_gateway::ErrorClass;
    let doc = serde_json::to_value(hangar_api::openapi()).expect("serializes");
    let responses = &doc["paths"]["/v1/agents/{id}/invoke"]["post"]["responses"];
    for class in ErrorClass::INVOKE {
        let description = responses[class.status.as_str()]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.contains(class.code),
            "invoke: {} not documented under {}: {description:?}",
            class.code,
            class.status
        );
    }
    // Every route a server may forward to the node that runs its instance
    // documents the hop's failure.
    for (path, method) in [
        ("/v1/agents/{id}/invoke", "post"),
        ("/v1/agents/{id}", "get"),
        ("/v1/agents/{id}/logs", "get"),
        ("/instances/{instance_id}", "get"),
        ("/instances/{org_id}/{instance_id}/exec", "post"),
        ("/instances/{org_id}/{instance_id}/stdin", "post"),
        ("/instances/status/{org_id}/{instance_id}", "get"),
    ] {
        let description = doc["paths"][path][method]["responses"]["503"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.contains("NODE_UNREACHABLE"),
            "{method} {path}: {description:?}"
        );
    }
    let job_error = doc["components"]["schemas"]["JobObject"]["properties"]["error"].to_string();
    for class in ErrorClass::INVOKE {
        assert!(
            job_error.contains(class.code),
            "job error: {} not documented",
            class.code
        );
    }
    for (path, rows) in [
        (
            "/instances/{org_id}/{instance_id}/exec",
            &[
                ErrorClass::INSTANCE_NOT_RUNNING,
                ErrorClass::INVALID_REQUEST,
                ErrorClass::INTERNAL_ERROR,
            ][..],
        ),
        (
            "/instances/{org_id}/{instance_id}/stdin",
            &[
                ErrorClass::INSTANCE_NOT_RUNNING,
                ErrorClass::STDIN_NOT_ENABLED,
                ErrorClass::INTERNAL_ERROR,
            ][..],
        ),
    ] {
        let responses = &doc["paths"][path]["post"]["responses"];
        for class in rows {
            let description = responses[class.status.as_str()]["description"]
                .as_str()
                .unwrap_or_default();
            assert!(
                description.contains(class.code),
                "{path}: {} not documented under {}",
                class.code,
                class.status
            );
        }
    }
}

/// The answers every route can give whatever its handler does — 401 where a
/// key is taken, 400 and 413 where a body is read — are in the document, and
/// every error answer shows the envelope it is sent in.
#[test]
fn openapi_documents_the_error_answers_of_every_operation() {
    let doc = serde_json::to_value(hangar_api::openapi()).expect("serializes");
    let envelope = &doc["components"]["schemas"]["Error"];
    assert_eq!(
        envelope["required"],
        json!(["success", "error"]),
        "{envelope}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            let responses = operation["responses"].as_object().expect("responses");
            let keyless = operation["security"] == json!([]);
            let statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
            if !keyless {
                assert!(statuses.contains(&"401"), "{method} {path}: {statuses:?}");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413"] {
                    assert!(statuses.contains(&status), "{method} {path}: {statuses:?}");
                }
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

/// Bodies a client generated from the document sends: `null` for an optional
/// body it has none for, and `60.0` where the schema says integer (JSON
/// Schema's integers are numbers without a fraction).
#[tokio::test]
async fn generated_clients_bodies_are_read() {
    each_backend(|h| async move {
        let key = h.a.key.clone();
        let r = h
            .raw(Method::POST, "/v1/uploads", Some(&key), Some("null"))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let body = r#"{"agent_id":"agent_nosuch","ttl_seconds":60.0}"#;
        let r = h
            .raw(Method::POST, "/v1/tokens", Some(&key), Some(body))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        assert_eq!(r.code(), "AGENT_NOT_FOUND");
        // A fraction is still refused, naming the field.
        let body = r#"{"agent_id":"agent_nosuch","ttl_seconds":60.5}"#;
        let r = h
            .raw(Method::POST, "/v1/tokens", Some(&key), Some(body))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.body["error"]["field"], "ttl_seconds");
    })
    .await;
}

/// A list takes exactly the cursors its documented pattern allows: any ID of
/// the list's kind (a keyset position), and nothing else.
#[tokio::test]
async fn list_cursors_are_what_the_document_allows() {
    let doc = serde_json::to_value(hangar_api::openapi()).expect("serializes");
    let cursor = doc["paths"]["/v1/agents"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "cursor")
        .cloned()
        .expect("cursor parameter");
    assert_eq!(cursor["in"], "query");
    assert_eq!(cursor["schema"]["pattern"], "^(agent_[A-Za-z0-9_]{0,57})?$");
    each_backend(|h| async move {
        let key = h.a.key.clone();
        let r = h
            .get("/v1/agents?cursor=agent_01zzzzzzzzzzzzzzzzzzzzzzzz", &key)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        for other in ["inst_01zzzz", "agent_x-y", "YWdlbnRfMDE"] {
            let r = h
                .raw(
                    Method::GET,
                    &format!("/v1/agents?cursor={other}"),
                    Some(&key),
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{other}: {}", r.text);
            assert_eq!(r.body["error"]["field"], "cursor");
        }
    })
    .await;
}
