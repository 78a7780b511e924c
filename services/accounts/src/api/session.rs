//! Sessions: password login (rate limited, with lockout) to an MQTT access token and a refresh
//! token; refresh (rotating, with reuse detection); logout.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use wire::token::AccessClaims;

use super::{Body, ClientIp, Shared, account_name, caller, disabled, revoke_all, revoke_session, verify_password};
use crate::error::ApiError;
use crate::files::sha256_hex;
use crate::limiter::Throttled;
use crate::store::{AccountStore, Contact, RefreshUse, User, new_id, now_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    enterprise: String,
    username: String,
    password: String,
}

pub(crate) fn contacts_json(contacts: &[Contact], since: i64) -> Value {
    let version = contacts.iter().map(|c| c.version).max().unwrap_or(since);
    json!({ "version": version, "full": since == 0, "contacts": contacts })
}

fn throttled(t: Throttled) -> ApiError {
    let (scope, what) = match t {
        Throttled::Address { .. } => ("address", "too many login attempts from this address"),
        Throttled::AccountRate { .. } => ("account_rate", "too many login attempts on this account"),
        Throttled::Account { .. } => ("account", "this account is locked after failed logins"),
    };
    metrics::counter!("hermes_accounts_logins_throttled_total", "scope" => scope).increment(1);
    // Rounded up: a client that waits this long finds the window or the lockout over.
    let secs = u64::try_from(t.retry_after().as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1);
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", format!("{what}: retry in {secs} s"));
    e.retry_after = Some(secs);
    e
}

/// The login guard's store (Redis) failed: the login is refused, whatever the password, so
/// that an outage neither lifts the limits nor tells a right password from a wrong one.
fn guard_unavailable(error: String) -> ApiError {
    metrics::counter!("hermes_accounts_login_guard_failures_total").increment(1);
    tracing::error!(%error, "login refused: the login limiter's store cannot be reached");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "logins are unavailable for a moment: the login limiter cannot be reached, retry later",
    )
}

pub(crate) async fn login<S: AccountStore>(
    State(st): State<Shared<S>>,
    ClientIp(ip): ClientIp,
    Body(req): Body<Login>,
) -> Result<Json<Value>, ApiError> {
    // Names are checked first: the limiter keys on them, so they must stay small, and on one
    // spelling, so that `ALICE` counts against the same account as `alice`.
    let enterprise = account_name("enterprise", &req.enterprise)?;
    let username = account_name("username", &req.username)?;
    let account = format!("{enterprise}/{username}");
    st.login_guard.attempt(ip, &account).await.map_err(guard_unavailable)?.map_err(throttled)?;
    let found = match st.store.enterprise_by_name(&enterprise).await? {
        Some(e) => st.store.user_by_name(&e.id, &username).await?,
        None => None,
    };
    // Unknown users cost an argon2 verification too: timing does not tell who exists.
    let hash = found.as_ref().map_or_else(dummy_hash, |u| u.password_hash.clone());
    let verified = verify_password(hash, req.password).await && found.is_some();
    let user = match found {
        Some(u) if verified => u,
        _ => {
            metrics::counter!("hermes_accounts_login_failures_total").increment(1);
            if st.login_guard.failed(&account).await.map_err(guard_unavailable)? {
                metrics::counter!("hermes_accounts_lockouts_total").increment(1);
                tracing::warn!(%account, %ip, "account locked after failed logins");
            }
            return Err(ApiError::unauthorized("unknown enterprise, user or password"));
        }
    };
    st.login_guard.succeeded(&account).await.map_err(guard_unavailable)?;
    if user.disabled {
        return Err(disabled());
    }
    let mut body = issue(&st, &user, &new_id(), now_ms()).await?;
    let contacts = st.store.contacts_since(&user.id, 0).await?;
    body["contacts"] = contacts_json(&contacts, 0);
    metrics::counter!("hermes_accounts_logins_total").increment(1);
    Ok(Json(body))
}

fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| service_kit::password::hash("no such user").unwrap_or_default()).clone()
}

/// A new access token (issued at `issued_at_ms`) and the next refresh token of `family`.
async fn issue<S: AccountStore>(
    st: &Shared<S>,
    user: &User,
    family: &str,
    issued_at_ms: i64,
) -> Result<Value, ApiError> {
    let claims = AccessClaims {
        user_id: user.id.clone(),
        enterprise_id: user.enterprise_id.clone(),
        username: user.username.clone(),
        token_id: new_id(),
        issued_at_ms,
        session_id: family.to_owned(),
    };
    let ttl = Duration::from_secs(st.cfg.token_ttl_secs);
    let access = st.signer.sign(&claims, ttl).map_err(ApiError::internal)?;
    let refresh = format!("hr_{}{}", new_id(), new_id());
    let refresh_ttl = st.cfg.refresh_ttl_secs;
    let expires = now_ms().saturating_add((refresh_ttl as i64).saturating_mul(1000));
    st.store.insert_refresh(&sha256_hex(refresh.as_bytes()), &user.id, family, expires).await?;
    Ok(json!({
        "user_id": user.id,
        "enterprise_id": user.enterprise_id,
        "username": user.username,
        "access_token": access,
        "token_type": "PASETO-v4-public",
        "expires_in": ttl.as_secs(),
        "refresh_token": refresh,
        "refresh_expires_in": refresh_ttl,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refresh {
    refresh_token: String,
}

pub(crate) async fn refresh<S: AccountStore>(
    State(st): State<Shared<S>>,
    Body(req): Body<Refresh>,
) -> Result<Json<Value>, ApiError> {
    let invalid = |why: &str| ApiError::unauthorized(format!("the refresh token {why}: log in again"));
    let started = now_ms();
    let (user_id, family) = match st.store.use_refresh(&sha256_hex(req.refresh_token.as_bytes()), started).await? {
        RefreshUse::Valid { user_id, family } => (user_id, family),
        RefreshUse::Reused { family } => {
            // A used token shown again: it was copied, and either holder may be the thief. End
            // this session and every access token of the user (their connections close).
            st.store.revoke_refresh_family(&family).await?;
            if let Some((user_id, _)) = st.store.refresh_family(&sha256_hex(req.refresh_token.as_bytes())).await?
                && let Some(user) = st.store.user_by_id(&user_id).await?
            {
                let before = now_ms();
                revoke_all(&st, &user, before, false).await?;
            }
            metrics::counter!("hermes_accounts_refresh_reuse_total").increment(1);
            tracing::warn!(%family, "refresh token reused: session revoked");
            return Err(invalid("was already used, so this session is now revoked"));
        }
        RefreshUse::Revoked => return Err(invalid("has been revoked")),
        RefreshUse::Expired => return Err(invalid("has expired")),
        RefreshUse::Unknown => return Err(invalid("is not valid")),
    };
    let user = st.store.user_by_id(&user_id).await?.ok_or_else(|| invalid("is not valid"))?;
    if user.disabled {
        return Err(disabled());
    }
    let body = issue(&st, &user, &family, started).await?;
    // A revocation that committed while we were issuing (logout everywhere, password change,
    // admin): what we just issued must not outlive it.
    let now = st.store.user_by_id(&user.id).await?.ok_or_else(|| invalid("is not valid"))?;
    // So is a logout of this device that came meanwhile: the token was issued under its family.
    if now.disabled || now.tokens_revoked_ms > started || st.store.session_revoked(&family).await? {
        st.store.revoke_refresh_family(&family).await?;
        return Err(invalid("has been revoked"));
    }
    metrics::counter!("hermes_accounts_refreshes_total").increment(1);
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Logout {
    refresh_token: Option<String>,
    /// Also end every other session and revoke every access token (needs the access token).
    #[serde(default)]
    everywhere: bool,
}

pub(crate) async fn logout<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Body(req): Body<Logout>,
) -> Result<StatusCode, ApiError> {
    if req.everywhere {
        let (_, user) = caller(&st, &headers).await?;
        let before = now_ms();
        revoke_all(&st, &user, before, false).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let token =
        req.refresh_token.ok_or_else(|| ApiError::bad_request("send `refresh_token`, or `everywhere: true`"))?;
    // Unknown tokens get the same answer: logout tells nobody which tokens exist.
    if let Some((user_id, family)) = st.store.refresh_family(&sha256_hex(token.as_bytes())).await? {
        st.store.revoke_refresh_family(&family).await?;
        // This device's access tokens end with its session: its connections close.
        if let Some(user) = st.store.user_by_id(&user_id).await? {
            revoke_session(&st, &user, &family, now_ms()).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn public_key<S: AccountStore>(State(st): State<Shared<S>>) -> Json<Value> {
    Json(json!({ "public_key": st.signer.verifier().to_paserk() }))
}
