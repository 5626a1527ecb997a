//! Control-plane read latency: how fast the API answers reads when an organization
//! has many instances.
//!
//! The target (from the issue tracker): with 10,000 instances in the SQLite store,
//! `GET /instances/{id}` p99 ≤ 5 ms and a list page of 50 ≤ 10 ms. Those are the
//! reads dashboards and CLIs poll, so they bound how responsive the control plane
//! feels at scale.
//!
//! What runs:
//! 1. A fresh store (a SQLite file in a temporary directory, removed at the end,
//!    unless `--database-url` is given) with one organization holding `--instances`
//!    instances of one agent, created through the store's own `create_instance`.
//! 2. The real HTTP application (`hangar_api::app`, every layer included, API-key
//!    authentication on every request) served by `axum::serve` on a loopback port,
//!    on its own multi-threaded Tokio runtime, so client work does not run on the
//!    server's threads.
//! 3. One keep-alive `reqwest` client on a separate runtime sends sequential
//!    requests: `GET /healthz` (no auth, no database: the HTTP floor), `GET
//!    /instances/{id}` for random IDs, the first list page of 50, a page after a
//!    random server-issued cursor, and a walk that follows `next_cursor` through
//!    every page. The same reads are timed as direct store calls (the in-process
//!    baseline), plus `authenticate`, which every API request also does.
//!
//! Before timing, one walk over HTTP checks that every instance is listed exactly
//! once, in order. Each operation then gets 200 warm-up calls and `--requests`
//! timed ones, split into 10 blocks of consecutive calls spread round-robin over
//! the run (each block after 20 untimed calls), so that drifting machine conditions
//! fall on every row alike. Every response is checked (status 200, the expected
//! IDs in the expected order), so errors can never be measured as fast answers. A
//! request is timed from send to the last body byte; parsing and checking happen
//! after the clock stops.
//!
//! Results are latency percentiles and ratios against baselines from the same run
//! (the store call, and `/healthz`), which say more across machines than absolute
//! milliseconds. The binary exits 0 whether or not the targets are met: it is a
//! measurement, not a test. It fails only on real errors.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hangar_api::{ApiConfig, AppState, Services};
use hangar_bench::host::TempDir;
use hangar_bench::{cpu_ticks, percentile, sorted_ms, steal_percent};
use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::BuildStatus;
use hangar_store::seal::Sealer;
use hangar_store::{InstanceFilter, NewAgent, NewInstance, Store};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Untimed calls of each operation before any is timed.
const WARMUP: usize = 200;
/// Blocks each operation's timed calls are split into.
const BLOCKS: usize = 10;
/// Untimed calls at the start of each block.
const LEAD_IN: usize = 20;
/// Page size of the list reads.
const PAGE: usize = 50;
/// Target p99 of `GET /instances/{id}`, in ms.
const GET_TARGET_MS: f64 = 5.0;
/// Target p99 of a list page of 50, in ms.
const LIST_TARGET_MS: f64 = 10.0;
/// The instance count the targets are stated for.
const TARGET_INSTANCES: u32 = 10_000;

/// Measures the control plane's read latency over HTTP against a seeded store.
#[derive(Debug, Parser)]
#[command(name = "control-plane")]
struct Args {
    /// Instances to create in the benchmark organization.
    #[arg(long, default_value_t = 10_000)]
    instances: u32,
    /// Timed requests per operation (after 200 warm-up requests; in 10 blocks, each
    /// after 20 untimed requests).
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Database to seed and read; every run adds a new organization with its own
    /// instances (default: a fresh SQLite file in a temporary directory, removed
    /// at the end).
    #[arg(long)]
    database_url: Option<String>,
    /// Seed of the random choice of instance IDs and cursors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The seeded organization.
struct Fixture {
    store: Store,
    org_id: String,
    key: String,
    /// Instance IDs, newest first (the order lists return).
    ids_desc: Vec<String>,
}

async fn seed(url: &str, instances: u32) -> Result<Fixture> {
    let sealer = Sealer::new(&Sealer::generate_key())?;
    let store = Store::connect(url, sealer)
        .await
        .context("opening the database")?;
    store.bootstrap(None).await.context("bootstrapping")?;
    let org = store
        .create_organization("bench", instances + 10, "bench@example.com")
        .await
        .context("creating the organization")?;
    let org_id = org.organization.id.clone();
    let user_id = org.admin.id.clone();
    let cloud = store
        .get_cloud(&org_id, "local")
        .await?
        .context("the new organization has no `local` cloud")?;
    let (agent, build) = store
        .create_agent(NewAgent {
            organization_id: org_id.clone(),
            user_id: user_id.clone(),
            cloud_id: cloud.id,
            url_base: None,
            name: "bench-agent".into(),
            display_name: Some("Benchmark agent".into()),
            version: Some("1.0.0".into()),
            runtime: Default::default(),
            resources: Resources::default(),
            scaling: Scaling::default(),
            config: RuntimeConfig::default(),
            environment: Default::default(),
            source: Source::Github {
                repo: "hangar/bench-agent".into(),
                branch: None,
                path: None,
                commit: None,
            },
            metadata: Default::default(),
        })
        .await
        .context("creating the agent")?;
    store
        .set_build_status(&build.id, BuildStatus::Ready, None, Some("sha256:bench"))
        .await?;

    let started = Instant::now();
    let step = (instances / 10).max(1);
    let mut ids = Vec::with_capacity(instances as usize);
    for i in 0..instances {
        let env_vars = [
            ("LOG_LEVEL".to_owned(), "info".to_owned()),
            ("MODEL".to_owned(), "small".to_owned()),
        ]
        .into();
        let inst = store
            .create_instance(NewInstance {
                organization_id: org_id.clone(),
                agent_id: agent.agent.id.clone(),
                build_id: build.id.clone(),
                user_id: user_id.clone(),
                name: format!("bench-{i:06}"),
                resource_name: None,
                config: RuntimeConfig::default(),
                resources: Resources::default(),
                env_vars,
                replicas: 1,
                make_default: false,
            })
            .await
            .with_context(|| format!("creating instance {i}"))?;
        ids.push(inst.id);
        if (i + 1) % step == 0 || i + 1 == instances {
            println!(
                "  created {}/{instances} instances ({:.1} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Lists order by ID, descending; IDs compare as bytes on both sides.
    ids.sort_unstable();
    ids.reverse();
    Ok(Fixture {
        store,
        org_id,
        key: org.key.secret,
        ids_desc: ids,
    })
}

/// One timed operation: gets the call's index (warm-up included, below
/// [`calls_per_op`]) and returns its own timing, so that checks stay off the clock.
type Op<'a> = Box<dyn FnMut(usize) -> Result<Duration> + 'a>;

/// Calls each operation gets in all: warm-up, lead-ins and timed calls.
fn calls_per_op(n: usize) -> usize {
    WARMUP + BLOCKS * LEAD_IN + n
}

/// Warms every operation up, then times `n` calls of each in `BLOCKS` blocks of
/// consecutive calls: one block of each operation per pass, in a fresh random order
/// each pass. A block starts with `LEAD_IN` untimed calls, so the switch from
/// another operation is not measured. Spreading each operation over the whole run
/// means drifting machine conditions (other load, CPU steal) fall on every row
/// alike, which keeps the ratios between rows meaningful.
fn measure(n: usize, rng: &mut StdRng, ops: &mut [Op<'_>]) -> Result<Vec<Vec<Duration>>> {
    let mut out = vec![Vec::with_capacity(n); ops.len()];
    let mut next = vec![0usize; ops.len()];
    for (op, i) in ops.iter_mut().zip(&mut next) {
        for _ in 0..WARMUP {
            op(*i)?;
            *i += 1;
        }
    }
    let per_block = n.div_ceil(BLOCKS);
    let mut order: Vec<usize> = (0..ops.len()).collect();
    let started = Instant::now();
    for pass in 0..BLOCKS {
        order.shuffle(rng);
        for &j in &order {
            for _ in 0..LEAD_IN {
                ops[j](next[j])?;
                next[j] += 1;
            }
            let take = per_block.min(n - out[j].len());
            for _ in 0..take {
                out[j].push(ops[j](next[j])?);
                next[j] += 1;
            }
        }
        println!(
            "  pass {}/{BLOCKS} done ({:.1} s)",
            pass + 1,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(out)
}

/// `GET url`, timed from send to the last body byte; fails unless 200.
async fn get(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
) -> Result<(Duration, Vec<u8>)> {
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let t = Instant::now();
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
    let elapsed = t.elapsed();
    if status != reqwest::StatusCode::OK {
        bail!(
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok((elapsed, body.to_vec()))
}

/// `GET url` of a JSON answer: its timing, the parsed body and its size.
async fn get_json(
    client: &reqwest::Client,
    url: &str,
    key: &str,
) -> Result<(Duration, Value, usize)> {
    let (t, body) = get(client, url, Some(key)).await?;
    let v = serde_json::from_slice(&body)
        .with_context(|| format!("GET {url}: the body is not JSON"))?;
    Ok((t, v, body.len()))
}

/// Checks an HTTP list page holds exactly `expected`, in order; returns its cursor.
fn check_page(page: &Value, expected: &[String]) -> Result<Option<String>> {
    let data = page["data"]
        .as_array()
        .context("list answer has no `data` array")?;
    ensure!(
        data.len() == expected.len(),
        "list page has {} items, expected {}",
        data.len(),
        expected.len()
    );
    for (item, id) in data.iter().zip(expected) {
        ensure!(
            item["id"].as_str() == Some(id.as_str()),
            "list page item {} is not the expected {id}",
            item["id"]
        );
    }
    Ok(page["pagination"]["next_cursor"]
        .as_str()
        .map(str::to_owned))
}

/// Checks a store page holds exactly `expected`, in order.
fn check_store_page(
    page: &hangar_store::Page<hangar_core::model::Instance>,
    expected: &[String],
) -> Result<()> {
    ensure!(
        page.items.len() == expected.len(),
        "store page has {} items, expected {}",
        page.items.len(),
        expected.len()
    );
    for (item, id) in page.items.iter().zip(expected) {
        ensure!(
            &item.id == id,
            "store page item {} is not the expected {id}",
            item.id
        );
    }
    Ok(())
}

/// The IDs of the page starting at `start`.
fn page_at(ids_desc: &[String], start: usize) -> &[String] {
    &ids_desc[start..(start + PAGE).min(ids_desc.len())]
}

/// One row of the results.
struct Row {
    name: String,
    /// Sorted samples, in ms.
    ms: Vec<f64>,
    /// Index of the row this one is compared against (the store call).
    baseline: Option<usize>,
    /// Whether the row is an HTTP request (compared against `/healthz`).
    http: bool,
}

impl Row {
    fn new(name: &str, samples: &[Duration], baseline: Option<usize>, http: bool) -> Self {
        let ms = sorted_ms(samples);
        Row {
            name: name.to_owned(),
            ms,
            baseline,
            http,
        }
    }

    fn p(&self, pct: f64) -> f64 {
        percentile(&self.ms, pct)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.instances as usize > PAGE,
        "--instances must be more than {PAGE} (a list needs a second page)"
    );
    ensure!(args.requests >= 1, "--requests must be at least 1");

    // Declared first so it is dropped last, after the runtimes and the store.
    let (url, _tmp) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = TempDir::new("cp")?;
            let url = format!("sqlite://{}", dir.0.join("bench.db").display());
            (url, Some(dir))
        }
    };

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-server")
        .enable_all()
        .build()
        .context("building the server runtime")?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;

    println!(
        "Seeding {} instances ({})…",
        args.instances,
        if args.database_url.is_some() {
            "the given database"
        } else {
            "fresh SQLite file in a temporary directory"
        }
    );
    let fx = server_rt.block_on(seed(&url, args.instances))?;
    let n = fx.ids_desc.len();

    // The real application, on the server runtime.
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    let (intake, _) = server_rt
        .block_on(async { hangar_store::JobIntake::start(fx.store.clone(), Default::default()) });
    let app = hangar_api::app(AppState::from(Services {
        intake,
        kubernetes: None,
        hops: None,
        no_agents_reason: None,
        store: fx.store.clone(),
        config: Arc::new(ApiConfig {
            node_dead_after: Duration::from_secs(15),
            uploads_dir: None,
            blobs: None,
            max_upload_bytes: 0,
            cors_origins: Vec::new(),
            base_domain: "localhost".into(),
            public_port: addr.port(),
            public_url: format!("http://{addr}"),
            max_body_bytes: 2 << 20,
            upload_ttl: Duration::from_secs(3600),
            signing_key: Sealer::generate_key().to_vec(),
            // On, as in production (its cost is part of every figure), but
            // never reached by the load.
            rate_limit: Some(hangar_api::RateLimit {
                count: std::num::NonZeroU32::MAX,
                unit: Duration::from_secs(1),
                burst: std::num::NonZeroU32::MAX,
            }),
        }),
        runtime: None,
        builder: None,
        gateway: None,
        deliverer: None,
        jobs: None,
    }));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    println!(
        "Serving on http://{addr}; per operation {WARMUP} warm-up + {} timed calls in {BLOCKS} blocks",
        args.requests
    );

    let mut rng = StdRng::seed_from_u64(args.seed);
    let calls = calls_per_op(args.requests);
    let id_picks: Vec<usize> = (0..calls).map(|_| rng.gen_range(0..n)).collect();
    // Page k starts at k·PAGE; pick pages after the first (there are at least two).
    let pages = n.div_ceil(PAGE);
    let page_picks: Vec<usize> = (0..calls).map(|_| rng.gen_range(1..pages)).collect();

    let base = format!("http://{addr}");
    let healthz_url = format!("{base}/healthz");
    let list_url = format!("{base}/instances/by_org_id/{}?limit={PAGE}", fx.org_id);
    let key = fx.key.as_str();
    let ids = &fx.ids_desc;
    let store = &fx.store;
    let org = fx.org_id.as_str();
    let filter = InstanceFilter::default();
    let client = client_rt.block_on(async {
        reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()
    })?;

    // One full walk first: checks every instance is listed exactly once, in order,
    // and collects the server's cursors (cursors[k] opens page k + 1).
    let cursors = client_rt.block_on(async {
        let mut cursors = Vec::with_capacity(pages);
        let mut next: Option<String> = None;
        for k in 0..pages {
            let url = match &next {
                None => list_url.clone(),
                Some(c) => format!("{list_url}&cursor={c}"),
            };
            let (_, page, _) = get_json(&client, &url, key).await?;
            next = check_page(&page, page_at(ids, k * PAGE))?;
            match &next {
                Some(c) => cursors.push(c.clone()),
                None => ensure!(
                    k + 1 == pages,
                    "the walk ended at page {} of {pages}",
                    k + 1
                ),
            }
        }
        ensure!(next.is_none(), "the last page still has a next_cursor");
        anyhow::Ok(cursors)
    })?;
    println!("Walked all {pages} pages over HTTP: every instance listed once, in order");

    let get_urls: Vec<String> = id_picks
        .iter()
        .map(|&i| format!("{base}/instances/{}", ids[i]))
        .collect();
    let cursor_urls: Vec<String> = page_picks
        .iter()
        .map(|&k| format!("{list_url}&cursor={}", cursors[k - 1]))
        .collect();
    let (get_bytes, list_bytes) = (Cell::new(0), Cell::new(0));
    let (crt, srt) = (&client_rt, &server_rt);
    let client = &client;

    // The operations, in the order of the rows they become (see `report`).
    let (mut s_at, mut s_next) = (0usize, None::<String>);
    let (mut h_at, mut h_next) = (0usize, None::<String>);
    let mut ops: Vec<Op<'_>> = vec![
        // Store: the in-process baseline, on the server's runtime.
        Box::new(|_| {
            srt.block_on(async {
                let t = Instant::now();
                let p = store.authenticate(key).await?;
                let t = t.elapsed();
                ensure!(
                    p.is_some_and(|p| p.organization_id == org),
                    "the key does not authenticate"
                );
                Ok(t)
            })
        }),
        Box::new(|i| {
            srt.block_on(async {
                let want = &ids[id_picks[i]];
                let t = Instant::now();
                let inst = store.get_instance(org, want).await?;
                let t = t.elapsed();
                ensure!(inst.is_some_and(|x| &x.id == want), "the store lost {want}");
                Ok(t)
            })
        }),
        Box::new(|_| {
            srt.block_on(async {
                let t = Instant::now();
                let page = store
                    .list_instances(org, &filter, None, PAGE as u32)
                    .await?;
                let t = t.elapsed();
                check_store_page(&page, page_at(ids, 0))?;
                Ok(t)
            })
        }),
        Box::new(|i| {
            srt.block_on(async {
                let start = page_picks[i] * PAGE;
                let after = ids[start - 1].as_str();
                let t = Instant::now();
                let page = store
                    .list_instances(org, &filter, Some(after), PAGE as u32)
                    .await?;
                let t = t.elapsed();
                check_store_page(&page, page_at(ids, start))?;
                Ok(t)
            })
        }),
        // Follows next_cursor page after page, starting over after the last.
        Box::new(|_| {
            srt.block_on(async {
                let t = Instant::now();
                let page = store
                    .list_instances(org, &filter, s_next.as_deref(), PAGE as u32)
                    .await?;
                let t = t.elapsed();
                check_store_page(&page, page_at(ids, s_at))?;
                s_next = page.next_cursor;
                s_at = if s_next.is_some() { s_at + PAGE } else { 0 };
                Ok(t)
            })
        }),
        // HTTP, from the client's runtime.
        Box::new(|_| {
            crt.block_on(async {
                let (t, body) = get(client, &healthz_url, None).await?;
                ensure!(
                    body == b"ok",
                    "/healthz answered {}",
                    String::from_utf8_lossy(&body)
                );
                Ok(t)
            })
        }),
        Box::new(|i| {
            crt.block_on(async {
                let (t, v, size) = get_json(client, &get_urls[i], key).await?;
                let want = &ids[id_picks[i]];
                ensure!(
                    v["id"].as_str() == Some(want.as_str()),
                    "GET {want} answered {}",
                    v["id"]
                );
                ensure!(
                    v["organization_id"].as_str() == Some(org),
                    "wrong organization"
                );
                get_bytes.set(size);
                Ok(t)
            })
        }),
        Box::new(|_| {
            crt.block_on(async {
                let (t, v, size) = get_json(client, &list_url, key).await?;
                check_page(&v, page_at(ids, 0))?;
                list_bytes.set(size);
                Ok(t)
            })
        }),
        Box::new(|i| {
            crt.block_on(async {
                let (t, v, _) = get_json(client, &cursor_urls[i], key).await?;
                check_page(&v, page_at(ids, page_picks[i] * PAGE))?;
                Ok(t)
            })
        }),
        Box::new(|_| {
            crt.block_on(async {
                let url = match &h_next {
                    None => list_url.clone(),
                    Some(c) => format!("{list_url}&cursor={c}"),
                };
                let (t, v, _) = get_json(client, &url, key).await?;
                h_next = check_page(&v, page_at(ids, h_at))?;
                h_at = if h_next.is_some() { h_at + PAGE } else { 0 };
                Ok(t)
            })
        }),
    ];
    let ticks = cpu_ticks();
    let samples = measure(args.requests, &mut rng, &mut ops)?;
    let steal = steal_percent(ticks, cpu_ticks());
    drop(ops);
    // Closes the client's keep-alive connection, so the server can drain.
    drop(client_rt);

    // --- Shut down ----------------------------------------------------------------
    let _ = stop_tx.send(());
    server_rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(joined) => joined.context("the server task failed")?.context("serving"),
            Err(_) => bail!("the server did not shut down within 10 s"),
        }
    })?;
    server_rt.block_on(fx.store.close());
    drop(server_rt);

    report(
        &samples,
        n,
        args.requests,
        get_bytes.get(),
        list_bytes.get(),
        steal,
    );
    Ok(())
}

/// Row names, in the order of the operations in `main`, with the row each HTTP
/// row is compared against.
const ROWS: [(&str, Option<usize>); 10] = [
    ("store: authenticate (every API request does this)", None),
    ("store: get_instance", None),
    ("store: list_instances, first page of 50", None),
    (
        "store: list_instances, page of 50 after a random cursor",
        None,
    ),
    ("store: list_instances, following next_cursor", None),
    ("HTTP: GET /healthz (no auth, no database)", None),
    ("HTTP: GET /instances/{id}", Some(1)),
    (
        "HTTP: GET /instances/by_org_id/{org}?limit=50, first page",
        Some(2),
    ),
    ("HTTP: list, page of 50 after a random cursor", Some(3)),
    ("HTTP: list, following next_cursor", Some(4)),
];
/// The `/healthz` row.
const HEALTHZ: usize = 5;
/// The `GET /instances/{id}` row.
const HTTP_GET: usize = 6;
/// The HTTP list rows.
const HTTP_LISTS: [usize; 3] = [7, 8, 9];

/// Prints the table and the verdict.
fn report(
    samples: &[Vec<Duration>],
    n: usize,
    requests: usize,
    get_bytes: usize,
    list_bytes: usize,
    steal: Option<f64>,
) {
    let rows: Vec<Row> = ROWS
        .iter()
        .zip(samples)
        .map(|(&(name, baseline), s)| Row::new(name, s, baseline, name.starts_with("HTTP")))
        .collect();
    let floor = rows[HEALTHZ].p(99.0);
    println!();
    println!(
        "{n} instances; per operation {requests} timed calls after {WARMUP} warm-up calls, in \
         {BLOCKS} blocks spread over the run (each after {LEAD_IN} untimed calls); sequential \
         requests on one keep-alive connection."
    );
    match steal {
        Some(p) => println!(
            "CPU time stolen by the hypervisor while timing: {p:.1}% (tail latencies grow with it)."
        ),
        None => println!("CPU steal while timing: unknown (no /proc/stat)."),
    }
    println!("Response sizes: GET /instances/{{id}} {get_bytes} bytes, list page of 50 {list_bytes} bytes.");
    println!();
    println!(
        "| operation | p50 ms | p90 ms | p99 ms | max ms | p99 ÷ store p99 | p99 ÷ /healthz p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rows.iter().enumerate() {
        let vs_store = r.baseline.map_or("—".to_owned(), |b| {
            format!("{:.1}×", r.p(99.0) / rows[b].p(99.0))
        });
        let vs_floor = if r.http && i != HEALTHZ {
            format!("{:.1}×", r.p(99.0) / floor)
        } else {
            "—".to_owned()
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {vs_store} | {vs_floor} |",
            r.name,
            r.p(50.0),
            r.p(90.0),
            r.p(99.0),
            r.ms.last().copied().unwrap_or(0.0)
        );
    }

    let get_p99 = rows[HTTP_GET].p(99.0);
    let (worst, list_p99) = HTTP_LISTS
        .iter()
        .map(|&i| (i, rows[i].p(99.0)))
        .fold((HTTP_LISTS[0], 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let get_ok = get_p99 <= GET_TARGET_MS;
    let list_ok = list_p99 <= LIST_TARGET_MS;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let scale_note = if n == TARGET_INSTANCES as usize {
        String::new()
    } else {
        format!(" (stated for {TARGET_INSTANCES} instances; this run has {n})")
    };
    println!();
    println!(
        "Targets{scale_note}: GET /instances/{{id}} p99 {get_p99:.3} ms ≤ {GET_TARGET_MS} ms: {}; \
         list page of 50 p99 {list_p99:.3} ms (worst list row: {}) ≤ {LIST_TARGET_MS} ms: {}. {}",
        verdict(get_ok),
        rows[worst].name.trim_start_matches("HTTP: "),
        verdict(list_ok),
        if get_ok && list_ok {
            "All targets met."
        } else {
            "Targets NOT met."
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_clipped_at_the_end() {
        let ids: Vec<String> = (0..120).map(|i| format!("inst_{i:03}")).collect();
        assert_eq!(page_at(&ids, 0).len(), PAGE);
        assert_eq!(page_at(&ids, 100).len(), 20);
    }
}
