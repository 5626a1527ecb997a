//! Point reads on SQLite that skip the pool: the reads every API request
//! makes (an agent by ID) on a few connections of their own, with typed
//! SQLite rows instead of the `Any` driver's.
//!
//! Why: on SQLite each query is a hand-off to the connection's worker thread
//! and back, and sqlx's pool adds a second one on every release (a ping,
//! unconditional in sqlx 0.8) plus a task to run it; and the `Any` driver
//! copies every value of a row once more into its own row. For a point read
//! those costs were most of the read. Here a read locks one of
//! [`CONNECTIONS`] connections, runs its statement (cached per connection)
//! and unlocks it: one hand-off, no ping, no conversion.
//!
//! What it is not: a second way to write. Only `SELECT`s run here, outside
//! any transaction, so they see every write committed before they start, on
//! whatever connection it was made (WAL: readers never wait for the writer).
//! A read whose caller went away leaves the connection usable: its worker
//! finishes the statement and the next read queues behind it. On PostgreSQL
//! there is none of this; its reads go through the pool.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, MutexGuard};

use crate::Result;

/// Connections for point reads: enough that requests on every core of a
/// small server rarely wait for one another, few enough that each stays hot
/// (its statements prepared, its worker thread recently run).
pub(crate) const CONNECTIONS: usize = 4;

/// The point-read connections of one SQLite database. A connection is
/// `None` once [`PointReads::close`] has closed it.
pub(crate) struct PointReads {
    connections: Vec<Mutex<Option<SqliteConnection>>>,
    /// Where a read that found every connection busy queues (round robin).
    next: AtomicUsize,
}

impl PointReads {
    /// Opens the connections to the database at `url` (already created and
    /// migrated by the pool), with the pool's read settings.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .busy_timeout(Duration::from_secs(5))
            .pragma("mmap_size", "1073741824");
        let mut connections = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            connections.push(Mutex::new(Some(options.connect().await?)));
        }
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    /// A free connection, or the next one in turn once it is free.
    async fn connection(&self) -> MutexGuard<'_, Option<SqliteConnection>> {
        for connection in &self.connections {
            if let Ok(free) = connection.try_lock() {
                return free;
            }
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[turn].lock().await
    }

    /// The one row `sql` selects with `binds` as `$1…`, if any.
    pub(crate) async fn fetch_optional(
        &self,
        sql: &str,
        binds: &[&str],
    ) -> Result<Option<SqliteRow>> {
        let mut connection = self.connection().await;
        let connection = connection.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        let mut query = sqlx::query(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        Ok(query.fetch_optional(connection).await?)
    }

    /// Closes every connection, waiting for reads running on them.
    pub(crate) async fn close(&self) {
        for connection in &self.connections {
            if let Some(connection) = connection.lock().await.take() {
                // Closing a SQLite connection only fails when its worker is
                // gone already; there is nothing left to release then.
                let _ = connection.close().await;
            }
        }
    }
}
