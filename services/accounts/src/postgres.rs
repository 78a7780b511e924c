//! The production backend: Postgres through sqlx, a connection pool per process.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row};

use crate::store::{AccountStore, Contact, Enterprise, StoreError, User, db, new_id, now_ms};

/// How long the server may take to accept a connection before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        // One connection first: a pool retries a server it cannot reach until its acquire
        // timeout, then reports the timeout and not why (refused, unknown host, bad password).
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(url))
            .await
            .map_err(|_| StoreError::Database(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(db)?;
        probe.close().await.map_err(db)?;
        let pool = PgPoolOptions::new().max_connections(max_connections).connect(url).await.map_err(db)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(PgStore { pool })
    }
}

shared_row_mappers!(sqlx::postgres::PgRow);

/// The next membership version (used by `shared_group_methods!`). A sequence does not roll
/// back: an aborted change leaves a gap, which incremental sync does not mind.
async fn next_membership_version(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT nextval('memberships_version')").fetch_one(&mut **tx).await.map_err(db)?;
    Ok(row.get(0))
}

impl AccountStore for PgStore {
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

    shared_store_methods!();
    shared_group_methods!();
}
