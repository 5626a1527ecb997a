//! Rolling upgrades: servers of two versions run on one database for a
//! while, so every migration must leave the schema usable by the version
//! before it, and a server must start on a database a newer one migrated.

use hangar_store::seal::Sealer;
use hangar_store::testing::{backends, TestDb};
use hangar_store::Store;
use sqlx::Connection;

/// The statements of a migration file, comments removed, upper-cased and
/// with runs of whitespace made one space.
fn statements(sql: &str) -> Vec<String> {
    let code: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ");
    code.split(';')
        .map(|s| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_uppercase()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why `statement` would break servers of the version before, if it would.
/// `unique_indexes` are the unique indexes made by earlier migrations
/// (dropping one lets the old version write what it relies on not being
/// there).
fn breaks_the_version_before(statement: &str, unique_indexes: &[String]) -> Option<&'static str> {
    if statement.starts_with("DROP TABLE") {
        return Some("drops a table the version before reads");
    }
    if statement.starts_with("ALTER TABLE") {
        if statement.contains(" DROP ") {
            return Some("drops a column the version before reads");
        }
        if statement.contains(" RENAME ") {
            return Some("renames what the version before names");
        }
        if statement.contains(" ALTER COLUMN ") {
            return Some("changes a column the version before writes");
        }
        if statement.contains(" ADD ")
            && statement.contains("NOT NULL")
            && !statement.contains("DEFAULT")
        {
            return Some(
                "adds a NOT NULL column without a default: the version before's inserts fail",
            );
        }
    }
    if let Some(name) = statement.strip_prefix("DROP INDEX ") {
        let name = name.trim_start_matches("IF EXISTS ").trim();
        if unique_indexes.iter().any(|u| u == name) {
            return Some("drops a unique index the version before relies on");
        }
    }
    None
}

#[test]
fn every_migration_is_backward_compatible_with_the_version_before_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations dir")
        .map(|e| e.expect("migration entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 9,
        "the migrations are read from {}",
        dir.display()
    );
    let mut unique_indexes = Vec::new();
    let mut broken = Vec::new();
    for file in &files {
        let sql = std::fs::read_to_string(file).expect("migration file");
        for statement in statements(&sql) {
            if let Some(why) = breaks_the_version_before(&statement, &unique_indexes) {
                broken.push(format!(
                    "{}: {why}: {statement}",
                    file.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
            if let Some(rest) = statement.strip_prefix("CREATE UNIQUE INDEX ") {
                let rest = rest.trim_start_matches("IF NOT EXISTS ");
                unique_indexes.push(rest.split(' ').next().unwrap_or_default().to_owned());
            }
        }
    }
    assert!(
        broken.is_empty(),
        "migrations must be additive (see README, Upgrades); split these over two releases:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_check_catches_what_would_break_the_version_before() {
    let unique = vec!["AGENTS_URL_KEY".to_owned()];
    for (sql, breaks) in [
        ("DROP TABLE agents;", true),
        ("ALTER TABLE agents DROP COLUMN name;", true),
        ("alter table agents rename column name to title;", true),
        ("ALTER TABLE agents ALTER COLUMN name TYPE TEXT;", true),
        ("ALTER TABLE agents ADD COLUMN owner TEXT NOT NULL;", true),
        ("DROP INDEX agents_url_key;", true),
        (
            "ALTER TABLE agents ADD COLUMN owner TEXT NOT NULL DEFAULT '';",
            false,
        ),
        (
            "ALTER TABLE agents ADD COLUMN owner TEXT; -- DROP TABLE x",
            false,
        ),
        ("CREATE TABLE leases (id TEXT PRIMARY KEY);", false),
        ("DROP INDEX jobs_status;", false),
    ] {
        let found = statements(sql)
            .iter()
            .any(|s| breaks_the_version_before(s, &unique).is_some());
        assert_eq!(found, breaks, "{sql}");
    }
}

#[tokio::test]
async fn a_database_a_newer_hangar_migrated_further_still_opens() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        // Nothing left to apply on a database `connect` migrated.
        let again = Store::migrate(&db.url).await.expect("migrate");
        assert!(again.applied.is_empty(), "{backend:?}: {again:?}");
        assert_eq!(again.version, again.latest, "{backend:?}");

        // A newer Hangar applied a migration this build does not know.
        let mut connection = sqlx::AnyConnection::connect(&db.url)
            .await
            .expect("connect");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, 'from a newer hangar', TRUE, $2, 0)",
        )
        .bind(again.latest + 1000)
        .bind(vec![0_u8; 48])
        .execute(&mut connection)
        .await
        .expect("record a newer migration");
        connection.close().await.expect("close");

        let sealer = Sealer::new(&Sealer::generate_key()).expect("key");
        let store = Store::connect(&db.url, sealer).await.unwrap_or_else(|e| {
            panic!("{backend:?}: a server of the version before must start: {e}")
        });
        store.ping().await.expect("ping");
        store.close().await;
        let migrated = Store::migrate(&db.url).await.expect("migrate");
        assert_eq!(migrated.version, again.latest + 1000, "{backend:?}");
        assert!(migrated.applied.is_empty(), "{backend:?}");
    }
}
