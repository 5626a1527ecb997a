//! Fresh databases for tests, on every backend the machine has.
//!
//! SQLite always (a file in the temp dir, removed on drop). PostgreSQL when
//! `HANGAR_TEST_POSTGRES_URL` names a server where the user may create databases:
//! each test gets a database of its own, dropped on drop. With `CI=true` and no
//! PostgreSQL URL the harness panics, so CI cannot pass by testing SQLite alone.

use std::path::PathBuf;

use sqlx::{Connection, Executor};

use crate::seal::Sealer;
use crate::{Backend, Store};

/// A store on a throwaway database; dropping it removes the database.
pub struct TestDb {
    /// The store.
    pub store: Store,
    /// Its connection URL (to start a server on the same database).
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Database { admin_url: String, name: String },
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The backends tests run on here: SQLite, and PostgreSQL when configured.
///
/// # Panics
/// With `CI=true` and no `HANGAR_TEST_POSTGRES_URL`.
#[must_use]
#[allow(
    clippy::disallowed_methods,
    reason = "test support: CI=true makes a missing PostgreSQL a failure, not a skip"
)]
pub fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Sqlite];
    if postgres_admin_url().is_some() {
        b.push(Backend::Postgres);
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but HANGAR_TEST_POSTGRES_URL is not set: the PostgreSQL half of the suite would not run");
    }
    b
}

#[allow(
    clippy::disallowed_methods,
    reason = "test support: where the test PostgreSQL is, as CI sets it"
)]
fn postgres_admin_url() -> Option<String> {
    std::env::var("HANGAR_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

fn unique_name() -> String {
    hangar_core::id::new_id(hangar_core::id::IdKind::Request).replace("req_", "hangar_test_")
}

/// Runs `test` once on each of [`backends`], each time on a fresh
/// database: its store and its URL (for [`second_store`], or a server
/// started on the same database).
pub async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Store, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in backends() {
        let db = TestDb::new(backend).await;
        test(db.store.clone(), db.url.clone()).await;
    }
}

/// Another server's store on the database at `url`: a pool of its own (so
/// two servers race as they would), with a key of its own.
///
/// # Panics
/// When it cannot connect: a test cannot go on without it.
pub async fn second_store(url: &str) -> Store {
    Store::connect(
        url,
        Sealer::new(&Sealer::generate_key()).expect("32-byte key"),
    )
    .await
    .expect("a second store on the test database")
}

impl TestDb {
    /// A fresh, migrated database on `backend`.
    ///
    /// # Panics
    /// When the database cannot be created: a test cannot go on without it.
    pub async fn new(backend: Backend) -> Self {
        let sealer = Sealer::new(&Sealer::generate_key()).expect("32-byte key");
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{}.db", unique_name()));
                let url = format!("sqlite://{}", path.display());
                let store = Store::connect(&url, sealer)
                    .await
                    .expect("sqlite test database");
                TestDb {
                    store,
                    url,
                    cleanup: Cleanup::File(path),
                }
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url().expect("HANGAR_TEST_POSTGRES_URL");
                let name = unique_name();
                sqlx::any::install_default_drivers();
                let mut admin = sqlx::AnyConnection::connect(&admin_url)
                    .await
                    .expect("connect to HANGAR_TEST_POSTGRES_URL");
                admin
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let mut url =
                    url::Url::parse(&admin_url).expect("HANGAR_TEST_POSTGRES_URL is a URL");
                url.set_path(&format!("/{name}"));
                let url = url.to_string();
                let store = Store::connect(&url, sealer)
                    .await
                    .expect("postgres test database");
                TestDb {
                    store,
                    url,
                    cleanup: Cleanup::Database { admin_url, name },
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Cleanup::Database { admin_url, name } => {
                // An async connection on a thread of its own, so Drop works inside or
                // outside a runtime. The pool is not closed here: its connections
                // belong to the test's runtime, which is blocked in this Drop (closing
                // them from here can hang); FORCE ends them on the server side.
                let (admin_url, name) = (admin_url.clone(), name.clone());
                let _ = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async move {
                        if let Ok(mut admin) = sqlx::AnyConnection::connect(&admin_url).await {
                            let _ = admin
                                .execute(
                                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                                )
                                .await;
                        }
                    });
                })
                .join();
            }
        }
    }
}
