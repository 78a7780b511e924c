//! The production backend: Postgres through sqlx, a connection pool per process.

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::store::{AccountStore, Contact, Enterprise, StoreError, User, db, new_id, now_ms};

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new().max_connections(max_connections).connect(url).await.map_err(db)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(PgStore { pool })
    }
}

shared_row_mappers!(sqlx::postgres::PgRow);

impl AccountStore for PgStore {
    async fn create_enterprise(&self, name: &str) -> Result<Enterprise, StoreError> {
        sqlx::query("INSERT INTO enterprises (id, name, created_ms) VALUES ($1, $1, $2)")
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(Enterprise { id: name.to_owned(), name: name.to_owned() })
    }

    async fn enterprise_by_name(&self, name: &str) -> Result<Option<Enterprise>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM enterprises WHERE name = $1")
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
        let id = new_id();
        let row = sqlx::query(
            "INSERT INTO users (id, enterprise_id, username, display_name, password_hash, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        )
        .bind(&id)
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
        let row = sqlx::query("SELECT * FROM users WHERE enterprise_id = $1 AND username = $2")
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
        let row = sqlx::query(
            "INSERT INTO follows (enterprise_id, follower_id, followee_id, following, version) \
             VALUES ($1, $2, $3, $4, nextval('follows_version')) \
             ON CONFLICT (follower_id, followee_id) DO UPDATE \
             SET following = excluded.following, version = excluded.version RETURNING version",
        )
        .bind(enterprise_id)
        .bind(follower_id)
        .bind(followee_id)
        .bind(following)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.get(0))
    }

    async fn touch_contact(&self, user_id: &str) -> Result<(), StoreError> {
        // The uncorrelated subquery runs once: every row gets the same new version.
        sqlx::query("UPDATE follows SET version = (SELECT nextval('follows_version')) WHERE followee_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn contacts_since(&self, user_id: &str, since: i64) -> Result<Vec<Contact>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.id, u.username, u.display_name, f.following, f.version, \
                    EXISTS (SELECT 1 FROM follows b WHERE b.follower_id = f.followee_id \
                            AND b.followee_id = f.follower_id AND b.following) AS friend \
             FROM follows f JOIN users u ON u.id = f.followee_id \
             WHERE f.follower_id = $1 AND f.version > $2 AND ($2 > 0 OR f.following) \
             ORDER BY f.version",
        )
        .bind(user_id)
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
                following: r.get("following"),
                friend: r.get("friend"),
                version: r.get("version"),
            })
            .collect())
    }

    async fn all_follows(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.enterprise_id, a.username AS follower, b.username AS followee FROM follows f \
             JOIN users a ON a.id = f.follower_id JOIN users b ON b.id = f.followee_id WHERE f.following",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    shared_store_methods!();
}
