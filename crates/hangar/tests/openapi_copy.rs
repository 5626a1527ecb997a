//! `sdk/openapi.json` is the copy of the OpenAPI document the SDKs are
//! generated from: it must be what `hangar openapi` prints and what a running
//! server answers at `/openapi.json`, byte for byte once parsed. When the API
//! changes, this test fails until the copy is refreshed with
//! `cargo run -p hangar -- openapi > sdk/openapi.json` (and the SDKs' generated
//! code after it).

mod common;

use std::path::Path;
use std::process::Command;

use common::{temp, Server};
use serde_json::Value;

fn printed() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .arg("openapi")
        .output()
        .expect("run hangar openapi");
    assert!(out.status.success(), "hangar openapi failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("hangar openapi prints JSON")
}

#[test]
fn the_sdk_copy_is_what_hangar_openapi_prints() {
    let copy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/openapi.json");
    let copy: Value = serde_json::from_slice(&std::fs::read(&copy).expect("read sdk/openapi.json"))
        .expect("sdk/openapi.json is JSON");
    assert!(
        copy == printed(),
        "sdk/openapi.json is stale: run `cargo run -p hangar -- openapi > sdk/openapi.json` \
         and regenerate the SDKs"
    );
}

#[tokio::test]
async fn a_server_answers_the_printed_document() {
    let dir = temp("openapi-copy");
    let server = Server::start(&dir);
    let served: Value = reqwest::get(format!("{}/openapi.json", server.url))
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("JSON");
    assert!(
        served == printed(),
        "the served document differs from `hangar openapi`"
    );
    assert!(served["paths"].as_object().is_some_and(|p| !p.is_empty()));
}
