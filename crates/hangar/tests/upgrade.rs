//! `hangar serve --migrate-only`, the first step of an upgrade: it brings
//! the database's schema to this build's and exits, creating nothing else —
//! no organization, no key, no node — on SQLite (in a fresh data dir) and on
//! PostgreSQL (`HANGAR_TEST_POSTGRES_URL`; with `CI=true` its absence fails).

use std::process::Command;

use sqlx::{Connection, Row};

mod common;

fn migrate_only(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["serve", "--migrate-only"])
        .args(args)
        .env_remove("HANGAR_ADMIN_KEY")
        .output()
        .expect("run hangar serve --migrate-only");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Rows of `table` in the database at `url`.
async fn count(url: &str, table: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(url).await.expect("connect");
    let n = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(&mut connection)
        .await
        .expect("count")
        .try_get::<i64, _>("n")
        .expect("n");
    connection.close().await.ok();
    n
}

fn migrations() -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hangar-store/migrations");
    std::fs::read_dir(dir)
        .expect("migrations")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count()
}

#[tokio::test]
async fn migrate_only_applies_the_schema_and_creates_nothing_else() {
    let dir = common::temp("upgrade");
    let data_dir = dir.join("data");
    let data = data_dir.to_str().expect("utf-8");

    let first = migrate_only(&["--data-dir", data]);
    assert!(first.contains("applied 1, 2,"), "{first}");
    let url = format!("sqlite://{}/hangar.db", data_dir.display());
    assert_eq!(count(&url, "_sqlx_migrations").await, migrations() as i64);
    assert_eq!(count(&url, "organizations").await, 0);
    assert_eq!(count(&url, "nodes").await, 0);
    let mut made: Vec<String> = std::fs::read_dir(&data_dir)
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("hangar.db"))
        .collect();
    made.sort();
    assert!(made.is_empty(), "only the database is made: {made:?}");

    let again = migrate_only(&["--data-dir", data]);
    assert!(again.contains("nothing to apply"), "{again}");

    for backend in hangar_store::testing::backends() {
        if backend != hangar_store::Backend::Postgres {
            continue;
        }
        // A database `connect` migrated: nothing to apply, nothing made.
        let db = hangar_store::testing::TestDb::new(backend).await;
        let said = migrate_only(&["--data-dir", data, "--database-url", &db.url]);
        assert!(said.contains("nothing to apply"), "{said}");
        assert_eq!(count(&db.url, "organizations").await, 0);
        assert_eq!(count(&db.url, "nodes").await, 0);
    }
    std::fs::remove_dir_all(&dir).ok();
}
