//! The caller's own things: profile, password, contacts (incremental sync) and follows.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use wire::pb::{self, account_event::Event};

use super::session::contacts_json;
use super::{
    Body, Params, Shared, Since, account_name, caller, check_password, check_profile, directory_failed, hash_password,
    revoke_all, verify_password,
};
use crate::error::ApiError;
use crate::store::{AccountStore, ProfileUpdate, now_ms};

pub(crate) async fn show<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    Ok(Json(json!(me)))
}

/// Changes the caller's display name, signature or avatar; a new signature reaches friends as a
/// retained message on `{eid}/im/sig/{username}`.
pub(crate) async fn update<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Body(req): Body<ProfileUpdate>,
) -> Result<Json<Value>, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    if req.org_unit.is_some() {
        return Err(ApiError::forbidden("`org_unit` is set by an enterprise admin"));
    }
    check_profile(&req)?;
    let updated = st.store.update_profile(&me.id, &req).await?;
    if updated.display_name != me.display_name {
        st.store.touch_contact(&me.id).await?;
    }
    st.events.profile_changed(&updated, updated.signature != me.signature).await;
    Ok(Json(json!(updated)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPassword {
    current_password: String,
    new_password: String,
}

/// Sets a new password and ends every session: all devices log in again.
pub(crate) async fn change_password<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Body(req): Body<NewPassword>,
) -> Result<StatusCode, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    check_password("new_password", &req.new_password)?;
    if !verify_password(me.password_hash.clone(), req.current_password).await {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong_password", "`current_password` is not right"));
    }
    st.store.set_password(&me.id, &hash_password(req.new_password).await?).await?;
    let before = now_ms();
    revoke_all(&st, &me, before, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn contacts<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Params(q): Params<Since>,
) -> Result<Json<Value>, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    let since = q.since.max(0);
    let contacts = st.store.contacts_since(&me.id, since).await?;
    metrics::counter!("hermes_accounts_contact_syncs_total").increment(1);
    Ok(Json(contacts_json(&contacts, since)))
}

async fn set_follow<S: AccountStore>(
    st: Shared<S>,
    headers: HeaderMap,
    username: String,
    following: bool,
) -> Result<Json<Value>, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    let username = account_name("username", &username)?;
    let other = st
        .store
        .user_by_name(&me.enterprise_id, &username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user `{username}` in this enterprise")))?;
    if other.id == me.id {
        return Err(ApiError::bad_request("you cannot follow yourself"));
    }
    let version = st.store.set_follow(&me.enterprise_id, &me.id, &other.id, following).await?;
    if let Some(dir) = &st.directory
        && let Err(e) = dir.set_follow(&me.enterprise_id, &me.username, &other.username, following).await
    {
        directory_failed("relation change", &e);
    }
    let change = pb::RelationChanged { follower: me.username.clone(), followee: other.username.clone(), following };
    st.events.emit(&me.enterprise_id, Event::RelationChanged(change)).await;
    Ok(Json(json!({ "username": other.username, "following": following, "version": version })))
}

pub(crate) async fn follow<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_follow(st, headers, username, true).await
}

pub(crate) async fn unfollow<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_follow(st, headers, username, false).await
}
