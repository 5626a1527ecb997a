//! Hangar's persistence: one schema, one set of migrations and one code path on
//! SQLite (the embedded default, WAL) and PostgreSQL, through sqlx's `Any` driver.
//!
//! The store keeps facts — what users asked for and what the runtime observed — and
//! never derives a status (that is `hangar_core::status`). Every query is scoped by
//! organization, so a caller cannot read another tenant's rows by guessing an ID.
//! Writes that must hold together (an instance and its quota slot, an agent and its
//! first build) happen in one transaction.
//!
//! # Layout
//! - [`Store`]: the pool, connecting and migrating.
//! - `tenancy`: organizations, users, API keys, clouds.
//! - `agents`: agents (blueprints).
//! - `builds`: builds, the build queue (claimed under a builder's lease,
//!   queued again when the builder falls silent) and build logs.
//! - `instances`: instances and the instance quota.
//! - `jobs`: the durable job queue (accept, claim under a lease, renew,
//!   finish, reclaim, cancel).
//! - [`JobIntake`]: group commit of accepted jobs (one transaction per batch).
//! - `extras`: uploads, secrets, webhooks.
//! - `runtime`: what the runtime controller reads and records: the instances to
//!   act on, their replicas' logs and each replica's log cursor.
//! - `nodes`: the servers on this database and their heartbeats.
//! - `leases`: which node runs each instance (a lease with a fencing
//!   generation).
//! - [`Backlog`]: counts of work waiting, for metrics.
//! - `sessions`: sticky sessions (which replica serves a caller's session,
//!   its requests and when it was last active).
//! - `requests`: invocations per instance, minute and node, summed by
//!   readers over every node.
//! - `history`: the rest of each minute's figures (latency histograms,
//!   CPU, memory) and the series of steps read from them.
//! - `reads`: the point reads every request makes, on SQLite outside the
//!   pool, on the request's own thread (no hand-off, rows read in place).
//! - [`seal`]: encryption at rest for secret values; the fingerprint of the
//!   key every server on one database must share.
//! - [`blobs`]: uploads' archives and build artifacts, in the data dir or in
//!   the database, behind one trait.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hangar_core::id::IdKind;
use hangar_core::model::Timestamp;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Row};

mod agents;
mod backlog;
pub mod blobs;
mod builds;
mod events;
mod extras;
mod history;
mod instances;
mod intake;
mod jobs;
mod leases;
mod nodes;
mod reads;
mod requests;
mod runtime;
pub mod seal;
mod sessions;
mod tenancy;
#[cfg(feature = "testing")]
pub mod testing;

pub use agents::{AgentSummary, InstanceSummary, NewAgent};
pub use backlog::Backlog;
pub use builds::{Reclaimed, MAX_BUILD_ATTEMPTS};
pub use events::{Attempt, DueDelivery};
pub use extras::NewWebhook;
pub use history::{
    LatencyHistogram, MinuteFigures, ResourceUse, SeriesSpan, StepFigures, LATENCY_BOUNDS_US,
    LATENCY_BUCKETS,
};
pub use instances::{InstanceFilter, NewInstance};
pub use intake::JobIntake;
pub use jobs::{job_error, JobOutcome, JobResult, NewJob, DEFAULT_JOB_TIMEOUT, SYNC_LEASE_MARGIN};
pub use leases::{InstanceLease, LeaseHolder, LeaseOf, LeaseTerms};
pub use nodes::{store_now, Node, NodeBeat, NodeStatus};
pub use requests::{RequestCounts, RequestMinute};
pub use runtime::{ControlledInstance, LogFilter, LogQuery};
pub use sessions::{Session, SessionVisit};
pub use tenancy::{hash_key, Bootstrap, NewApiKey, NewOrganization, Principal};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is already used.
    #[error("{what:?} name '{name}' is already taken")]
    NameTaken {
        /// Kind of object.
        what: IdKind,
        /// The name.
        name: String,
    },
    /// An object the operation depends on is gone (deleted meanwhile, or never
    /// there).
    #[error("{what:?} '{id}' not found")]
    NotFound {
        /// Kind of object.
        what: IdKind,
        /// Its ID.
        id: String,
    },
    /// The organization's instance quota is used up.
    #[error("organization has reached its maximum of {max} instances")]
    QuotaExceeded {
        /// Instances it has.
        current: u32,
        /// Instances it may have.
        max: u32,
    },
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("stored {what} is not readable: {detail}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Sealing or unsealing a secret failed.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A point read on SQLite failed (see `reads`).
    #[error("database error: {0}")]
    Read(#[from] rusqlite::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// `url`, made to create a SQLite file on first start (unless it says a
/// mode of its own).
fn creating(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") {
        format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
    } else {
        url.to_owned()
    }
}

/// The schema's migrations. A database that a newer Hangar migrated
/// further is used as it is: during a rolling upgrade servers of the
/// version before run beside the new ones, and every migration is
/// backward compatible with the version before it (additive only: see
/// `tests/migrations.rs`, which checks it). Without this, sqlx would refuse
/// to start on a database with migrations it does not know.
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Versions applied by this call, oldest first.
    pub applied: Vec<i64>,
    /// The database's schema version now.
    pub version: i64,
    /// The newest version this build knows.
    pub latest: i64,
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One page of a list, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Whether more items follow.
    pub has_more: bool,
    /// The ID to pass as `after` for the next page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says more exist.
    fn from_overfetch(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> &str) -> Self {
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if has_more {
            items.last().map(|t| id(t).to_owned())
        } else {
            None
        };
        Page {
            items,
            has_more,
            next_cursor,
        }
    }
}

/// How long a pooled connection may sit idle and still be handed out
/// without a ping first.
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Most rows in one multi-row `INSERT` (PostgreSQL takes at most 65,535
/// parameters per statement, SQLite 32,766).
pub(crate) const INSERT_CHUNK: usize = 256;

/// `($1, …, $cols), ($cols+1, …), …` for `rows` rows of a multi-row `INSERT`.
pub(crate) fn value_rows(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let row = (1..=cols)
                .map(|c| format!("${}", r * cols + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The store: a connection pool and the key that seals secrets.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Shared: the store is cloned into every request's state, and the
    /// cipher wipes its key on drop.
    sealer: Arc<seal::Sealer>,
    /// Keys that authenticated lately (see [`tenancy::KeyCache`]).
    keys: Arc<tenancy::KeyCache>,
    /// On SQLite, the connections of [`Store::point_read`].
    reads: Option<Arc<reads::PointReads>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`), applies pragmas on SQLite,
    /// and runs the migrations.
    pub async fn connect(url: &str, sealer: seal::Sealer) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = creating(url);
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection it hands out by default: a round
            // trip per query (to PostgreSQL, or to SQLite's worker thread)
            // that cost a point read as much as the read. A connection that
            // was in use a moment ago is trusted; one idle for longer (the
            // database may have restarted meanwhile) is still pinged, and
            // replaced if it does not answer.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= TRUSTED_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; NORMAL sync is
                        // durable across process crashes in WAL mode; busy_timeout
                        // queues writers instead of failing them. A connection drops
                        // its page cache whenever another one wrote, so pages are
                        // read through a shared mapping of the file instead of
                        // copied in by a read call each time.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA mmap_size = 1073741824",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = options.connect(&url).await?;
        migrator().run(&pool).await?;
        let reads = match backend {
            Backend::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
                Some(Arc::new(reads::PointReads::open(options.get_filename())?))
            }
            Backend::Postgres => None,
        };
        Ok(Self {
            pool,
            backend,
            sealer: Arc::new(sealer),
            keys: Arc::default(),
            reads,
        })
    }

    /// Applies the migrations `url`'s database lacks and nothing else (no
    /// organization, no key, no point-read connections): for upgrading a
    /// database before servers of the new version start on it. Answers the
    /// versions applied now and the schema's version after.
    pub async fn migrate(url: &str) -> Result<Migrated> {
        use sqlx::migrate::Migrate;
        sqlx::any::install_default_drivers();
        let url = creating(url);
        let migrator = migrator();
        let mut connection = sqlx::AnyConnection::connect(&url).await?;
        connection.ensure_migrations_table().await?;
        let before: std::collections::HashSet<i64> = connection
            .list_applied_migrations()
            .await?
            .iter()
            .map(|m| m.version)
            .collect();
        migrator.run(&mut connection).await?;
        let after = connection.list_applied_migrations().await?;
        connection.close().await?;
        Ok(Migrated {
            applied: after
                .iter()
                .map(|m| m.version)
                .filter(|v| !before.contains(v))
                .collect(),
            version: after.iter().map(|m| m.version).max().unwrap_or(0),
            latest: migrator.iter().map(|m| m.version).max().unwrap_or(0),
        })
    }

    /// Which database this is.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        if let Some(reads) = &self.reads {
            reads.close();
        }
        self.pool.close().await;
    }

    /// The one row `sql` selects with `binds` as `$1…`, decoded, if there
    /// is one: for reads by key that every request makes. On SQLite it runs
    /// on the point-read connections (see [`reads`]), elsewhere on the pool.
    pub(crate) async fn point_read<T: FromRow>(
        &self,
        sql: &str,
        binds: &[&str],
    ) -> Result<Option<T>> {
        if let Some(reads) = &self.reads {
            // Busy: the pool below waits for SQLite without holding a thread.
            if let Ok(read) = reads.read(sql, binds) {
                return read;
            }
        }
        let mut query = sqlx::query(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        query
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(|row| T::from_row(row))
            .transpose()
    }
}

/// A value read from one row, on any backend.
pub(crate) trait FromRow: Sized {
    fn from_row(row: &impl RowExt) -> Result<Self>;
}

/// Now, in the store's unit (milliseconds).
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) fn to_ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> Timestamp {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Typed column access with errors that name the column, on the rows of
/// every driver the store reads through: the pool's `Any` rows and the
/// typed SQLite rows of [`reads`].
pub(crate) trait RowExt {
    fn text(&self, col: &'static str) -> Result<String>;
    fn opt_text(&self, col: &'static str) -> Result<Option<String>>;
    /// The text without copying it out of the row, for values that are
    /// parsed rather than kept.
    fn str(&self, col: &'static str) -> Result<&str>;
    fn opt_str(&self, col: &'static str) -> Result<Option<&str>>;
    fn int(&self, col: &'static str) -> Result<i64>;
    fn opt_int(&self, col: &'static str) -> Result<Option<i64>>;
    fn time(&self, col: &'static str) -> Result<Timestamp> {
        Ok(from_ms(self.int(col)?))
    }
    fn opt_time(&self, col: &'static str) -> Result<Option<Timestamp>> {
        Ok(self.opt_int(col)?.map(from_ms))
    }
    fn flag(&self, col: &'static str) -> Result<bool> {
        Ok(self.int(col)? != 0)
    }
    fn count(&self, col: &'static str) -> Result<u32> {
        let v = self.int(col)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt {
            what: col,
            detail: format!("{v} is out of range"),
        })
    }
    fn parsed<T: FromStr>(&self, col: &'static str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.str(col)?
            .parse()
            .map_err(|e: T::Err| StoreError::Corrupt {
                what: col,
                detail: e.to_string(),
            })
    }
    fn json<T: serde::de::DeserializeOwned>(&self, col: &'static str) -> Result<T> {
        serde_json::from_str(self.str(col)?).map_err(|e| StoreError::Corrupt {
            what: col,
            detail: e.to_string(),
        })
    }
}

impl<R> RowExt for R
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, col: &'static str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &'static str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn str(&self, col: &'static str) -> Result<&str> {
        Ok(self.try_get(col)?)
    }
    fn opt_str(&self, col: &'static str) -> Result<Option<&str>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &'static str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &'static str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
}

/// JSON text of a value the store writes (these types always serialize).
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// Maps a unique-index violation to [`StoreError::NameTaken`].
pub(crate) fn name_taken(err: sqlx::Error, what: IdKind, name: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::NameTaken {
            what,
            name: name.to_owned(),
        },
        _ => StoreError::Database(err),
    }
}

/// A `WHERE` clause of only the filters that are present. A guard such as
/// `($2 IS NULL OR id < $2)` would hide the index range from SQLite's planner, which
/// then scans from the newest row down to the cursor on every page.
pub(crate) struct Conditions {
    sql: String,
    binds: Vec<String>,
}

impl Conditions {
    /// Starts with `column = value`.
    pub(crate) fn new(column: &str, value: &str) -> Self {
        Conditions {
            sql: format!("{column} = $1"),
            binds: vec![value.to_owned()],
        }
    }

    /// Adds a condition with no parameter.
    pub(crate) fn raw(mut self, condition: &str) -> Self {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
        self
    }

    /// Adds `column <op> value` when `value` is present.
    pub(crate) fn cmp(mut self, column: &str, op: &str, value: Option<&str>) -> Self {
        if let Some(v) = value {
            self.binds.push(v.to_owned());
            self.sql
                .push_str(&format!(" AND {column} {op} ${}", self.binds.len()));
        }
        self
    }

    /// Adds `column IN (values)` when `values` is not empty.
    pub(crate) fn any_of(mut self, column: &str, values: &[&str]) -> Self {
        if !values.is_empty() {
            let first = self.binds.len() + 1;
            let list: Vec<String> = (first..first + values.len())
                .map(|i| format!("${i}"))
                .collect();
            self.sql
                .push_str(&format!(" AND {column} IN ({})", list.join(", ")));
            self.binds.extend(values.iter().map(|v| (*v).to_owned()));
        }
        self
    }

    /// Runs `SELECT {select} WHERE <conditions> {tail}`.
    pub(crate) async fn fetch_all(
        &self,
        pool: &AnyPool,
        select: &str,
        tail: &str,
    ) -> Result<Vec<AnyRow>> {
        let sql = format!("SELECT {select} WHERE {} {tail}", self.sql);
        let mut q = sqlx::query(&sql);
        for b in &self.binds {
            q = q.bind(b.as_str());
        }
        Ok(q.fetch_all(pool).await?)
    }
}

/// Rows to fetch for a page of `limit` (clamped to 1..=100): one more, to learn
/// whether another page follows.
pub(crate) fn page_limit(limit: u32) -> u32 {
    limit.clamp(1, 100) + 1
}
