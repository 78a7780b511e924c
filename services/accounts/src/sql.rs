//! Store methods whose SQL is the same on SQLite and Postgres (`$n` parameters, `RETURNING`,
//! `ON CONFLICT`, booleans bound as `bool`), written once and expanded into both backends'
//! `AccountStore` impls: everything but how versions are drawn (counter rows in SQLite,
//! sequences in Postgres). Each backend module provides `self.pool`, the row mappers and
//! `next_membership_version(&mut tx)`.

macro_rules! shared_store_methods {
    () => {
        async fn create_enterprise(&self, name: &str) -> Result<Enterprise, StoreError> {
            // The name is the id: it is the `{eid}` level of every topic, so it stays readable.
            sqlx::query("INSERT INTO enterprises (id, name, created_ms) VALUES ($1, $1, $2)")
                .bind(name)
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(Enterprise { id: name.to_owned(), name: name.to_owned() })
        }

        async fn enterprise_by_name(&self, name: &str) -> Result<Option<Enterprise>, StoreError> {
            // Names are unique regardless of case (migration 0003); the API keeps new ones in
            // lowercase, and this finds older ones that have capitals too.
            let row = sqlx::query("SELECT id, name FROM enterprises WHERE lower(name) = lower($1)")
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
            let row = sqlx::query("SELECT * FROM users WHERE enterprise_id = $1 AND lower(username) = lower($2)")
                .bind(enterprise_id)
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.as_ref().map(user))
        }

        async fn contacts_since(&self, user_id: &str, since: i64) -> Result<Vec<Contact>, StoreError> {
            let rows = sqlx::query(
                "SELECT u.id, u.username, u.display_name, f.following, f.version, \
                        EXISTS (SELECT 1 FROM follows b WHERE b.follower_id = f.followee_id \
                                AND b.followee_id = f.follower_id AND b.following = $3) AS friend \
                 FROM follows f JOIN users u ON u.id = f.followee_id \
                 WHERE f.follower_id = $1 AND f.version > $2 AND ($2 > 0 OR f.following = $3) \
                 ORDER BY f.version",
            )
            .bind(user_id)
            .bind(since)
            .bind(true)
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
                 JOIN users a ON a.id = f.follower_id JOIN users b ON b.id = f.followee_id WHERE f.following = $1",
            )
            .bind(true)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        }

        async fn user_by_id(&self, user_id: &str) -> Result<Option<User>, StoreError> {
            let row =
                sqlx::query("SELECT * FROM users WHERE id = $1").bind(user_id).fetch_optional(&self.pool).await.map_err(db)?;
            Ok(row.as_ref().map(user))
        }

        async fn list_users(
            &self,
            enterprise_id: &str,
            after: &str,
            limit: i64,
            org_unit: Option<&str>,
        ) -> Result<Vec<User>, StoreError> {
            let unit = org_unit.unwrap_or("");
            let rows = sqlx::query(
                "SELECT * FROM users WHERE enterprise_id = $1 AND username > $2 \
                 AND ($3 = '' OR org_unit = $3 OR substr(org_unit, 1, length($3) + 1) = $3 || '/') \
                 ORDER BY username LIMIT $4",
            )
            .bind(enterprise_id)
            .bind(after)
            .bind(unit)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().map(user).collect())
        }

        async fn update_profile(&self, user_id: &str, u: &crate::store::ProfileUpdate) -> Result<User, StoreError> {
            let row = sqlx::query(
                "UPDATE users SET display_name = COALESCE($2, display_name), signature = COALESCE($3, signature), \
                 avatar_url = COALESCE($4, avatar_url), org_unit = COALESCE($5, org_unit) WHERE id = $1 RETURNING *",
            )
            .bind(user_id)
            .bind(u.display_name.as_deref())
            .bind(u.signature.as_deref())
            .bind(u.avatar_url.as_deref())
            .bind(u.org_unit.as_deref())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            row.as_ref().map(user).ok_or(StoreError::NotFound)
        }

        async fn set_flags(&self, user_id: &str, disabled: bool, admin: bool) -> Result<(), StoreError> {
            sqlx::query("UPDATE users SET disabled = $2, admin = $3 WHERE id = $1")
                .bind(user_id)
                .bind(disabled)
                .bind(admin)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(())
        }

        async fn set_password(&self, user_id: &str, password_hash: &str) -> Result<(), StoreError> {
            sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                .bind(user_id)
                .bind(password_hash)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(())
        }

        async fn revoke_tokens(&self, user_id: &str, before_ms: i64) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await.map_err(db)?;
            sqlx::query("UPDATE users SET tokens_revoked_ms = $2 WHERE id = $1 AND tokens_revoked_ms < $2")
                .bind(user_id)
                .bind(before_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("UPDATE refresh_tokens SET revoked = $2 WHERE user_id = $1")
                .bind(user_id)
                .bind(true)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)
        }

        async fn insert_refresh(&self, hash: &str, user_id: &str, family: &str, expires_ms: i64) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, user_id, family, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash)
            .bind(user_id)
            .bind(family)
            .bind(now_ms())
            .bind(expires_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        }

        async fn use_refresh(&self, hash: &str, now: i64) -> Result<crate::store::RefreshUse, StoreError> {
            use crate::store::RefreshUse;
            let won = sqlx::query(
                "UPDATE refresh_tokens SET used = $3 WHERE hash = $1 AND used = $4 AND revoked = $4 AND expires_ms > $2 \
                 RETURNING user_id, family",
            )
            .bind(hash)
            .bind(now)
            .bind(true)
            .bind(false)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            if let Some(r) = won {
                return Ok(RefreshUse::Valid { user_id: r.get("user_id"), family: r.get("family") });
            }
            let row = sqlx::query("SELECT family, used, revoked FROM refresh_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(match row {
                None => RefreshUse::Unknown,
                Some(r) if r.get::<bool, _>("revoked") => RefreshUse::Revoked,
                Some(r) if r.get::<bool, _>("used") => RefreshUse::Reused { family: r.get("family") },
                Some(_) => RefreshUse::Expired,
            })
        }

        async fn revoke_refresh_family(&self, family: &str) -> Result<(), StoreError> {
            sqlx::query("UPDATE refresh_tokens SET revoked = $2 WHERE family = $1")
                .bind(family)
                .bind(true)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(())
        }

        async fn session_revoked(&self, family: &str) -> Result<bool, StoreError> {
            let row = sqlx::query("SELECT 1 FROM refresh_tokens WHERE family = $1 AND revoked = $2 LIMIT 1")
                .bind(family)
                .bind(true)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.is_some())
        }

        async fn revoke_session_tokens(&self, user_id: &str, family: &str, before_ms: i64) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO session_revocations (family, user_id, revoked_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (family) DO UPDATE SET revoked_ms = excluded.revoked_ms \
                 WHERE session_revocations.revoked_ms < excluded.revoked_ms",
            )
            .bind(family)
            .bind(user_id)
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        }

        async fn session_revocations_since(
            &self,
            since_ms: i64,
        ) -> Result<Vec<crate::store::SessionRevocation>, StoreError> {
            let rows = sqlx::query(
                "SELECT u.enterprise_id, s.user_id, s.family, s.revoked_ms FROM session_revocations s \
                 JOIN users u ON u.id = s.user_id WHERE s.revoked_ms > $1",
            )
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| crate::store::SessionRevocation {
                    enterprise_id: r.get(0),
                    user_id: r.get(1),
                    session: r.get(2),
                    before_ms: r.get(3),
                })
                .collect())
        }

        async fn refresh_family(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
            let row = sqlx::query("SELECT user_id, family FROM refresh_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.map(|r| (r.get("user_id"), r.get("family"))))
        }

        async fn policy(&self, enterprise_id: &str) -> Result<crate::store::Policy, StoreError> {
            let row = sqlx::query("SELECT acl_rules, auto_subscribe, version FROM policies WHERE enterprise_id = $1")
                .bind(enterprise_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.map(|r| policy(&r)).unwrap_or_default())
        }

        async fn set_policy(&self, enterprise_id: &str, acl_rules: &str, auto_subscribe: &str) -> Result<i64, StoreError> {
            let row = sqlx::query(
                "INSERT INTO policies (enterprise_id, acl_rules, auto_subscribe, version) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (enterprise_id) DO UPDATE SET acl_rules = excluded.acl_rules, \
                 auto_subscribe = excluded.auto_subscribe, version = policies.version + 1 RETURNING version",
            )
            .bind(enterprise_id)
            .bind(acl_rules)
            .bind(auto_subscribe)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            Ok(row.get("version"))
        }

        async fn all_policies(&self) -> Result<Vec<(String, crate::store::Policy)>, StoreError> {
            let rows = sqlx::query("SELECT * FROM policies").fetch_all(&self.pool).await.map_err(db)?;
            Ok(rows.iter().map(|r| (r.get("enterprise_id"), policy(r))).collect())
        }

        async fn org_units(&self, enterprise_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
            let rows = sqlx::query(
                "SELECT org_unit, COUNT(*) AS users FROM users WHERE enterprise_id = $1 AND org_unit <> '' \
                 GROUP BY org_unit ORDER BY org_unit",
            )
            .bind(enterprise_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().map(|r| (r.get("org_unit"), r.get("users"))).collect())
        }

        async fn revocations_since(&self, since_ms: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
            let rows = sqlx::query("SELECT enterprise_id, id, tokens_revoked_ms FROM users WHERE tokens_revoked_ms > $1")
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        }

        async fn create_api_key(
            &self,
            enterprise_id: &str,
            name: &str,
            key_hash: &str,
        ) -> Result<crate::store::ApiKey, StoreError> {
            let key = crate::store::ApiKey {
                id: new_id(),
                enterprise_id: enterprise_id.to_owned(),
                name: name.to_owned(),
                created_ms: now_ms(),
            };
            sqlx::query(
                "INSERT INTO api_keys (id, enterprise_id, name, key_hash, created_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&key.id)
            .bind(enterprise_id)
            .bind(name)
            .bind(key_hash)
            .bind(key.created_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(key)
        }

        async fn list_api_keys(&self, enterprise_id: &str) -> Result<Vec<crate::store::ApiKey>, StoreError> {
            let rows = sqlx::query("SELECT * FROM api_keys WHERE enterprise_id = $1 ORDER BY name")
                .bind(enterprise_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            Ok(rows.iter().map(api_key).collect())
        }

        async fn delete_api_key(&self, enterprise_id: &str, id: &str) -> Result<bool, StoreError> {
            let done = sqlx::query("DELETE FROM api_keys WHERE enterprise_id = $1 AND id = $2")
                .bind(enterprise_id)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(done.rows_affected() > 0)
        }

        async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<crate::store::ApiKey>, StoreError> {
            let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.as_ref().map(api_key))
        }
    };
}

/// Groups and their memberships. Versions of memberships work like follow versions: one
/// counter for all, so a user's changes since `since` are the rows with a higher version.
macro_rules! shared_group_methods {
    () => {
        async fn create_group(
            &self,
            enterprise_id: &str,
            name: &str,
            display_name: &str,
            owner_id: &str,
        ) -> Result<crate::store::Group, StoreError> {
            let group = crate::store::Group {
                id: new_id(),
                enterprise_id: enterprise_id.to_owned(),
                name: name.to_owned(),
                display_name: display_name.to_owned(),
                created_ms: now_ms(),
            };
            let mut tx = self.pool.begin().await.map_err(db)?;
            sqlx::query(
                "INSERT INTO groups (id, enterprise_id, name, display_name, created_ms, version) \
                 VALUES ($1, $2, $3, $4, $5, 1)",
            )
            .bind(&group.id)
            .bind(enterprise_id)
            .bind(name)
            .bind(display_name)
            .bind(group.created_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let version = next_membership_version(&mut tx).await?;
            sqlx::query(
                "INSERT INTO memberships (group_id, user_id, role, member, version) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&group.id)
            .bind(owner_id)
            .bind(crate::store::Role::Owner.as_str())
            .bind(true)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(group)
        }

        async fn group_by_name(
            &self,
            enterprise_id: &str,
            name: &str,
        ) -> Result<Option<crate::store::Group>, StoreError> {
            let row = sqlx::query("SELECT * FROM groups WHERE enterprise_id = $1 AND lower(name) = lower($2)")
                .bind(enterprise_id)
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.as_ref().map(group))
        }

        async fn list_groups(
            &self,
            enterprise_id: &str,
            after: &str,
            limit: i64,
        ) -> Result<Vec<crate::store::Group>, StoreError> {
            let rows =
                sqlx::query("SELECT * FROM groups WHERE enterprise_id = $1 AND name > $2 ORDER BY name LIMIT $3")
                    .bind(enterprise_id)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db)?;
            Ok(rows.iter().map(group).collect())
        }

        async fn group_members(&self, group_id: &str) -> Result<Vec<crate::store::Member>, StoreError> {
            let rows = sqlx::query(
                "SELECT u.id, u.username, u.display_name, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
                 WHERE m.group_id = $1 AND m.member = $2 ORDER BY u.username",
            )
            .bind(group_id)
            .bind(true)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| crate::store::Member {
                    user_id: r.get("id"),
                    username: r.get("username"),
                    display_name: r.get("display_name"),
                    role: crate::store::Role::from_stored(r.get("role")),
                })
                .collect())
        }

        async fn group_role(&self, group_id: &str, user_id: &str) -> Result<Option<crate::store::Role>, StoreError> {
            let row = sqlx::query("SELECT role FROM memberships WHERE group_id = $1 AND user_id = $2 AND member = $3")
                .bind(group_id)
                .bind(user_id)
                .bind(true)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.map(|r| crate::store::Role::from_stored(r.get("role"))))
        }

        async fn set_membership(
            &self,
            group_id: &str,
            user_id: &str,
            role: Option<crate::store::Role>,
        ) -> Result<Option<i64>, StoreError> {
            use crate::store::Role;
            let mut tx = self.pool.begin().await.map_err(db)?;
            // The group's row first, held until commit: it orders concurrent changes to this
            // group (Postgres locks the row, SQLite has one writer at a time), so the owner count
            // below cannot change before this change is written.
            let locked = sqlx::query("UPDATE groups SET version = version + 1 WHERE id = $1")
                .bind(group_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            if locked.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            let row = sqlx::query("SELECT role, member FROM memberships WHERE group_id = $1 AND user_id = $2")
                .bind(group_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            let now = row.filter(|r| r.get::<bool, _>("member")).map(|r| Role::from_stored(r.get("role")));
            if now == role {
                // Dropping the transaction rolls the group's version back too.
                return Ok(None);
            }
            if now == Some(Role::Owner) && role != Some(Role::Owner) {
                let owners: i64 =
                    sqlx::query("SELECT COUNT(*) FROM memberships WHERE group_id = $1 AND member = $2 AND role = $3")
                        .bind(group_id)
                        .bind(true)
                        .bind(Role::Owner.as_str())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db)?
                        .get(0);
                if owners <= 1 {
                    return Err(StoreError::LastOwner);
                }
            }
            let version = next_membership_version(&mut tx).await?;
            // A removal keeps the role it ended, for the record: `member` says it is over.
            let stored = role.or(now).unwrap_or(Role::Member);
            sqlx::query(
                "INSERT INTO memberships (group_id, user_id, role, member, version) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (group_id, user_id) DO UPDATE \
                 SET role = excluded.role, member = excluded.member, version = excluded.version",
            )
            .bind(group_id)
            .bind(user_id)
            .bind(stored.as_str())
            .bind(role.is_some())
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(Some(version))
        }

        async fn groups_since(&self, user_id: &str, since: i64) -> Result<Vec<crate::store::Membership>, StoreError> {
            let rows = sqlx::query(
                "SELECT g.name, g.display_name, m.role, m.member, m.version \
                 FROM memberships m JOIN groups g ON g.id = m.group_id \
                 WHERE m.user_id = $1 AND m.version > $2 AND ($2 > 0 OR m.member = $3) ORDER BY m.version",
            )
            .bind(user_id)
            .bind(since)
            .bind(true)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| crate::store::Membership {
                    name: r.get("name"),
                    display_name: r.get("display_name"),
                    role: crate::store::Role::from_stored(r.get("role")),
                    member: r.get("member"),
                    version: r.get("version"),
                })
                .collect())
        }

        async fn all_memberships(&self) -> Result<Vec<(String, String, String)>, StoreError> {
            let rows = sqlx::query(
                "SELECT g.enterprise_id, g.name, u.username FROM memberships m \
                 JOIN groups g ON g.id = m.group_id JOIN users u ON u.id = m.user_id WHERE m.member = $1",
            )
            .bind(true)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        }

        async fn outbox_add(&self, subject: &str, body: &[u8]) -> Result<i64, StoreError> {
            let row =
                sqlx::query("INSERT INTO event_outbox (subject, body, created_ms) VALUES ($1, $2, $3) RETURNING id")
                    .bind(subject)
                    .bind(body)
                    .bind(now_ms())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db)?;
            Ok(row.get(0))
        }

        async fn outbox_remove(&self, id: i64) -> Result<(), StoreError> {
            sqlx::query("DELETE FROM event_outbox WHERE id = $1").bind(id).execute(&self.pool).await.map_err(db)?;
            Ok(())
        }

        async fn outbox_older_than(
            &self,
            before_ms: i64,
            limit: i64,
        ) -> Result<Vec<crate::store::OutboxEvent>, StoreError> {
            let rows =
                sqlx::query("SELECT id, subject, body FROM event_outbox WHERE created_ms < $1 ORDER BY id LIMIT $2")
                    .bind(before_ms)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| crate::store::OutboxEvent { id: r.get(0), subject: r.get(1), body: r.get(2) })
                .collect())
        }
    };
}

/// Row mappers both backends share (the same column names and Rust types).
macro_rules! shared_row_mappers {
    ($row:ty) => {
        fn user(row: &$row) -> User {
            User {
                id: row.get("id"),
                enterprise_id: row.get("enterprise_id"),
                username: row.get("username"),
                display_name: row.get("display_name"),
                signature: row.get("signature"),
                avatar_url: row.get("avatar_url"),
                org_unit: row.get("org_unit"),
                admin: row.get("admin"),
                disabled: row.get("disabled"),
                tokens_revoked_ms: row.get("tokens_revoked_ms"),
                password_hash: row.get("password_hash"),
            }
        }

        fn policy(row: &$row) -> crate::store::Policy {
            crate::store::Policy {
                acl_rules: row.get("acl_rules"),
                auto_subscribe: row.get("auto_subscribe"),
                version: row.get("version"),
            }
        }

        fn group(row: &$row) -> crate::store::Group {
            crate::store::Group {
                id: row.get("id"),
                enterprise_id: row.get("enterprise_id"),
                name: row.get("name"),
                display_name: row.get("display_name"),
                created_ms: row.get("created_ms"),
            }
        }

        fn api_key(row: &$row) -> crate::store::ApiKey {
            crate::store::ApiKey {
                id: row.get("id"),
                enterprise_id: row.get("enterprise_id"),
                name: row.get("name"),
                created_ms: row.get("created_ms"),
            }
        }
    };
}
