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

impl AccountStore for SqliteStore {
    async fn create_enterprise(&self, name: &str) -> Result<Enterprise, StoreError> {
        // The name is the id: it is the `{eid}` level of every topic, so it stays readable.
        let id = name.to_owned();
        sqlx::query("INSERT INTO enterprises (id, name, created_ms) VALUES (?, ?, ?)")
            .bind(&id)
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(Enterprise { id, name: name.to_owned() })
    }

    async fn enterprise_by_name(&self, name: &str) -> Result<Option<Enterprise>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM enterprises WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|r| Enterprise { id: r.get("id"), name: r.get("name") }))
    }

    async fn create_user(
        &self,
        enterprise_id: &str,
        username: &str,
        display_name: &str,
        password_hash: &str,
    ) -> Result<User, StoreError> {
        let row = sqlx::query(
            "INSERT INTO users (id, enterprise_id, username, display_name, password_hash, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        )
        .bind(new_id())
        .bind(enterprise_id)
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(user(&row))
    }

    async fn user_by_name(&self, enterprise_id: &str, username: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE enterprise_id = ? AND username = ?")
            .bind(enterprise_id)
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(user))
    }

    async fn set_follow(
        &self,
        enterprise_id: &str,
        follower_id: &str,
        followee_id: &str,
        following: bool,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let version: i64 = sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'follows' RETURNING value")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
            .get(0);
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
        let version: i64 = sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'follows' RETURNING value")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
            .get(0);
        sqlx::query("UPDATE follows SET version = ? WHERE followee_id = ?")
            .bind(version)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn contacts_since(&self, user_id: &str, since: i64) -> Result<Vec<Contact>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.id, u.username, u.display_name, f.following, f.version, \
                    EXISTS (SELECT 1 FROM follows b WHERE b.follower_id = f.followee_id \
                            AND b.followee_id = f.follower_id AND b.following = 1) AS friend \
             FROM follows f JOIN users u ON u.id = f.followee_id \
             WHERE f.follower_id = ? AND f.version > ? AND (? > 0 OR f.following = 1) \
             ORDER BY f.version",
        )
        .bind(user_id)
        .bind(since)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| Contact {
                user_id: r.get("id"),
                username: r.get("username"),
                display_name: r.get("display_name"),
                following: r.get::<i64, _>("following") != 0,
                friend: r.get::<i64, _>("friend") != 0,
                version: r.get("version"),
            })
            .collect())
    }

    async fn all_follows(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.enterprise_id, a.username AS follower, b.username AS followee FROM follows f \
             JOIN users a ON a.id = f.follower_id JOIN users b ON b.id = f.followee_id WHERE f.following = 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    shared_store_methods!();
}
