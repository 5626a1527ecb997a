//! The egress proxy for real: an agent allowed one host by name calls it
//! through `HTTP_PROXY`, the upstream (an HTTPS server in a network namespace
//! standing for the outside world) receives the header Hangar injected from
//! a secret, the secret is nowhere in the replica, a host not allowed is
//! refused and logged, and going around the proxy is refused by the packet
//! filter. Needs root like `run.rs`: `cargo test -p hangar --test egress`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::json;

mod common;

use common::*;

/// The outside world: a network namespace reached through a veth pair
/// (198.51.100.1 on the host, 198.51.100.2 inside), with an HTTPS server on
/// 443 that answers every request with its headers as JSON, its certificate
/// for `upstream.test` and `denied.test` signed by a CA of the test's own.
struct Outside {
    name: String,
    server: Child,
}

const UPSTREAM: &str = "198.51.100.2";

/// Answers every GET with the request's headers, as JSON.
const ECHO_SERVER: &str = r#"
import http.server, json, ssl, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.ThreadingHTTPServer((sys.argv[1], 443), Echo)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runs");
    assert!(status.success(), "{program} {args:?}");
}

impl Outside {
    fn new(dir: &Path) -> Self {
        // A CA and a leaf for the upstream's names.
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=egress test CA",
                "-keyout",
                &file("ca.key"),
                "-out",
                &file("ca.pem"),
            ],
        );
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=upstream.test",
                "-keyout",
                &file("leaf.key"),
                "-out",
                &file("leaf.csr"),
            ],
        );
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:upstream.test,DNS:denied.test\n",
        )
        .expect("write");
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &file("leaf.csr"),
                "-CA",
                &file("ca.pem"),
                "-CAkey",
                &file("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &file("san.ext"),
                "-out",
                &file("leaf.pem"),
            ],
        );

        let name = format!("hge{}", std::process::id());
        let (host_end, inner_end) = (format!("{name}h"), format!("{name}i"));
        run("ip", &["netns", "add", &name]);
        run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &inner_end,
            ],
        );
        run("ip", &["link", "set", &inner_end, "netns", &name]);
        run("ip", &["addr", "add", "198.51.100.1/24", "dev", &host_end]);
        run("ip", &["link", "set", &host_end, "up"]);
        for args in [
            vec!["addr", "add", "198.51.100.2/24", "dev", &inner_end],
            vec!["link", "set", &inner_end, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend(args);
            run("ip", &all);
        }
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "python3",
                "-c",
                ECHO_SERVER,
                UPSTREAM,
            ])
            .args([file("leaf.pem"), file("leaf.key")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("echo server");
        let outside = Self { name, server };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect((UPSTREAM, 443)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the upstream never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Python run in the instance's replica; its output (stdout then stderr)
/// and exit code.
async fn python(
    server: &Server,
    org: &str,
    instance: &str,
    code: &str,
) -> (String, Option<String>) {
    let (status, text, code) = server.exec(org, instance, &["python3", "-c", code]).await;
    assert_eq!(status, 200, "{text}");
    (text.trim().to_owned(), code)
}

const SECRET: &str = "sk-egress-test-7f3a9c1e";

#[tokio::test]
async fn the_proxy_injects_secrets_allows_by_name_and_logs_what_it_refuses() {
    if !root_or_skip("egress proxy") {
        return;
    }
    let dir = temp("egress");
    std::fs::create_dir_all(&dir).expect("dir");
    let outside = Outside::new(&dir);
    let ca = dir.join("ca.pem").to_string_lossy().into_owned();
    let hosts = format!("upstream.test={UPSTREAM}:443,denied.test={UPSTREAM}:443");
    let server = Server::start_with(
        &dir.join("server"),
        &["--egress-hosts", &hosts, "--egress-upstream-ca", &ca],
    );
    let org = server.org().await;
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/secrets",
            Some(json!({"name": "UPSTREAM_TOKEN", "value": SECRET})),
        )
        .await;
    assert!(status == 201 || status == 200, "{text}");
    let network = json!({
        "egress": {"allow": ["upstream.test"]},
        "inject": [{"host": "upstream.test", "headers": {"Authorization": "Bearer ${secrets.UPSTREAM_TOKEN}"}}],
    });
    let (_, instance) = server
        .deploy_running("caller", "http", json!({"config": {"network": network}}))
        .await;

    // Through the proxy (urllib follows HTTP_PROXY): the header is Hangar's,
    // not the one the agent sent.
    let (out, code) = python(
        &server,
        &org,
        &instance,
        "import json, urllib.request\n\
         request = urllib.request.Request('http://upstream.test/echo', headers={'Authorization': 'Bearer forged'})\n\
         seen = json.load(urllib.request.urlopen(request, timeout=20))\n\
         headers = {k.lower(): v for k, v in seen['headers'].items()}\n\
         print(seen['path'], headers.get('authorization'))",
    )
    .await;
    assert_eq!(code.as_deref(), Some("0"), "{out}");
    assert_eq!(out, format!("/echo Bearer {SECRET}"));

    // Over HTTPS too: the proxy terminates TLS to a host it injects for with
    // a certificate of Hangar's CA, which the replica trusts (Python reads
    // the bundle Hangar shows it through SSL_CERT_FILE), without losing the
    // public CAs of its root.
    let (out, code) = python(
        &server,
        &org,
        &instance,
        "import json, os, ssl, urllib.request\n\
         request = urllib.request.Request('https://upstream.test/tls', headers={'Authorization': 'Bearer forged'})\n\
         seen = json.load(urllib.request.urlopen(request, timeout=20))\n\
         headers = {k.lower(): v for k, v in seen['headers'].items()}\n\
         bundle = open(os.environ['SSL_CERT_FILE']).read()\n\
         print(seen['path'], headers.get('authorization'), bundle.count('BEGIN CERTIFICATE') > 1)",
    )
    .await;
    assert_eq!(code.as_deref(), Some("0"), "{out}");
    assert_eq!(out, format!("/tls Bearer {SECRET} True"));

    // A host the policy does not name: 403 from the proxy, in the agent's log.
    let (out, _) = python(
        &server,
        &org,
        &instance,
        "import urllib.request, urllib.error\n\
         try:\n    urllib.request.urlopen('http://denied.test/', timeout=20); print('reached')\n\
         except urllib.error.HTTPError as e: print(e.code)",
    )
    .await;
    assert_eq!(out, "403");
    server
        .wait_log(&org, &instance, "egress to denied.test:80 denied by policy")
        .await;

    // Around the proxy: the packet filter refuses the address itself.
    let (out, _) = python(
        &server,
        &org,
        &instance,
        &format!(
            "import socket\ns = socket.socket(); s.settimeout(5)\n\
             try:\n    s.connect(('{UPSTREAM}', 443)); print('ok')\n\
             except ConnectionRefusedError: print('refused')\n\
             except OSError as e: print('errno', e.errno)"
        ),
    )
    .await;
    assert_eq!(out, "refused");
    // Also written to the agent's log, at the next resync.
    server
        .wait_log(
            &org,
            &instance,
            &format!("egress to {UPSTREAM}:443 denied by policy"),
        )
        .await;

    // The secret is nowhere in the replica: not in its environment, not in
    // any process's, not in a file it can read.
    let (out, code) = python(
        &server,
        &org,
        &instance,
        &format!(
            "import os\nsecret = b'{SECRET}'\nfound = []\n\
             if secret in repr(os.environ).encode(): found.append('env')\n\
             for pid in os.listdir('/proc'):\n\
             \x20   try: data = open(f'/proc/{{pid}}/environ', 'rb').read()\n\
             \x20   except OSError: continue\n\
             \x20   if secret in data: found.append(pid)\n\
             for top in ['/app', '/tmp', '/etc']:\n\
             \x20   for root, dirs, files in os.walk(top):\n\
             \x20       for name in files:\n\
             \x20           try: data = open(os.path.join(root, name), 'rb').read()\n\
             \x20           except OSError: continue\n\
             \x20           if secret in data: found.append(os.path.join(root, name))\n\
             print(found, os.environ.get('HTTP_PROXY', '').startswith('http://10.231.0.1:'))"
        ),
    )
    .await;
    assert_eq!(code.as_deref(), Some("0"), "{out}");
    assert_eq!(out, "[] True");

    // Counted for the instance.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name) && line.contains(&instance))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for {instance} in\n{metrics}"))
    };
    // The proxy's refusal and the packet filter's.
    assert!(counter("hangar_instance_egress_denied_total") >= 2);
    drop(outside);
}
