//! `hangar serve`: prepare the data dir, open the store, bootstrap the first
//! organization, bind, serve until SIGTERM/SIGINT, drain, exit 0.
//!
//! Shutdown: the first signal stops accepting and lets in-flight requests finish
//! within a grace period; a second signal (or the end of the grace period) ends
//! the process at once.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hangar_api::{ApiConfig, AppState, Services};
use hangar_store::seal::Sealer;
use hangar_store::Store;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{redact_url, Config};

const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Logs to stderr; `RUST_LOG` filters (default `info`), `HANGAR_LOG_FORMAT=json`
/// switches to JSON lines.
pub fn init_tracing(env: &HashMap<String, String>) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(env.get("RUST_LOG").map_or("info", String::as_str))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if env.get("HANGAR_LOG_FORMAT").is_some_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reads the data dir's 32-byte key, creating it (mode 0600) on first start.
fn secret_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("secret.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() == 32 => Ok(key),
        Ok(_) => anyhow::bail!("{} is not a 32-byte key", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Sealer::generate_key();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&key)?;
            f.sync_all()?;
            Ok(key.to_vec())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Derives a purpose-specific key from the data dir's key.
fn derive_key(key: &[u8], purpose: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| {
        <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("any key length")
    });
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let key = secret_key(&config.data_dir)?;
    let sealer = Sealer::new(&derive_key(&key, "hangar secrets v1")).context("secret key")?;
    let store = Store::connect(&config.database_url, sealer)
        .await
        .with_context(|| format!("opening database {}", redact_url(&config.database_url)))?;
    let boot = store
        .bootstrap(config.admin_key.as_deref())
        .await
        .context("bootstrapping the first organization")?;
    if let Some(generated) = &boot.generated_key {
        let path = config.data_dir.join("admin.key");
        write_private(&path, &format!("{generated}\n"))?;
        println!(
            "Created organization {} and its admin API key (shown once; also in {}):",
            boot.organization.id,
            path.display()
        );
        println!("  {generated}");
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    // Absolute: build steps' sandboxes bind paths under it.
    let data_dir = config
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving data dir {}", config.data_dir.display()))?;
    let build_config = hangar_build::BuildConfig::new(data_dir.clone());
    let api_config = ApiConfig {
        base_domain: config.base_domain.clone(),
        public_port: local.port(),
        public_url: config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{host}:{}", local.port())),
        max_body_bytes: 2 << 20,
        upload_ttl: Duration::from_secs(3600),
        signing_key: derive_key(&key, "hangar upload urls v1"),
        uploads_dir: Some(build_config.uploads_dir()),
        max_upload_bytes: config.max_upload_bytes,
        cors_origins: config.cors_origins.clone(),
        rate_limit: config.rate_limit,
    };
    let docker = connect_docker(&config, &data_dir).await;
    let (runtime, driver) = start_runtime(&config, &store, &docker).await?;
    let woken = runtime.clone();
    let mut builder = hangar_build::Builder::new(store.clone())
        .with_config(build_config)
        .with_on_deployed(move |instance| {
            if let Some(runtime) = &woken {
                runtime.wake(&instance.id);
            }
        });
    if let Some(driver) = driver {
        builder = builder.with_driver(driver);
    }
    builder = match &docker {
        Ok(engine) => builder.with_images(engine.clone()),
        Err(why) => builder.without_images(why.clone()),
    };
    builder.clone().start();
    let deliverer =
        hangar_webhooks::Deliverer::new(store.clone(), config.webhook_retry_schedule.clone());
    deliverer.clone().start();
    let gateway = runtime.clone().map(|runtime| {
        Arc::new(hangar_gateway::Gateway::new(
            runtime,
            store.clone(),
            hangar_gateway::Limits {
                replica_concurrency: config.replica_concurrency,
                queue_depth: config.replica_concurrency.saturating_mul(10),
            },
        ))
    });
    // Jobs run where replicas run; a server without a runtime still accepts them.
    let jobs = gateway
        .clone()
        .map(|g| {
            crate::jobs::Jobs::start(&config.data_dir, store.clone(), g, config.job_concurrency)
        })
        .transpose()?;
    let app = hangar_api::app(AppState::from(Services {
        store: store.clone(),
        config: Arc::new(api_config),
        gateway,
        runtime,
        builder: Some(builder),
        deliverer: Some(deliverer),
        jobs: jobs.as_ref().map(|j| j.runner.clone()),
        intake: hangar_store::JobIntake::start(store.clone()),
    }));
    println!(
        "hangar listening on http://{local} (organization {}, database {})",
        boot.organization.id,
        redact_url(&config.database_url)
    );
    tracing::info!(%local, "listening");

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight requests (signal again to force)");
        let _ = drain_tx.send(());
        tokio::select! {
            () = wait_for_signal() => tracing::warn!("second signal: exiting now"),
            () = tokio::time::sleep(GRACE_PERIOD) => tracing::warn!("grace period over: exiting now"),
        }
        std::process::exit(1);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = drain_rx.await;
    })
    .await
    .context("serving")?;
    if let Some(jobs) = jobs {
        jobs.stop().await;
    }
    signals.abort();
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// How long connecting to the Docker engine may take at start: one that
/// does not answer by then is taken as absent.
const DOCKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Docker engine docker clouds run on, or why there is none (a
/// sentence for the errors of docker clouds' builds and replicas). Its
/// containers are marked with the data dir's [`docker_owner`], so other
/// Hangars on the same engine never adopt them. No engine is no error:
/// the server runs without it, and says so.
async fn connect_docker(
    config: &Config,
    data_dir: &Path,
) -> Result<Arc<hangar_runtime::DockerDriver>, String> {
    let engine = config
        .docker_host
        .clone()
        .unwrap_or_else(|| "the local socket".to_owned());
    let connect = |owner: String| async move {
        let connecting =
            hangar_runtime::DockerDriver::connect(hangar_runtime::DockerDriverConfig {
                host: config.docker_host.clone(),
                owner,
                default_image: hangar_build::docker::DEFAULT_BASE_IMAGE.to_owned(),
            });
        match tokio::time::timeout(DOCKER_CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(driver)) => Ok(driver),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!(
                "no answer within {} s",
                DOCKER_CONNECT_TIMEOUT.as_secs()
            )),
        }
    };
    let connected = match recorded_docker_owner(data_dir).map_err(|err| format!("{err:#}"))? {
        Some(owner) => connect(owner).await,
        None => {
            // Replicas of a build from before the owner file carry the hash
            // of the data dir's path: it is kept when some are on the engine,
            // so they are adopted.
            let legacy = path_docker_owner(data_dir);
            match connect(legacy.clone()).await {
                Ok(earlier) => {
                    let adopted = hangar_runtime::docker::leftovers(&earlier)
                        .await
                        .is_ok_and(|left| !left.is_empty());
                    let owner = if adopted {
                        legacy
                    } else {
                        random_docker_owner()
                    };
                    record_docker_owner(data_dir, &owner).map_err(|err| format!("{err:#}"))?;
                    if adopted {
                        Ok(earlier)
                    } else {
                        connect(owner).await
                    }
                }
                Err(why) => Err(why),
            }
        }
    };
    let why = match connected {
        Ok(driver) => {
            let version = driver.engine_version().await.unwrap_or_default();
            tracing::info!(%engine, %version, "docker driver ready: docker clouds run here");
            return Ok(Arc::new(driver));
        }
        Err(why) => why,
    };
    tracing::warn!(%engine, error = %why,
        "no Docker engine: agents on docker clouds will not build or run");
    Err(format!(
        "no Docker engine answered at start at {engine} ({why})"
    ))
}

/// Where the mark of this server's Docker containers is kept, in the data dir.
const DOCKER_OWNER_FILE: &str = "docker.owner";

/// The mark on this server's Docker containers and networks, as kept in
/// the data dir ([`DOCKER_OWNER_FILE`]); `None` before the first start with
/// an engine. The mark is random ([`random_docker_owner`]), so two servers
/// on one engine never take each other's replicas for their own, not even
/// with data dirs at the same path on two machines, and a data dir that
/// moves keeps its replicas.
fn recorded_docker_owner(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(DOCKER_OWNER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let owner = text.trim();
            anyhow::ensure!(
                owner.len() == 16 && owner.bytes().all(|b| b.is_ascii_hexdigit()),
                "{} does not hold 16 hex digits",
                path.display()
            );
            Ok(Some(owner.to_ascii_lowercase()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Keeps `owner` as the data dir's mark, written whole or not at all: a
/// torn file would refuse the next start.
fn record_docker_owner(data_dir: &Path, owner: &str) -> anyhow::Result<()> {
    let path = data_dir.join(DOCKER_OWNER_FILE);
    let temporary = data_dir.join(format!("{DOCKER_OWNER_FILE}.new"));
    std::fs::write(&temporary, format!("{owner}\n"))
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
}

/// 16 random hex digits.
fn random_docker_owner() -> String {
    rand::random::<[u8; 8]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The mark builds before [`DOCKER_OWNER_FILE`] used: a hash of the data
/// dir's path.
fn path_docker_owner(data_dir: &Path) -> String {
    use sha2::Digest as _;
    let hash = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The sandbox driver under `<data dir>/runtime`, with `docker` beside it
/// for docker clouds ([`hangar_runtime::DriverSet`]), and the controller
/// over them. Replicas left running by an earlier process are adopted
/// before the listener opens. Sandboxes need root: without it the server
/// runs without a runtime (the API works; nothing runs), and says so.
/// The sandbox driver is returned too: the builder runs build steps on it.
type Runtime = (
    Option<hangar_controller::Controller>,
    Option<Arc<dyn hangar_runtime::Driver>>,
);

async fn start_runtime(
    config: &Config,
    store: &hangar_store::Store,
    docker: &Result<Arc<hangar_runtime::DockerDriver>, String>,
) -> anyhow::Result<Runtime> {
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "NOT RUNNING AS ROOT: sandboxes need root (namespaces, cgroups, mounts), so this \
             server runs no replicas; instances stay `starting`"
        );
        eprintln!("hangar: not running as root: agents will not run (sandboxes need root)");
        return Ok((None, None));
    }
    let shim_program = std::env::current_exe().context("finding the hangar binary for shims")?;
    let driver = hangar_runtime::SandboxDriver::new(hangar_runtime::SandboxDriverConfig {
        shim_program,
        state_dir: config.data_dir.join("runtime"),
        host_network: false,
    })
    .context("preparing the sandbox driver's state dirs")?;
    tracing::info!(bridged = driver.bridged(), "sandbox driver ready");
    let driver: Arc<dyn hangar_runtime::Driver> = Arc::new(driver);
    let drivers = hangar_runtime::DriverSet::new(driver.clone());
    let drivers = match docker {
        Ok(engine) => drivers.with("docker", engine.clone()),
        Err(why) => drivers.without("docker", why.clone()),
    };
    let controller = hangar_controller::Controller::new(
        store.clone(),
        Arc::new(drivers),
        hangar_controller::ControllerConfig {
            idle_timeout: config.scale_to_zero_after,
            // The autoscaler aims at 70% of the limit, as Knative does.
            target_concurrency: config.replica_concurrency as f64 * 0.7,
            log_lines_kept: config.log_retention_lines,
            log_max_age: Some(config.log_retention),
            ..hangar_controller::ControllerConfig::default()
        },
    );
    // The shutdown signal is wired in with the other owned tasks.
    controller
        .start(tokio_util::sync::CancellationToken::new())
        .await
        .map_err(|err| anyhow::anyhow!("starting the controller: {err}"))?;
    Ok((Some(controller), Some(driver)))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server can still be killed; never resolve.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docker_owner_is_kept_whole_and_checked() {
        let dir = std::env::temp_dir().join(format!("hangar-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(recorded_docker_owner(&dir).expect("none yet"), None);
        let owner = random_docker_owner();
        assert_eq!(owner.len(), 16);
        assert_ne!(owner, random_docker_owner());
        record_docker_owner(&dir, &owner).expect("recorded");
        assert_eq!(recorded_docker_owner(&dir).expect("kept"), Some(owner));
        assert!(!dir.join(format!("{DOCKER_OWNER_FILE}.new")).exists());
        assert_eq!(path_docker_owner(&dir).len(), 16);
        std::fs::write(dir.join(DOCKER_OWNER_FILE), "not hex\n").expect("write");
        let err = recorded_docker_owner(&dir).expect_err("a damaged file is refused");
        assert!(err.to_string().contains("16 hex digits"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
