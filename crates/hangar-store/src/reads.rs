//! Point reads on SQLite that skip the pool and its threads: the reads every
//! API request makes (an agent by ID) run on the request's own thread,
//! through rusqlite, on a few connections of their own.
//!
//! Why: sqlx runs each SQLite connection on a worker thread of its own, so
//! a query is a hand-off to that thread and a wake-up back, and its rows
//! copy every value once more. For a point read by key, which SQLite
//! answers in a few microseconds from pages mapped in memory, those
//! hand-offs cost several times the read itself (most of the server's CPU
//! per `GET /v1/agents/{id}` was context switches). Here a read locks a
//! free connection, runs its statement (prepared once per connection) and
//! decodes the row in place: no thread hop, no copy.
//!
//! Why running on the request's thread is safe: only `SELECT`s by key run
//! here, outside any transaction, in WAL mode, where readers never wait for
//! the writer. The connections do not wait for a lock either (no busy
//! timeout): in the rare moments SQLite answers `SQLITE_BUSY` to a reader
//! (another connection recovering the WAL index), [`PointReads::read`] says
//! [`Busy`] and the caller reads through the pool, which waits without
//! holding a thread. A read sees every write committed before it starts, on
//! whatever connection it was made.
//!
//! What it is not: a second way to write. On PostgreSQL there is none of
//! this; its reads go through the pool.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::{FromRow, Result, RowExt, StoreError};

/// Statements each connection keeps prepared: every point read there is,
/// with room to spare.
const PREPARED: usize = 32;

/// The point-read connections of one SQLite database. A connection is
/// `None` once [`PointReads::close`] has closed it.
pub(crate) struct PointReads {
    connections: Vec<Mutex<Option<Connection>>>,
}

/// The database could not start a read at once: read through the pool.
#[derive(Debug)]
pub(crate) struct Busy;

impl PointReads {
    /// Opens the connections to the database file at `path` (already created
    /// and migrated by the pool): one per thread that may run requests at
    /// once, so a read rarely finds every connection taken.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get().max(4));
        let connections = (0..threads)
            .map(|_| Self::connect(path).map(|c| Mutex::new(Some(c))))
            .collect::<Result<_>>()?;
        Ok(Self { connections })
    }

    fn connect(path: &Path) -> Result<Connection> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Never a second way to write; never a wait on the request's thread.
        connection.pragma_update(None, "query_only", true)?;
        connection.busy_timeout(std::time::Duration::ZERO)?;
        // Pages are read through a shared mapping of the file, as on the
        // pool's connections: the page cache is dropped whenever another
        // connection writes.
        connection.pragma_update(None, "mmap_size", 1_073_741_824_i64)?;
        connection.set_prepared_statement_cache_capacity(PREPARED);
        Ok(connection)
    }

    /// A free connection, or else the first one once it is free (its holder
    /// is in the middle of a read of microseconds).
    fn connection(&self) -> MutexGuard<'_, Option<Connection>> {
        for connection in &self.connections {
            if let Ok(free) = connection.try_lock() {
                return free;
            }
        }
        self.connections[0]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The one row `sql` selects with `binds` as `$1…`, decoded, if any;
    /// [`Busy`] when SQLite cannot start the read without waiting.
    pub(crate) fn read<T: FromRow>(
        &self,
        sql: &str,
        binds: &[&str],
    ) -> std::result::Result<Result<Option<T>>, Busy> {
        let connection = self.connection();
        let Some(connection) = connection.as_ref() else {
            return Ok(Err(StoreError::Database(sqlx::Error::PoolClosed)));
        };
        let read = || -> Result<Option<T>> {
            let mut statement = connection.prepare_cached(sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(binds))?;
            match rows.next()? {
                Some(row) => T::from_row(&ReadRow {
                    names: row.as_ref().column_names(),
                    row,
                })
                .map(Some),
                None => Ok(None),
            }
        };
        match read() {
            Err(StoreError::Read(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
            {
                Err(Busy)
            }
            other => Ok(other),
        }
    }

    /// Closes every connection, waiting for reads running on them.
    pub(crate) fn close(&self) {
        for connection in &self.connections {
            // Dropping a connection closes it (finalizing its statements).
            drop(
                connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
        }
    }
}

/// A row of a point read: read in place, each value borrowed from SQLite.
/// Its column names are asked of SQLite once: looking a column up by name
/// in SQLite (a case-insensitive scan of every name, each measured and
/// checked as UTF-8 again) cost more than reading the value.
struct ReadRow<'r, 's> {
    row: &'r rusqlite::Row<'s>,
    names: Vec<&'r str>,
}

/// A column's value, or an error naming the column.
fn value<'r>(row: &'r ReadRow<'_, '_>, col: &'static str) -> Result<ValueRef<'r>> {
    let index = row
        .names
        .iter()
        .position(|name| *name == col)
        .ok_or_else(|| rusqlite::Error::InvalidColumnName(col.to_owned()))?;
    Ok(row.row.get_ref(index)?)
}

fn corrupt(col: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: col,
        detail: e.to_string(),
    }
}

impl RowExt for ReadRow<'_, '_> {
    fn text(&self, col: &'static str) -> Result<String> {
        self.str(col).map(str::to_owned)
    }
    fn opt_text(&self, col: &'static str) -> Result<Option<String>> {
        Ok(self.opt_str(col)?.map(str::to_owned))
    }
    fn str(&self, col: &'static str) -> Result<&str> {
        value(self, col)?.as_str().map_err(|e| corrupt(col, e))
    }
    fn opt_str(&self, col: &'static str) -> Result<Option<&str>> {
        value(self, col)?
            .as_str_or_null()
            .map_err(|e| corrupt(col, e))
    }
    fn int(&self, col: &'static str) -> Result<i64> {
        value(self, col)?.as_i64().map_err(|e| corrupt(col, e))
    }
    fn opt_int(&self, col: &'static str) -> Result<Option<i64>> {
        value(self, col)?
            .as_i64_or_null()
            .map_err(|e| corrupt(col, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in WAL mode with one row, as the pool leaves it.
    fn database(dir: &Path) -> (std::path::PathBuf, Connection) {
        let path = dir.join("reads.db");
        let writer = Connection::open(&path).expect("test database");
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT, note TEXT);
                 INSERT INTO t VALUES ('a', 7, NULL);",
            )
            .expect("test database");
        (path, writer)
    }

    struct Found {
        n: i64,
        note: Option<String>,
    }

    impl FromRow for Found {
        fn from_row(row: &impl RowExt) -> Result<Self> {
            Ok(Self {
                n: row.int("n")?,
                note: row.opt_text("note")?,
            })
        }
    }

    const SQL: &str = "SELECT n, note FROM t WHERE id = $1";

    fn temp_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hangar-reads-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test database");
        dir
    }

    #[test]
    fn a_read_decodes_in_place_and_sees_writes_committed_before_it() {
        let dir = temp_dir("a_read_decodes");
        let (path, writer) = database(&dir);
        let reads = PointReads::open(&path).expect("test database");
        let found: Found = reads
            .read(SQL, &["a"])
            .expect("test database")
            .expect("test database")
            .expect("test database");
        assert_eq!((found.n, found.note), (7, None));
        assert!(reads
            .read::<Found>(SQL, &["b"])
            .expect("test database")
            .expect("test database")
            .is_none());

        writer
            .execute("UPDATE t SET n = 8, note = 'x' WHERE id = 'a'", [])
            .expect("test database");
        let found: Found = reads
            .read(SQL, &["a"])
            .expect("test database")
            .expect("test database")
            .expect("test database");
        assert_eq!((found.n, found.note.as_deref()), (8, Some("x")));
        std::fs::remove_dir_all(dir).expect("test database");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_corrupt_naming_its_column_and_writes_are_refused() {
        let dir = temp_dir("a_value_of_the");
        let (path, writer) = database(&dir);
        writer
            .execute("UPDATE t SET n = 'seven'", [])
            .expect("test database");
        let reads = PointReads::open(&path).expect("test database");
        match reads.read::<Found>(SQL, &["a"]).expect("test database") {
            Err(StoreError::Corrupt { what: "n", .. }) => {}
            Err(e) => panic!("expected Corrupt(n), got {e}"),
            Ok(_) => panic!("expected Corrupt(n), got a row"),
        }
        let write = reads.read::<Found>("DELETE FROM t RETURNING 1 AS n, NULL AS note", &[]);
        assert!(
            matches!(write, Ok(Err(StoreError::Read(_)))),
            "a point-read connection must not write"
        );
        drop(writer);
        assert_eq!(
            Connection::open(&path)
                .expect("test database")
                .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .expect("test database"),
            1
        );
        std::fs::remove_dir_all(dir).expect("test database");
    }

    #[test]
    fn a_read_that_would_wait_for_a_lock_says_busy_instead_of_holding_the_thread() {
        let dir = temp_dir("a_read_that_would");
        let (path, writer) = database(&dir);
        let reads = PointReads::open(&path).expect("test database");
        // A connection in exclusive locking mode keeps every other one out
        // once it has written: readers would have to wait.
        writer
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE t SET n = 9;")
            .expect("test database");
        assert!(reads.read::<Found>(SQL, &["a"]).is_err());
        writer.execute_batch("COMMIT").expect("test database");
        drop(writer);
        let found: Found = reads
            .read(SQL, &["a"])
            .expect("test database")
            .expect("test database")
            .expect("test database");
        assert_eq!(found.n, 9);
        std::fs::remove_dir_all(dir).expect("test database");
    }

    #[test]
    fn a_closed_reader_answers_an_error_not_a_panic() {
        let dir = temp_dir("a_closed_reader");
        let (path, _writer) = database(&dir);
        let reads = PointReads::open(&path).expect("test database");
        reads.close();
        assert!(matches!(
            reads.read::<Found>(SQL, &["a"]),
            Ok(Err(StoreError::Database(_)))
        ));
        std::fs::remove_dir_all(dir).expect("test database");
    }
}
