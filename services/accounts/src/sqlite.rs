//! The embedded backend: SQLite through sqlx, one file in the data directory.

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::store::{AccountStore, Contact, Enterprise, StoreError, User, db, new_id, now_ms};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies the migrations.
    pub async fn open(path: &std::path::Path) -> Result<SqliteStore, StoreError> {
        // It holds password and token hashes: created (empty, which SQLite takes for a new
        // database) readable by its owner only before SQLite opens it. SQLite gives the -wal and
        // -shm files it makes the permissions of the database file.
        match crate::owner_only::create(path, b"") {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Database(format!("{}: {e}", path.display())));
            }
            _ => {}
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            // With WAL, NORMAL never corrupts the database; a power cut may lose the last commits.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(db)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(SqliteStore { pool })
    }
}

shared_row_mappers!(sqlx::sqlite::SqliteRow);

/// The next value of counter `name` (what a sequence is in Postgres); it moves only if the
/// transaction commits.
async fn next_version(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, name: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value")
        .bind(name)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    Ok(row.get(0))
}

async fn next_follow_version(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<i64, StoreError> {
    next_version(tx, "follows").await
}

/// Used by `shared_group_methods!`.
async fn next_membership_version(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<i64, StoreError> {
    next_version(tx, "memberships").await
}

impl AccountStore for SqliteStore {
    async fn set_follow(
        &self,
        enterprise_id: &str,
        follower_id: &str,
        followee_id: &str,
        following: bool,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let version = next_follow_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO follows (enterprise_id, follower_id, followee_id, following, version) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (follower_id, followee_id) DO UPDATE SET following = excluded.following, version = excluded.version",
        )
        .bind(enterprise_id)
        .bind(follower_id)
        .bind(followee_id)
        .bind(i64::from(following))
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(version)
    }

    async fn touch_contact(&self, user_id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let version = next_follow_version(&mut tx).await?;
        sqlx::query("UPDATE follows SET version = ? WHERE followee_id = ?")
            .bind(version)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    shared_store_methods!();
    shared_group_methods!();
}
