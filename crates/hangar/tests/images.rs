//! Builds from OCI images, for real: a registry of Debian's `docker-registry`
//! on a loopback port, with basic auth; an image made here (no Docker) from
//! Debian's static busybox — an httpd with a CGI that answers JSON, and a
//! second layer whose whiteout deletes a file of the first — pushed with
//! `oci-client`; then `hangar serve` deploys it from a `docker` source whose
//! password is a Hangar secret, invokes it, and execs in it to see the
//! image's root (not the host's). A second agent from an image index naming
//! the same manifest reuses the artifact; a missing tag and missing
//! credentials fail their builds with a reason. Needs root, `docker-registry`
//! and `busybox-static`: `cargo test -p hangar --test images`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    ImageIndexEntry, OciImageIndex, Platform, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};

mod common;

use common::registry::{Registry, PASSWORD, REGISTRY, USER};
use common::*;

const BUSYBOX: &str = "/usr/bin/busybox";

/// Whether the registry and busybox are installed; with `CI=true` their
/// absence fails the test instead of skipping it.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn tools_or_skip(name: &str) -> bool {
    let missing: Vec<&str> = [REGISTRY, BUSYBOX]
        .into_iter()
        .filter(|tool| !Path::new(tool).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{missing:?} missing (apt-get install docker-registry busybox-static)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}, and CI=true"
    );
    eprintln!("SKIPPED {name}: {why}");
    false
}

fn gzip_tar(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        if name.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
        }
        header.set_mode(*mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, name, *data)
            .expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

const CGI: &str = r#"#!/bin/busybox sh
body=$(/bin/busybox head -c "${CONTENT_LENGTH:-0}")
/bin/busybox printf 'Content-Type: application/json\r\n\r\n'
/bin/busybox printf '{"output": {"echo": %s, "uid": "%s", "cwd": "%s"}}' "$body" "$(/bin/busybox id -u)" "$(/bin/busybox pwd)"
"#;

/// Builds the test image and pushes it as `team/agent:1.2`, and an image
/// index naming it for linux/amd64 as `team/agent:multi`.
async fn push_image(registry: &Registry) {
    let busybox = std::fs::read(BUSYBOX).expect("busybox");
    let lower = gzip_tar(&[
        ("bin/", b"", 0o755),
        ("bin/busybox", &busybox, 0o755),
        ("www/", b"", 0o755),
        ("www/index.html", b"<h1>from the image</h1>\n", 0o644),
        ("www/cgi-bin/", b"", 0o755),
        ("www/cgi-bin/invoke", CGI.as_bytes(), 0o755),
        ("etc/", b"", 0o755),
        ("etc/doomed", b"deleted by the next layer\n", 0o644),
        ("etc/kept", b"kept\n", 0o644),
    ]);
    let upper = gzip_tar(&[
        ("etc/.wh.doomed", b"", 0o644),
        ("etc/added", b"added by layer 2\n", 0o644),
    ]);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
            "Env": ["PATH=/bin", "GREETING=from-the-image"],
            "WorkingDir": "/www",
            "User": "65534",
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![registry.host.clone()]),
        ..ClientConfig::default()
    });
    let auth = RegistryAuth::Basic(USER.to_owned(), PASSWORD.to_owned());
    let tagged: Reference = format!("{}/team/agent:1.2", registry.host)
        .parse()
        .expect("reference");
    client
        .push(
            &tagged,
            &[
                ImageLayer::oci_v1_gzip(lower, None),
                ImageLayer::oci_v1_gzip(upper, None),
            ],
            Config::oci_v1(serde_json::to_vec(&config).expect("json"), None),
            &auth,
            None,
        )
        .await
        .expect("push the image");
    let (manifest, digest) = client
        .pull_manifest_raw(&tagged, &auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .expect("its manifest");
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: vec![ImageIndexEntry {
            media_type: OCI_IMAGE_MEDIA_TYPE.to_owned(),
            digest,
            size: manifest.len() as i64,
            platform: Some(linux_amd64()),
            annotations: None,
            artifact_type: None,
        }],
        artifact_type: None,
        annotations: None,
    };
    let multi: Reference = format!("{}/team/agent:multi", registry.host)
        .parse()
        .expect("reference");
    client
        .push_manifest_list(&multi, &auth, index)
        .await
        .expect("push the index");
}

fn linux_amd64() -> Platform {
    serde_json::from_value(json!({"architecture": "amd64", "os": "linux"})).expect("platform")
}

/// Creates an agent from `source`; returns its id and its first build's id.
async fn create(server: &Server, name: &str, source: Value) -> (String, String) {
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({
                "name": name,
                "cloud_id": "local",
                "source": source,
                "config": {"health_path": "/", "invoke_path": "/cgi-bin/invoke"},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let builds = server.get(&format!("/v1/agents/{agent}/builds")).await;
    let build = builds["data"][0]["id"].as_str().expect("build").to_owned();
    (agent, build)
}

async fn finished(server: &Server, build: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let b = server.get(&format!("/v1/builds/{build}")).await["data"].clone();
        if b["status"] == "ready" || b["status"] == "failed" {
            return b;
        }
        assert!(Instant::now() < deadline, "build never finished: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn log_text(server: &Server, build: &str) -> String {
    server.get(&format!("/v1/builds/{build}/logs")).await["data"]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for the agent's instance to be running; returns its id.
async fn running(server: &Server, agent: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = server.get(&format!("/v1/agents/{agent}")).await["data"].clone();
        if let Some(instance) = a["instance_id"].as_str() {
            if server.instance(instance).await["status"] == "running" {
                return instance.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "never running: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dir(tag: &str) -> PathBuf {
    let dir = temp(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_a_registry_runs_as_its_own_root() {
    if !root_or_skip("an_image_from_a_registry_runs_as_its_own_root")
        || !tools_or_skip("an_image_from_a_registry_runs_as_its_own_root")
    {
        return;
    }
    let base = dir("images");
    let registry = Registry::start(&base.join("registry")).await;
    push_image(&registry).await;

    let server = Server::start(&base.join("server"));
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/secrets",
            Some(json!({"name": "REGISTRY_PW", "value": PASSWORD})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let credentials = json!({"username": USER, "password": "${secrets.REGISTRY_PW}"});
    let image = format!("{}/team/agent:1.2", registry.host);

    let (agent, build) = create(
        &server,
        "image-agent",
        json!({"type": "docker", "image": image, "credentials": credentials}),
    )
    .await;
    let done = finished(&server, &build).await;
    let log = log_text(&server, &build).await;
    assert_eq!(done["status"], "ready", "{done}\n{log}");
    assert!(log.contains("manifest sha256:"), "{log}");
    assert!(log.contains("2 layer(s)"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password never reaches the log"
    );

    // The CGI of the image answers the invocation, as the image's user, in
    // its working directory.
    let instance = running(&server, &agent).await;
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"text": "hello image"}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let output = &body["data"]["output"];
    assert_eq!(output["echo"]["text"], "hello image", "{body}");
    assert_eq!(output["uid"], "65534", "{body}");

    // Its root is the image's: busybox, the doc root, layer 2's file, and
    // nothing of the host's /usr; the whited-out file is gone.
    let org = server.org().await;
    let (status, out, code) = server
        .exec(
            &org,
            &instance,
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "/bin/busybox ls /; echo ---; /bin/busybox ls /etc; echo ---; \
                 /bin/busybox pwd; echo $GREETING; echo $PORT",
            ],
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(code.as_deref(), Some("0"), "{out}");
    let parts: Vec<Vec<&str>> = out
        .split("---")
        .map(|part| part.split_whitespace().collect())
        .collect();
    assert_eq!(parts.len(), 3, "{out}");
    for want in ["bin", "www", "etc", "proc", "tmp", "dev"] {
        assert!(parts[0].contains(&want), "/ has {want}: {out}");
    }
    assert!(!parts[0].contains(&"usr"), "not the host's root: {out}");
    // (And the host's resolver, shown as container engines show theirs.)
    assert_eq!(
        parts[1],
        ["added", "kept", "resolv.conf"],
        "the whiteout deleted doomed: {out}"
    );
    assert_eq!(parts[2], ["/www", "from-the-image", "8080"], "{out}");

    // The same manifest through an image index: the artifact is reused.
    let (_, again) = create(
        &server,
        "image-agent-2",
        json!({
            "type": "docker",
            "image": format!("{}/team/agent:multi", registry.host),
            "credentials": credentials,
        }),
    )
    .await;
    let done = finished(&server, &again).await;
    let log = log_text(&server, &again).await;
    assert_eq!(done["status"], "ready", "{done}\n{log}");
    assert!(log.contains("reusing artifact oci-sha256-"), "{log}");

    // A tag that is not there, and no credentials: failed, saying why.
    let (_, missing) = create(
        &server,
        "image-missing",
        json!({
            "type": "docker",
            "image": format!("{}/team/agent:9.9", registry.host),
            "credentials": credentials,
        }),
    )
    .await;
    let done = finished(&server, &missing).await;
    assert_eq!(done["status"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("team/agent:9.9"), "{reason}");
    assert!(reason.contains("not found"), "{reason}");

    let (_, anonymous) = create(
        &server,
        "image-anonymous",
        json!({"type": "docker", "image": image}),
    )
    .await;
    let done = finished(&server, &anonymous).await;
    assert_eq!(done["status"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("refused the credentials"), "{reason}");

    server.delete(&instance, true).await;
    drop(server);
    drop(registry);
    let _ = std::fs::remove_dir_all(&base);
}
