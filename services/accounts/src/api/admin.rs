//! Administration: enterprises (operator only), and per enterprise its users, ACL and
//! auto-subscribe tables, API keys for business backends and org units (the operator, or an
//! admin of that enterprise).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use wire::pb::{self, account_event::Event};

use super::{
    Body, Page, Params, Shared, account_name, admin_of, check_name, check_password, check_profile, directory_failed,
    hash_password, is_operator, page_json, revoke_all, taken,
};
use crate::error::ApiError;
use crate::files::sha256_hex;
use crate::store::{AccountStore, ProfileUpdate, User, new_id, now_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewEnterprise {
    name: String,
}

pub(crate) async fn create_enterprise<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Body(req): Body<NewEnterprise>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !is_operator(&st, &headers) {
        return Err(ApiError::forbidden("creating enterprises needs a valid X-Admin-Key"));
    }
    let name = account_name("name", &req.name)?;
    let e = st.store.create_enterprise(&name).await.map_err(|e| taken(e, format!("an enterprise `{name}`")))?;
    Ok((StatusCode::CREATED, Json(json!(e))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    org_unit: String,
    #[serde(default)]
    admin: bool,
}

pub(crate) async fn create_user<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Body(req): Body<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let username = account_name("username", &req.username)?;
    check_password("password", &req.password)?;
    // Shown as typed: the display name keeps the capitals the name has lost.
    let display = if req.display_name.is_empty() { req.username.clone() } else { req.display_name };
    let profile =
        ProfileUpdate { display_name: Some(display.clone()), org_unit: Some(req.org_unit), ..ProfileUpdate::default() };
    check_profile(&profile)?;
    let hash = hash_password(req.password).await?;
    let mut user = st
        .store
        .create_user(&e.id, &username, &display, &hash)
        .await
        .map_err(|err| taken(err, format!("a user `{username}` in `{}`", e.id)))?;
    if profile.org_unit.as_deref().is_some_and(|o| !o.is_empty()) {
        user = st.store.update_profile(&user.id, &profile).await?;
    }
    if req.admin {
        st.store.set_flags(&user.id, false, true).await?;
        user.admin = true;
    }
    let created = pb::UserCreated { user_id: user.id.clone(), username: user.username.clone() };
    st.events.emit(&e.id, Event::UserCreated(created)).await;
    Ok((StatusCode::CREATED, Json(json!(user))))
}

pub(crate) async fn list_users<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Params(page): Params<Page>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let limit = page.limit()?;
    let users = st.store.list_users(&e.id, &page.after, limit, page.org_unit.as_deref()).await?;
    let next = (users.len() as i64 == limit).then(|| users.last().map(|u| u.username.clone())).flatten();
    Ok(page_json("users", json!(users), next))
}

async fn find_user<S: AccountStore>(st: &Shared<S>, enterprise_id: &str, username: &str) -> Result<User, ApiError> {
    let username = account_name("username", username)?;
    st.store
        .user_by_name(enterprise_id, &username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user `{username}` in `{enterprise_id}`")))
}

pub(crate) async fn show_user<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((enterprise, username)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    Ok(Json(json!(find_user(&st, &e.id, &username).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserUpdate {
    display_name: Option<String>,
    signature: Option<String>,
    avatar_url: Option<String>,
    org_unit: Option<String>,
    disabled: Option<bool>,
    admin: Option<bool>,
    password: Option<String>,
}

/// Changes a user. Disabling closes their live connections (v5 0x98) and refuses their tokens.
pub(crate) async fn update_user<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((enterprise, username)): Path<(String, String)>,
    Body(req): Body<UserUpdate>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let before = find_user(&st, &e.id, &username).await?;
    let profile = ProfileUpdate {
        display_name: req.display_name,
        signature: req.signature,
        avatar_url: req.avatar_url,
        org_unit: req.org_unit,
    };
    check_profile(&profile)?;
    if let Some(p) = &req.password {
        check_password("password", p)?;
    }
    let mut user = st.store.update_profile(&before.id, &profile).await?;
    if user.display_name != before.display_name {
        st.store.touch_contact(&user.id).await?;
    }
    if profile != ProfileUpdate::default() {
        st.events.profile_changed(&user, user.signature != before.signature).await;
    }
    if let Some(p) = req.password {
        // A reset password ends every session, as the user's own change does.
        st.store.set_password(&user.id, &hash_password(p).await?).await?;
        let before = now_ms();
        revoke_all(&st, &user, before, false).await?;
    }
    let (disabled, admin) = (req.disabled.unwrap_or(user.disabled), req.admin.unwrap_or(user.admin));
    if (disabled, admin) != (user.disabled, user.admin) {
        st.store.set_flags(&user.id, disabled, admin).await?;
        (user.disabled, user.admin) = (disabled, admin);
    }
    if disabled && !before.disabled {
        revoke_all(&st, &user, now_ms(), true).await?;
    }
    Ok(Json(json!(user)))
}

/// Ends every session of a user: refresh tokens revoked, access tokens refused, connections closed.
pub(crate) async fn revoke_tokens<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((enterprise, username)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let user = find_user(&st, &e.id, &username).await?;
    let before = now_ms();
    revoke_all(&st, &user, before, false).await?;
    Ok(Json(json!({ "username": user.username, "revoked_before_ms": before })))
}

pub(crate) async fn show_acl<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let p = st.store.policy(&e.id).await?;
    Ok(Json(json!({
        "acl_rules": p.acl_rules,
        "auto_subscribe": p.auto_subscribe,
        "version": p.version,
        "defaults": { "acl_rules": broker::acl::DEFAULT_ACL, "auto_subscribe": broker::acl::DEFAULT_AUTO_SUBSCRIBE },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tables {
    acl_rules: String,
    auto_subscribe: String,
}

/// Replaces the enterprise's ACL and auto-subscribe tables (empty text: the default). Edges
/// apply them to connected users at once.
pub(crate) async fn set_acl<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Body(req): Body<Tables>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let table = broker::acl::AclTable::parse(&req.acl_rules)
        .map_err(|err| ApiError::bad_request(format!("`acl_rules`: {err}")))?;
    let auto = broker::acl::parse_auto_subscribe(&req.auto_subscribe)
        .map_err(|err| ApiError::bad_request(format!("`auto_subscribe`: {err}")))?;
    // An enterprise admin writes these: they must stay inside the enterprise.
    broker::acl::enterprise_scoped(&table, &[]).map_err(|err| ApiError::bad_request(format!("`acl_rules`: {err}")))?;
    broker::acl::enterprise_scoped(&broker::acl::AclTable::default(), &auto)
        .map_err(|err| ApiError::bad_request(format!("`auto_subscribe`: {err}")))?;
    let version = st.store.set_policy(&e.id, &req.acl_rules, &req.auto_subscribe).await?;
    if let Some(access) = &st.access {
        let tables = broker::access::Tables {
            version: version as u64,
            acl_rules: req.acl_rules.clone(),
            auto_subscribe: req.auto_subscribe.clone(),
        };
        if let Err(err) = access.save_tables(&e.id, &tables).await {
            directory_failed("ACL tables", &err);
        }
    }
    let changed = pb::AclChanged {
        version: version as u64,
        acl_rules: req.acl_rules.clone(),
        auto_subscribe: req.auto_subscribe.clone(),
    };
    st.events.emit(&e.id, Event::AclChanged(changed)).await;
    Ok(Json(json!({ "acl_rules": req.acl_rules, "auto_subscribe": req.auto_subscribe, "version": version })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiKey {
    name: String,
}

/// A key for a business backend; the secret is shown once, only its hash is stored.
pub(crate) async fn create_api_key<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Body(req): Body<NewApiKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    check_name("name", &req.name)?;
    let secret = format!("hk_{}{}", new_id(), new_id());
    let key = st.store.create_api_key(&e.id, &req.name, &sha256_hex(secret.as_bytes())).await?;
    let mut body = json!(key);
    body["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

pub(crate) async fn list_api_keys<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    Ok(Json(json!({ "api_keys": st.store.list_api_keys(&e.id).await? })))
}

pub(crate) async fn delete_api_key<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((enterprise, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    if st.store.delete_api_key(&e.id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no API key `{id}` in `{enterprise}`")))
    }
}

pub(crate) async fn org_units<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let units: Vec<Value> = st
        .store
        .org_units(&e.id)
        .await?
        .into_iter()
        .map(|(unit, users)| json!({ "org_unit": unit, "users": users }))
        .collect();
    Ok(Json(json!({ "org_units": units })))
}
