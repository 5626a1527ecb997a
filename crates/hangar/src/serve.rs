//! `hangar serve`: bind, prepare the data dir, open the store, bootstrap the
//! first organization, start the background tasks, serve until
//! SIGTERM/SIGINT, drain, exit 0.
//!
//! The listener is bound first: a server that cannot listen (the port is
//! taken) must fail before it creates anything — no data dir, no database,
//! no organization, no admin key printed for a server that never ran.
//! Then the host's checks ([`crate::doctor::local`]) are printed as one
//! short block on stderr — what is not ok, and whether agents will run —
//! before anything else, so a server that will not run agents (not root)
//! says so in its first lines, not in a log line among many.
//!
//! Next the secret key (configured, or the data dir's `secret.key`) is
//! checked against the fingerprint the database keeps of the key of the
//! first server on it ([`hangar_store::seal`]): a server with another key
//! refuses before it bootstraps, joins the nodes or, with a configured key
//! on PostgreSQL, makes its data dir. Uploads' archives and build artifacts
//! go to the blob store `blobs` names ([`hangar_store::blobs`]); the
//! controller fetches from it the artifacts other servers built.
//!
//! Shutdown is one [`CancellationToken`], cancelled by the first signal and
//! handed to every background task at its start. The listener stops
//! accepting and in-flight requests finish; the builder, the webhook
//! deliverer and the job runner take no new work and give the work under
//! way [`DRAIN`] to finish, then leave it for the next start (a build is
//! queued again, a webhook attempt is due again, a job is released); the
//! job intake stores every job it was handed. Every task is joined before
//! the store is closed. A second signal, or the end of [`GRACE_PERIOD`],
//! ends the process at once (exit 1). Replicas are not stopped by a
//! server's shutdown: they keep running and the next start adopts them —
//! unless another server on the database is ready, which then takes this
//! one's instances over (their leases are released and its replicas
//! stopped; see the controller's `leases`). The node's heartbeat stops
//! last, recording the stop once the controller has ended.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hangar_api::{ApiConfig, AppState, Services};
use hangar_store::blobs::{Blobs, BucketBlobs, DirBlobs};
use hangar_store::seal::{fingerprint, KeyCheck, Sealer};
use hangar_store::Store;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, BlobHome, Config, SECRET_KEY_SETTINGS};
use crate::data_dir::{random_docker_owner, DataDir};

/// From the first signal to the forced exit.
const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// How long work under way (a build, a webhook attempt, a job) may go on
/// after the first signal before it is left for the next start; well
/// within [`GRACE_PERIOD`], so draining ends in an orderly exit.
const DRAIN: Duration = Duration::from_secs(10);

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

/// Derives a purpose-specific key from the data dir's key.
fn derive_key(key: &[u8], purpose: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| {
        <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("any key length")
    });
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Records this server's key's fingerprint as the store's, or checks it
/// against the one recorded by the first server: a server with another key
/// would seal secrets no other server opens and sign tokens none accepts,
/// so it refuses to start, saying which setting to fix.
async fn check_key(store: &Store, key: &[u8], source: &str, server: &str) -> anyhow::Result<()> {
    let check = store
        .claim_key_fingerprint("secret", &fingerprint(key), server)
        .await
        .context("checking the secret key against the database's")?;
    match check {
        KeyCheck::Recorded => {
            tracing::info!(key = %source, "this server's secret key is the database's now");
            Ok(())
        }
        KeyCheck::Matches => Ok(()),
        KeyCheck::Differs {
            recorded_by,
            recorded_at,
        } => anyhow::bail!(
            "the secret key ({source}) is not the one the servers on this database use \
             (its fingerprint was recorded by the server at {recorded_by} on {recorded_at}): secrets they \
             sealed would not open here. Give every server the same key with {SECRET_KEY_SETTINGS} \
             (the first server's is its data dir's secret.key, which can be used as it is)"
        ),
    }
}

/// Artifacts another server built, fetched from the blob store into this
/// server's `artifacts/` before a replica of them starts here.
#[derive(Debug)]
struct SharedArtifacts {
    artifacts_dir: std::path::PathBuf,
    blobs: Arc<dyn Blobs>,
}

#[async_trait::async_trait]
impl hangar_controller::ArtifactFetch for SharedArtifacts {
    async fn local(&self, recorded: &str) -> Result<std::path::PathBuf, String> {
        hangar_build::artifact::local_copy(recorded, &self.artifacts_dir, self.blobs.as_ref())
            .await
            .map_err(|err| {
                tracing::warn!(artifact = %recorded, error = %err, "cannot fetch an artifact from the blob store");
                format!("cannot fetch the artifact from {} (the server's log says why)", self.blobs.describe())
            })
    }
}

/// `hangar serve --migrate-only`: brings the database's schema to this
/// build's and exits, touching nothing else (no organization, no key, no
/// node row; the data dir only when the SQLite file is in it). Servers of
/// the version before keep running on the migrated database (every
/// migration is additive), so an upgrade is: migrate, then replace the
/// servers one at a time.
pub async fn migrate_only(config: &Config) -> anyhow::Result<()> {
    if config.database_url.starts_with("sqlite:") {
        DataDir::open(&config.data_dir)?;
    }
    let database = redact_url(&config.database_url);
    let migrated = Store::migrate(&config.database_url)
        .await
        .with_context(|| format!("migrating database {database}"))?;
    let applied = if migrated.applied.is_empty() {
        "nothing to apply".to_owned()
    } else {
        let versions: Vec<String> = migrated.applied.iter().map(i64::to_string).collect();
        format!("applied {}", versions.join(", "))
    };
    println!(
        "database {database}: {applied}; schema version {} (this build's: {})",
        migrated.version, migrated.latest
    );
    Ok(())
}

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let checked = config.clone();
    let findings = tokio::task::spawn_blocking(move || crate::doctor::local(&checked))
        .await
        .context("checking the host")?;
    for line in crate::doctor::start_block(&findings) {
        eprintln!("{line}");
    }
    // Signals are taken from here on: one during the start-up below is a
    // shutdown the tasks see as soon as they start.
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(forward_signals(shutdown.clone()));
    // The controller stops last, once requests and jobs have drained: one
    // still draining may need a replica started (a cold start) or watched.
    let replicas_shutdown = CancellationToken::new();

    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{host}:{}", local.port()));
    // The key before anything else is made: a server whose key is not the
    // store's refuses with nothing created (with a configured key on
    // PostgreSQL, not even its data dir).
    let (key, key_source) = match &config.secret_key {
        Some(configured) => (configured.bytes().to_vec(), configured.source.clone()),
        None => {
            let dir = DataDir::open(&config.data_dir)?;
            (dir.secret_key()?, dir.secret_key_source())
        }
    };
    if config.database_url.starts_with("sqlite:") {
        // SQLite's file is in the data dir unless told otherwise.
        DataDir::open(&config.data_dir)?;
    }
    let sealer = Sealer::new(&derive_key(&key, "hangar secrets v1")).context("secret key")?;
    let store = Store::connect(&config.database_url, sealer)
        .await
        .with_context(|| format!("opening database {}", redact_url(&config.database_url)))?;
    check_key(&store, &key, &key_source, &public_url).await?;
    let data_dir = DataDir::open(&config.data_dir)?;
    let node_id = data_dir.node_id()?;
    let boot = store
        .bootstrap(config.admin_key.as_deref())
        .await
        .context("bootstrapping the first organization")?;
    if let Some(generated) = &boot.generated_key {
        let path = data_dir.write_admin_key(generated)?;
        println!(
            "Created organization {} and its admin API key (shown once; also in {}):",
            boot.organization.id,
            path.display()
        );
        println!("  {generated}");
    }
    let blobs: Arc<dyn Blobs> = match &config.blobs {
        BlobHome::DataDir => Arc::new(DirBlobs::new(data_dir.path())),
        BlobHome::Store => Arc::new(store.database_blobs()),
        BlobHome::Bucket(bucket) => Arc::new(
            BucketBlobs::s3(
                &bucket.url,
                bucket.env.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            )
            .with_context(|| format!("the blob bucket {}", bucket.url))?,
        ),
    };
    tracing::info!(blobs = %blobs.describe(), "uploads' archives and build artifacts are kept in {}", blobs.describe());

    let mut build_config = hangar_build::BuildConfig::new(data_dir.path());
    build_config.step_env.clone_from(&config.build_step_env);
    // A build's claim runs out when a node would be declared dead: the
    // build of a killed server is built again by another that soon.
    build_config.lease = config.node_dead_after;
    let api_config = ApiConfig {
        base_domain: config.base_domain.clone(),
        public_port: local.port(),
        public_url,
        max_body_bytes: 2 << 20,
        upload_ttl: Duration::from_secs(3600),
        signing_key: derive_key(&key, "hangar upload urls v1"),
        uploads_dir: Some(build_config.uploads_dir()),
        blobs: Some(blobs.clone()),
        max_upload_bytes: config.max_upload_bytes,
        cors_origins: config.cors_origins.clone(),
        rate_limit: config.rate_limit,
        node_dead_after: config.node_dead_after,
    };
    // This node is recorded as started before its controller takes any
    // instance lease: until then a lease it held before a clean stop may be
    // taken by any other node. Its heartbeat goes on until the controller
    // has stopped, and only then is the stop recorded, so no other node
    // takes its instances while it still acts on them (see the controller's
    // `leases`).
    let counted: Arc<std::sync::OnceLock<hangar_controller::Controller>> = Arc::default();
    let hopping: Arc<std::sync::OnceLock<Arc<hangar_gateway::hop::Hops>>> = Arc::default();
    let heartbeat = {
        let counted = counted.clone();
        let hopping = hopping.clone();
        crate::node::start(
            store.clone(),
            node_id.clone(),
            api_config.public_url.clone(),
            config.node_dead_after,
            {
                let counted = counted.clone();
                move || {
                    counted
                        .get()
                        .map_or(0, hangar_controller::Controller::replica_count)
                }
            },
            move |draining| {
                if let Some(controller) = counted.get() {
                    controller.set_draining(draining);
                }
                if let Some(hops) = hopping.get() {
                    hops.set_draining(draining);
                }
            },
            replicas_shutdown.clone(),
        )
        .await?
    };
    let docker = connect_docker(&config, &data_dir).await;
    let artifacts = Arc::new(SharedArtifacts {
        artifacts_dir: build_config.artifacts_dir(),
        blobs: blobs.clone(),
    });
    let (runtime, driver, controller_loop, kubernetes) = start_runtime(
        &config,
        &node_id,
        &data_dir,
        &store,
        &docker,
        artifacts,
        &replicas_shutdown,
    )
    .await?;
    if let Some(runtime) = &runtime {
        let _ = counted.set(runtime.clone());
    }
    let woken = runtime.clone();
    let mut builder = hangar_build::Builder::new(store.clone())
        .with_owner(&node_id)
        .with_config(build_config)
        .with_blobs(blobs)
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
    // Every task the server starts, joined at shutdown (by name, for the log).
    let mut tasks: Vec<(&str, JoinHandle<()>)> = Vec::new();
    tasks.push(("builder", builder.clone().start(shutdown.clone(), DRAIN)));
    let deliverer = hangar_webhooks::Deliverer::new(
        store.clone(),
        config.webhook_retry_schedule.clone(),
        config.webhook_addresses,
    );
    tasks.push((
        "webhook deliverer",
        deliverer.clone().start(shutdown.clone(), DRAIN),
    ));
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
    let jobs = gateway.clone().map(|g| {
        crate::jobs::Jobs::start(
            &node_id,
            store.clone(),
            g,
            config.job_concurrency,
            shutdown.clone(),
            DRAIN,
        )
    });
    let runner = jobs.map(|jobs| {
        tasks.push(("job runner", jobs.task));
        jobs.runner
    });
    let (intake, intake_task) = hangar_store::JobIntake::start(store.clone(), shutdown.clone());
    tasks.push(("job intake", intake_task));
    // Requests for instances another node holds go there, with a token
    // every node derives from the key they share.
    let hops = Arc::new(
        hangar_gateway::hop::Hops::new(
            store.clone(),
            node_id.clone(),
            &derive_key(&key, "hangar cluster hops v1"),
            config.node_dead_after,
        )
        .context("TLS roots for requests to other nodes")?,
    );
    let _ = hopping.set(hops.clone());
    let app = hangar_api::app(AppState::from(Services {
        store: store.clone(),
        config: Arc::new(api_config),
        gateway,
        runtime,
        builder: Some(builder),
        deliverer: Some(deliverer),
        jobs: runner,
        hops: Some(hops),
        intake,
        kubernetes,
        no_agents_reason: crate::doctor::no_agents_reason(nix::unistd::geteuid().is_root())
            .map(str::to_owned),
    }));
    println!(
        "hangar listening on http://{local} (organization {}, database {})",
        boot.organization.id,
        redact_url(&config.database_url)
    );
    tracing::info!(%local, node = %node_id, "listening");

    let draining = shutdown.clone();
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { draining.cancelled().await })
    .await;
    // However serving ended, the tasks are stopped and joined before the
    // store closes under them.
    shutdown.cancel();
    for (name, task) in tasks {
        if let Err(err) = task.await {
            tracing::error!(task = name, error = %err, "a background task failed");
        }
    }
    // Then the controller's tasks; no replica is stopped (they keep running
    // and the next start adopts them) unless another node is ready to take
    // this node's instances over. Then the node's heartbeat, which records
    // the stop.
    replicas_shutdown.cancel();
    if let Some(controller_loop) = controller_loop {
        if let Err(err) = controller_loop.await {
            tracing::error!(task = "controller", error = %err, "a background task failed");
        }
    }
    if let Err(err) = heartbeat.await {
        tracing::error!(task = "node heartbeat", error = %err, "a background task failed");
    }
    signals.abort();
    store.close().await;
    served.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// How long connecting to the Docker engine may take at start: one that
/// does not answer by then is taken as absent.
const DOCKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Docker engine docker clouds run on, or why there is none (a
/// sentence for the errors of docker clouds' builds and replicas). Its
/// containers are marked with the data dir's [`DataDir::docker_owner`], so
/// other Hangars on the same engine never adopt them. No engine is no error:
/// the server runs without it, and says so.
async fn connect_docker(
    config: &Config,
    data_dir: &DataDir,
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
    let connected = match data_dir.docker_owner().map_err(|err| format!("{err:#}"))? {
        Some(owner) => connect(owner).await,
        None => {
            // Replicas of a build from before the owner file carry the hash
            // of the data dir's path: it is kept when some are on the engine,
            // so they are adopted.
            let legacy = data_dir.legacy_docker_owner();
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
                    data_dir
                        .record_docker_owner(&owner)
                        .map_err(|err| format!("{err:#}"))?;
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

/// The sandbox driver under `<data dir>/runtime`, with `docker` beside it
/// for docker clouds ([`hangar_runtime::DriverSet`]), and the controller
/// over them. Replicas left running by an earlier process are adopted
/// before the listener opens. Sandboxes need root: without it the server
/// runs without a runtime (the API works, refusing work for agents with
/// [`crate::doctor::no_agents_reason`]); the start-up block said so.
/// The sandbox driver is returned too: the builder runs build steps on it;
/// and the controller's loop.
type Runtime = (
    Option<hangar_controller::Controller>,
    Option<Arc<dyn hangar_runtime::Driver>>,
    Option<JoinHandle<()>>,
    Option<Arc<hangar_runtime::KubernetesDriver>>,
);

async fn start_runtime(
    config: &Config,
    node_id: &str,
    data_dir: &DataDir,
    store: &hangar_store::Store,
    docker: &Result<Arc<hangar_runtime::DockerDriver>, String>,
    artifacts: Arc<SharedArtifacts>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Runtime> {
    if let Some(reason) = crate::doctor::no_agents_reason(nix::unistd::geteuid().is_root()) {
        tracing::warn!("NOT RUNNING AS ROOT: {reason}");
        return Ok((None, None, None, None));
    }
    let shim_program = std::env::current_exe().context("finding the hangar binary for shims")?;
    let driver = hangar_runtime::SandboxDriver::new(hangar_runtime::SandboxDriverConfig {
        shim_program,
        state_dir: config.data_dir.join("runtime"),
        host_network: false,
    })
    .context("preparing the sandbox driver's state dirs")?;
    tracing::info!(bridged = driver.bridged(), "sandbox driver ready");
    // Replicas on the bridge reach the egress proxy at its gateway.
    let proxy = if driver.bridged() {
        let bridge = hangar_runtime::sandbox::BridgeConfig::default();
        Some(crate::egress::bind(config, data_dir, &bridge).await?)
    } else {
        None
    };
    let driver: Arc<dyn hangar_runtime::Driver> = Arc::new(driver);
    let drivers = hangar_runtime::DriverSet::new(driver.clone());
    let drivers = match docker {
        Ok(engine) => drivers.with("docker", engine.clone()),
        Err(why) => drivers.without("docker", why.clone()),
    };
    let kubernetes = start_kubernetes(store, data_dir).await?;
    let drivers = drivers.with("kubernetes", kubernetes.clone());
    let controller = hangar_controller::Controller::new(
        store.clone(),
        Arc::new(drivers),
        hangar_controller::ControllerConfig {
            idle_timeout: config.scale_to_zero_after,
            // The autoscaler aims at 70% of the limit, as Knative does.
            target_concurrency: config.replica_concurrency as f64 * 0.7,
            log_lines_kept: config.log_retention_lines,
            log_max_age: Some(config.log_retention),
            default_egress: config.egress_default.clone(),
            egress_proxy: proxy.as_ref().map(|proxy| proxy.address.clone()),
            artifacts: Some(artifacts),
            node_id: node_id.to_owned(),
            instance_lease: config.instance_lease,
            node_dead_after: config.node_dead_after,
            metric_retention: config.metric_retention,
            ..hangar_controller::ControllerConfig::default()
        },
    );
    let controller_loop = controller
        .start(shutdown.clone())
        .await
        .map_err(|err| anyhow::anyhow!("starting the controller: {err}"))?;
    // The proxy serves replicas, so it stops with the controller.
    let proxy = proxy.map(|proxy| proxy.start(controller.clone(), shutdown.clone()));
    let controller_loop = tokio::spawn(async move {
        let controller = controller_loop.await;
        if let Some(proxy) = proxy {
            if let Err(err) = proxy.await {
                tracing::error!(task = "egress proxy", error = %err, "a background task failed");
            }
        }
        if let Err(err) = controller {
            tracing::error!(task = "controller", error = %err, "a background task failed");
        }
    });
    Ok((
        Some(controller),
        Some(driver),
        Some(controller_loop),
        Some(kubernetes),
    ))
}

/// The kubernetes driver, with the cluster of every kubernetes cloud in the
/// store connected (a cluster that does not answer now is tried again when
/// a replica is made for it). Replicas are reached at their pod IPs when
/// this server is on a cluster's pod network (in it, or on a node), else
/// through its API server's port-forward; the log says which.
async fn start_kubernetes(
    store: &hangar_store::Store,
    data_dir: &DataDir,
) -> anyhow::Result<Arc<hangar_runtime::KubernetesDriver>> {
    use hangar_core::kubernetes::KubernetesCloudConfig;
    use hangar_runtime::kubernetes::{Cluster, ClusterConfig};
    let owner = data_dir.kubernetes_owner()?;
    let driver = Arc::new(
        hangar_runtime::KubernetesDriver::new(&owner)
            .map_err(|err| anyhow::anyhow!("the kubernetes driver: {err}"))?
            .with_grace(hangar_controller::ControllerConfig::default().stop_grace)
            .with_cloud_source(Arc::new(StoredClouds(store.clone()))),
    );
    let clouds = store
        .clouds_of_driver(hangar_core::model::DriverKind::Kubernetes)
        .await
        .context("reading the kubernetes clouds")?;
    for cloud in clouds {
        let config = match KubernetesCloudConfig::parse(&cloud.config) {
            Ok(config) => ClusterConfig::from_cloud(&config),
            Err(err) => {
                tracing::warn!(cloud = %cloud.id, error = %err, "a kubernetes cloud's config is unusable: its agents will not run");
                continue;
            }
        };
        match Cluster::connect(&config).await {
            Ok(cluster) => {
                let reach = cluster.reach().map_or_else(
                    || "at their pod IPs if this server is on the pod network, else through the API server's port-forward (the first pod tells)".to_owned(),
                    |reach| reach.to_string(),
                );
                tracing::info!(cloud = %cloud.id, namespace = %cluster.namespace(), version = %cluster.version(),
                    "kubernetes cloud connected: replicas are pods, reached {reach}");
                driver.add_cloud(&cloud.id, cluster);
            }
            Err(err) => {
                tracing::warn!(cloud = %cloud.id, error = %err,
                    "a kubernetes cloud's cluster does not answer: tried again when a replica is made");
                driver.add_unreachable_cloud(&cloud.id, config);
            }
        }
    }
    Ok(driver)
}

/// The kubernetes clouds in the store, for the driver to find those added
/// through another server on the database after this one started.
struct StoredClouds(hangar_store::Store);

#[async_trait::async_trait]
impl hangar_runtime::kubernetes::CloudSource for StoredClouds {
    async fn cluster_config(
        &self,
        cloud_id: &str,
    ) -> Result<Option<hangar_runtime::ClusterConfig>, String> {
        let clouds = self
            .0
            .clouds_of_driver(hangar_core::model::DriverKind::Kubernetes)
            .await
            .map_err(|err| format!("reading the kubernetes clouds: {err}"))?;
        let Some(cloud) = clouds.into_iter().find(|cloud| cloud.id == cloud_id) else {
            return Ok(None);
        };
        let config = hangar_core::kubernetes::KubernetesCloudConfig::parse(&cloud.config)
            .map_err(|err| format!("its config is unusable: {err}"))?;
        Ok(Some(hangar_runtime::ClusterConfig::from_cloud(&config)))
    }
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT; at a second one, or
/// when the grace period is over, ends the process (exit 1).
async fn forward_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server can still be killed.
        tracing::warn!("cannot listen for signals: SIGTERM ends the server without draining");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: draining in-flight work (signal again to force)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
        () = tokio::time::sleep(GRACE_PERIOD) => tracing::warn!("grace period over: exiting now"),
    }
    std::process::exit(1);
}
