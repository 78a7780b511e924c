//! The REST API under `/v1` (axum), generic over the [`AccountStore`] backend:
//! - [`session`]: login, refresh, logout;
//! - [`me`]: the caller's profile, password, contacts and follows;
//! - [`admin`]: enterprises, users, ACL tables, API keys, org units (X-Admin-Key, or the
//!   access token of an enterprise admin for their own enterprise);
//! - [`groups`]: groups and their members, for members and owners, and for admins;
//! - [`files`]: uploads and signed downloads.
//!
//! Errors are JSON `{error, message}`; `/openapi.json` documents every route.

mod admin;
mod files;
mod groups;
mod me;
mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use wire::token::{AccessClaims, Signer, TokenError};

use crate::config::AccountsConfig;
use crate::error::ApiError;
use crate::events::Events;
use crate::files::{FileStore, LinkSigner};
use crate::limiter::{LoginGuard, MemoryLoginGuard};
use crate::store::{AccountStore, Enterprise, StoreError, User};

pub struct AccountsState<S> {
    pub store: S,
    pub signer: Signer,
    pub cfg: AccountsConfig,
    /// Required in `X-Admin-Key` by the operator endpoints; empty disables the key.
    pub admin_key: String,
    pub events: Events,
    /// Counts login attempts and failures: in this process by default; in Redis (where every
    /// accounts instance shares one limit) when `state.redis_url` is set.
    pub login_guard: Arc<dyn LoginGuard>,
    pub files: Arc<dyn FileStore>,
    pub links: LinkSigner,
    /// Where edges read relations (Redis in a cluster); every follow change is written there.
    pub directory: Option<Arc<dyn broker::relations::RelationDirectory>>,
    /// Where edges read enterprises' ACL tables and revocations at start (Redis in a cluster).
    pub access: Option<Arc<dyn broker::access::AccessDirectory>>,
}

impl<S: AccountStore> AccountsState<S> {
    pub fn new(
        store: S,
        signer: Signer,
        cfg: AccountsConfig,
        admin_key: String,
        bus: Arc<dyn bus::Bus>,
        files: Arc<dyn FileStore>,
        links: LinkSigner,
    ) -> Self {
        let login_guard = Arc::new(MemoryLoginGuard::new(cfg.login_limits()));
        let events = Events::new(bus, Some(Arc::new(store.clone())));
        AccountsState {
            store,
            signer,
            cfg,
            admin_key,
            events,
            login_guard,
            files,
            links,
            directory: None,
            access: None,
        }
    }
}

type Shared<S> = Arc<AccountsState<S>>;

pub fn router<S: AccountStore>(state: Shared<S>) -> Router {
    Router::new()
        .route("/v1/login", post(session::login::<S>))
        .route("/v1/token/refresh", post(session::refresh::<S>))
        .route("/v1/logout", post(session::logout::<S>))
        .route("/v1/token/public-key", get(session::public_key::<S>))
        .route("/v1/me", get(me::show::<S>).patch(me::update::<S>))
        .route("/v1/me/password", put(me::change_password::<S>))
        .route("/v1/contacts", get(me::contacts::<S>))
        .route("/v1/follows/{username}", put(me::follow::<S>).delete(me::unfollow::<S>))
        .route("/v1/enterprises", post(admin::create_enterprise::<S>))
        .route("/v1/enterprises/{enterprise}/users", get(admin::list_users::<S>).post(admin::create_user::<S>))
        .route(
            "/v1/enterprises/{enterprise}/users/{username}",
            get(admin::show_user::<S>).patch(admin::update_user::<S>),
        )
        .route("/v1/enterprises/{enterprise}/users/{username}/revoke-tokens", post(admin::revoke_tokens::<S>))
        .route("/v1/enterprises/{enterprise}/acl", get(admin::show_acl::<S>).put(admin::set_acl::<S>))
        .route("/v1/enterprises/{enterprise}/api-keys", get(admin::list_api_keys::<S>).post(admin::create_api_key::<S>))
        .route("/v1/enterprises/{enterprise}/api-keys/{id}", axum::routing::delete(admin::delete_api_key::<S>))
        .route("/v1/enterprises/{enterprise}/org-units", get(admin::org_units::<S>))
        .route("/v1/groups", get(groups::mine::<S>).post(groups::create::<S>))
        .route("/v1/groups/{group}", get(groups::show::<S>))
        .route("/v1/groups/{group}/members/{username}", put(groups::put_member::<S>).delete(groups::remove_member::<S>))
        .route("/v1/enterprises/{enterprise}/groups", get(groups::admin_list::<S>).post(groups::admin_create::<S>))
        .route("/v1/enterprises/{enterprise}/groups/{group}", get(groups::admin_show::<S>))
        .route(
            "/v1/enterprises/{enterprise}/groups/{group}/members/{username}",
            put(groups::admin_put_member::<S>).delete(groups::admin_remove_member::<S>),
        )
        .route("/v1/files", post(files::upload::<S>).layer(DefaultBodyLimit::disable()))
        .route("/v1/files/{sha256}", get(files::download::<S>))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::not_found("no such endpoint: see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method: see /openapi.json",
            )
        })
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
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

/// A JSON body that may be left out: a request without one reads as `T::default()` (a `PUT`
/// whose defaults say it all needs no `{}`).
pub struct OptionalBody<T>(pub T);

impl<T: serde::de::DeserializeOwned + Default, St: Send + Sync> FromRequest<St> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        use axum::body::HttpBody as _;
        if req.body().is_end_stream() {
            return Ok(OptionalBody(T::default()));
        }
        Body::<T>::from_request(req, state).await.map(|Body(v)| OptionalBody(v))
    }
}

/// Query parameters whose rejection is our JSON error naming what is wrong.
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> FromRequestParts<St> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// The client's address (the TCP peer), when the server was started with connect info.
pub struct ClientIp(pub IpAddr);

impl<St: Send + Sync> FromRequestParts<St> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientIp(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))))
    }
}

/// Names may only hold what is safe as one topic level: never `/ + # $`.
fn is_name(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A name of something inside an enterprise that is not an account: an org unit level, an API
/// key's name.
pub(crate) fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    if is_name(v) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("`{field}` must be 1-64 characters of A-Z a-z 0-9 . _ -")))
    }
}

/// An enterprise name or a username, as the API is given it (new, at login, in a path); returns
/// the name as it is stored. Names are topic levels (`{enterprise}/im/msg/{user}`) and path
/// segments of the admin URLs, so each has one spelling: any case is accepted and folded to
/// lowercase (`ACME` and `acme` are one enterprise), and a name starts with a letter or a digit
/// (`.`, `..` and `-` are no names).
pub(crate) fn account_name(field: &str, v: &str) -> Result<String, ApiError> {
    if is_name(v) && v.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(format!(
            "`{field}` must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit \
             (any case is accepted and kept in lowercase)"
        )))
    }
}

/// A name already in use is a conflict that says which, and that case does not tell names apart.
pub(crate) fn taken(e: StoreError, what: String) -> ApiError {
    match e {
        StoreError::Conflict => {
            ApiError::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists (names ignore case)"))
        }
        other => other.into(),
    }
}

/// Free text of at most `max` characters without control characters.
pub(crate) fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{field}` must be at most {max} characters, without control characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_password(field: &str, v: &str) -> Result<(), ApiError> {
    if !(8..=1024).contains(&v.len()) {
        return Err(ApiError::bad_request(format!("`{field}` must have 8 to 1024 characters")));
    }
    Ok(())
}

/// Profile fields as anyone may set them; `org_unit` is checked by the admin path.
pub(crate) fn check_profile(u: &crate::store::ProfileUpdate) -> Result<(), ApiError> {
    if let Some(d) = &u.display_name {
        if d.trim().is_empty() {
            return Err(ApiError::bad_request("`display_name` must not be empty"));
        }
        check_text("display_name", d, 128)?;
    }
    if let Some(s) = &u.signature {
        check_text("signature", s, 256)?;
    }
    if let Some(a) = &u.avatar_url {
        let scheme_ok = a.is_empty() || a.starts_with("https://") || a.starts_with("http://");
        if !scheme_ok || a.len() > 2048 || a.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::bad_request(
                "`avatar_url` must be empty or an http(s) URL of at most 2048 characters",
            ));
        }
    }
    if let Some(o) = &u.org_unit
        && !o.is_empty()
    {
        if o.len() > 256 {
            return Err(ApiError::bad_request("`org_unit` must be at most 256 characters"));
        }
        for part in o.split('/') {
            check_name("org_unit", part)
                .map_err(|_| ApiError::bad_request("`org_unit` must be names of A-Z a-z 0-9 . _ - separated by `/`"))?;
        }
    }
    Ok(())
}

pub(crate) async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || service_kit::password::hash(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

pub(crate) async fn verify_password(hash: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || service_kit::password::verify(&hash, password.as_bytes()))
        .await
        .unwrap_or(false)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// The caller, from `Authorization: Bearer <access token>`: a valid, unrevoked token of a user
/// who is not disabled.
pub(crate) async fn caller<S: AccountStore>(
    st: &AccountsState<S>,
    headers: &HeaderMap,
) -> Result<(AccessClaims, User), ApiError> {
    let token = bearer(headers).ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <access token>`"))?;
    let claims = st.signer.verifier().verify(token).map_err(|e| match e {
        TokenError::Expired => ApiError::unauthorized("the access token has expired"),
        _ => ApiError::unauthorized("the access token is not valid"),
    })?;
    let user = st
        .store
        .user_by_id(&claims.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the access token is not valid"))?;
    if user.disabled {
        return Err(disabled());
    }
    let session_ended = !claims.session_id.is_empty() && st.store.session_revoked(&claims.session_id).await?;
    if claims.issued_at_ms < user.tokens_revoked_ms || session_ended {
        return Err(ApiError::unauthorized("the access token has been revoked: log in again"));
    }
    Ok((claims, user))
}

pub(crate) fn disabled() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "disabled", "this user is disabled")
}

/// The operator (`X-Admin-Key`) or an admin of `enterprise` (their access token) may go on.
pub(crate) async fn admin_of<S: AccountStore>(
    st: &AccountsState<S>,
    headers: &HeaderMap,
    enterprise: &str,
) -> Result<Enterprise, ApiError> {
    let enterprise = account_name("enterprise", enterprise)?;
    if !is_operator(st, headers) {
        if bearer(headers).is_none() {
            return Err(ApiError::forbidden("admin endpoint: send a valid X-Admin-Key or an enterprise admin's token"));
        }
        let (_, user) = caller(st, headers).await?;
        // The id is the name; one made before names were kept in lowercase may have capitals.
        if !(user.admin && user.enterprise_id.eq_ignore_ascii_case(&enterprise)) {
            return Err(ApiError::forbidden(format!("only admins of `{enterprise}` may do this")));
        }
    }
    st.store
        .enterprise_by_name(&enterprise)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no enterprise `{enterprise}`")))
}

pub(crate) fn is_operator<S>(st: &AccountsState<S>, headers: &HeaderMap) -> bool {
    let given = headers.get("x-admin-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    !st.admin_key.is_empty()
        && crate::files::sha256_hex(given.as_bytes()) == crate::files::sha256_hex(st.admin_key.as_bytes())
}

/// Incremental sync (`GET /v1/contacts`, `GET /v1/groups`): what changed after `?since=` (a
/// version an earlier answer gave); 0 or none for everything current.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Since {
    #[serde(default)]
    pub(crate) since: i64,
}

/// `GET` lists: `?limit=` (1-500, default 100) and `?after=` the last key of the previous page.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    #[serde(default)]
    after: String,
    limit: Option<i64>,
    #[serde(default)]
    org_unit: Option<String>,
}

impl Page {
    fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=500).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::bad_request("`limit` must be between 1 and 500")),
        }
    }
}

/// A page of `items` and the cursor of the next one (absent on the last page).
pub(crate) fn page_json(key: &str, items: Value, next: Option<String>) -> Json<Value> {
    Json(json!({ key: items, "next": next }))
}

/// Ends every session of `user`: refresh tokens revoked and access tokens issued before
/// `before_ms` refused, here, in the access directory and, through the bus, at every edge
/// (live connections close). `disabled` announces it as the user being disabled.
pub(crate) async fn revoke_all<S: AccountStore>(
    st: &AccountsState<S>,
    user: &User,
    before_ms: i64,
    disabled: bool,
) -> Result<(), ApiError> {
    use wire::pb::{self, account_event::Event};
    st.store.revoke_tokens(&user.id, before_ms).await?;
    if let Some(access) = &st.access {
        let r = broker::access::Revocation {
            enterprise: user.enterprise_id.clone(),
            user_id: user.id.clone(),
            before_ms,
            session: String::new(),
        };
        if let Err(e) = access.save_revocation(&r).await {
            directory_failed("revocation", &e);
        }
    }
    if disabled {
        let event = pb::UserDisabled { user_id: user.id.clone(), username: user.username.clone() };
        st.events.emit(&user.enterprise_id, Event::UserDisabled(event)).await;
    } else {
        st.events.tokens_revoked(user, "", before_ms).await;
    }
    Ok(())
}

/// Revokes the access tokens of one login session (a device that logged out), issued before
/// `before_ms`: stored (edges are primed with it at start, also without Redis), in the access
/// directory and, through the bus, at every edge (that device's connections close).
pub(crate) async fn revoke_session<S: AccountStore>(
    st: &AccountsState<S>,
    user: &User,
    session: &str,
    before_ms: i64,
) -> Result<(), ApiError> {
    st.store.revoke_session_tokens(&user.id, session, before_ms).await?;
    if let Some(access) = &st.access {
        let r = broker::access::Revocation {
            enterprise: user.enterprise_id.clone(),
            user_id: user.id.clone(),
            before_ms,
            session: session.to_owned(),
        };
        if let Err(e) = access.save_revocation(&r).await {
            directory_failed("revocation", &e);
        }
    }
    st.events.tokens_revoked(user, session, before_ms).await;
    Ok(())
}

/// A directory write failed after the change was stored. The change is still announced on the
/// bus (running edges apply it), and `hermes up` refills the directories from the database at
/// start; counted and logged here.
pub(crate) fn directory_failed(what: &str, error: &str) {
    metrics::counter!("hermes_accounts_directory_failures_total").increment(1);
    tracing::error!(error, "{what} not written to the edges' directory");
}
