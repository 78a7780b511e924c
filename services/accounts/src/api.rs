//! The REST API under `/v1`: enterprises and users (admin), login to an MQTT access token,
//! follow / unfollow, and contacts with incremental sync by version.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use wire::token::{AccessClaims, Signer, TokenError};

use crate::error::ApiError;
use crate::store::{AccountStore, Contact, new_id};

/// Told about every relation change (the embedded edge applies it; a cluster publishes it).
pub trait RelationHook: Send + Sync {
    fn follow_changed(&self, enterprise: &str, follower: &str, followee: &str, following: bool);
}

pub struct AccountsState<S> {
    pub store: S,
    pub signer: Signer,
    pub token_ttl: Duration,
    /// Required in `X-Admin-Key` by the admin endpoints; empty disables them.
    pub admin_key: String,
    pub hook: Arc<dyn RelationHook>,
}

type Shared<S> = Arc<AccountsState<S>>;

pub fn router<S: AccountStore>(state: Shared<S>) -> Router {
    Router::new()
        .route("/v1/enterprises", post(create_enterprise::<S>))
        .route("/v1/enterprises/{enterprise}/users", post(create_user::<S>))
        .route("/v1/login", post(login::<S>))
        .route("/v1/contacts", get(contacts::<S>))
        .route("/v1/follows/{username}", put(follow::<S>).delete(unfollow::<S>))
        .route("/v1/token/public-key", get(public_key::<S>))
        .with_state(state)
}

/// A JSON body whose rejection is our JSON error naming what is wrong.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> FromRequest<St> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Names may only hold what is safe as one topic level: never `/ + # $`.
fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    let ok =
        (1..=64).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("`{field}` must be 1-64 characters of A-Z a-z 0-9 . _ -")))
    }
}

fn require_admin<S>(state: &AccountsState<S>, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get("x-admin-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if state.admin_key.is_empty() || given != state.admin_key {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "admin endpoint: send a valid X-Admin-Key"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEnterprise {
    name: String,
}

async fn create_enterprise<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Body(req): Body<NewEnterprise>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&st, &headers)?;
    check_name("name", &req.name)?;
    let e = st.store.create_enterprise(&req.name).await?;
    Ok((StatusCode::CREATED, Json(json!(e))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    display_name: String,
}

async fn create_user<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Body(req): Body<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&st, &headers)?;
    check_name("username", &req.username)?;
    if req.password.len() < 8 {
        return Err(ApiError::bad_request("`password` must have at least 8 characters"));
    }
    let e = st
        .store
        .enterprise_by_name(&enterprise)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no enterprise `{enterprise}`")))?;
    let hash = hash_password(req.password).await?;
    let display = if req.display_name.is_empty() { req.username.clone() } else { req.display_name };
    let user = st.store.create_user(&e.id, &req.username, &display, &hash).await?;
    Ok((StatusCode::CREATED, Json(json!(user))))
}

async fn hash_password(password: String) -> Result<String, ApiError> {
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e);
    tokio::task::spawn_blocking(move || service_kit::password::hash(&password))
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(internal)
}

async fn verify_password(hash: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || service_kit::password::verify(&hash, password.as_bytes()))
        .await
        .unwrap_or(false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    enterprise: String,
    username: String,
    password: String,
}

fn contacts_json(contacts: &[Contact], since: i64) -> Value {
    let version = contacts.iter().map(|c| c.version).max().unwrap_or(since);
    json!({ "version": version, "full": since == 0, "contacts": contacts })
}

async fn login<S: AccountStore>(State(st): State<Shared<S>>, Body(req): Body<Login>) -> Result<Json<Value>, ApiError> {
    let invalid = || ApiError::unauthorized("unknown enterprise, user or password");
    let enterprise = st.store.enterprise_by_name(&req.enterprise).await?.ok_or_else(invalid)?;
    let user = st.store.user_by_name(&enterprise.id, &req.username).await?.ok_or_else(invalid)?;
    if !verify_password(user.password_hash.clone(), req.password).await {
        metrics::counter!("hermes_accounts_login_failures_total").increment(1);
        return Err(invalid());
    }
    if user.disabled {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "disabled", "this user is disabled"));
    }
    let claims = AccessClaims {
        user_id: user.id.clone(),
        enterprise_id: enterprise.id.clone(),
        username: user.username.clone(),
        token_id: new_id(),
    };
    let token = st
        .signer
        .sign(&claims, st.token_ttl)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let contacts = st.store.contacts_since(&user.id, 0).await?;
    metrics::counter!("hermes_accounts_logins_total").increment(1);
    Ok(Json(json!({
        "user_id": user.id,
        "enterprise_id": enterprise.id,
        "username": user.username,
        "access_token": token,
        "token_type": "PASETO-v4-public",
        "expires_in": st.token_ttl.as_secs(),
        "contacts": contacts_json(&contacts, 0),
    })))
}

/// The caller, from `Authorization: Bearer <access token>`.
fn caller<S>(st: &AccountsState<S>, headers: &HeaderMap) -> Result<AccessClaims, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <access token>`"))?;
    st.signer.verifier().verify(token).map_err(|e| match e {
        TokenError::Expired => ApiError::unauthorized("the access token has expired"),
        _ => ApiError::unauthorized("the access token is not valid"),
    })
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: i64,
}

async fn contacts<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Query(q): Query<Since>,
) -> Result<Json<Value>, ApiError> {
    let me = caller(&st, &headers)?;
    let contacts = st.store.contacts_since(&me.user_id, q.since.max(0)).await?;
    Ok(Json(contacts_json(&contacts, q.since.max(0))))
}

async fn set_follow<S: AccountStore>(
    st: Shared<S>,
    headers: HeaderMap,
    username: String,
    following: bool,
) -> Result<Json<Value>, ApiError> {
    let me = caller(&st, &headers)?;
    let other = st
        .store
        .user_by_name(&me.enterprise_id, &username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user `{username}` in this enterprise")))?;
    if other.id == me.user_id {
        return Err(ApiError::bad_request("you cannot follow yourself"));
    }
    let version = st.store.set_follow(&me.enterprise_id, &me.user_id, &other.id, following).await?;
    st.hook.follow_changed(&me.enterprise_id, &me.username, &other.username, following);
    Ok(Json(json!({ "username": other.username, "following": following, "version": version })))
}

async fn follow<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_follow(st, headers, username, true).await
}

async fn unfollow<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_follow(st, headers, username, false).await
}

async fn public_key<S: AccountStore>(State(st): State<Shared<S>>) -> Json<Value> {
    Json(json!({ "public_key": st.signer.verifier().to_paserk() }))
}
