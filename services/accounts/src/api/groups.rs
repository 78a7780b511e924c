//! Groups: `{eid}/im/group/{name}` is read and written by the group's members only (the ACL's
//! `%g`). Users create groups (and own them), owners add, promote and remove members, any member
//! may leave, and a group always keeps an owner. Users reach their enterprise's groups under
//! `/v1/groups`; the operator and the enterprise's admins reach any group of the enterprise
//! under `/v1/enterprises/{enterprise}/groups`. Someone who is neither a member nor an admin is
//! told that a group does not exist, exactly as when it does not.
//!
//! Every membership change is stored, then written to the edges' relation directory (read at
//! CONNECT), then announced on the bus (`GroupMembershipChanged`, applied by running edges).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use wire::pb::{self, account_event::Event};

use super::{
    Body, OptionalBody, Page, Params, Shared, Since, account_name, admin_of, caller, check_text, directory_failed,
    page_json, taken,
};
use crate::error::ApiError;
use crate::store::{AccountStore, Group, Role, User};

/// Who acts on a group, decided once per request from how they called.
enum Actor<'a> {
    /// The operator or an admin of the enterprise: any group of it, as its owners could.
    Admin,
    /// A user: what their membership allows.
    User(&'a User),
}

impl<'a> Actor<'a> {
    fn from_user(user: &'a User) -> Actor<'a> {
        // An admin could do the same through the admin routes; refusing it here would only
        // send them there.
        if user.admin { Actor::Admin } else { Actor::User(user) }
    }

    /// Whether the actor is the user `username` (in its stored spelling).
    fn is(&self, username: &str) -> bool {
        matches!(self, Actor::User(u) if u.username.eq_ignore_ascii_case(username))
    }
}

/// What the actor may do in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Manage its members: an owner, or an admin.
    Manage,
    /// Read it, and leave it.
    Member,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGroup {
    name: String,
    #[serde(default)]
    display_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGroupFor {
    name: String,
    #[serde(default)]
    display_name: String,
    /// The username of its first owner: a group always has one.
    owner: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberUpdate {
    /// `true` makes the user an owner, `false` a plain member; left out, a member keeps their
    /// role and a newcomer is a plain member.
    owner: Option<bool>,
}

/// `POST /v1/groups`: the caller creates a group of their enterprise and is its owner.
pub(crate) async fn create<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Body(req): Body<NewGroup>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    create_group(&st, &me.enterprise_id, &req.name, req.display_name, &me).await
}

/// `POST /v1/enterprises/{enterprise}/groups`: the operator or an admin creates a group for
/// `owner`.
pub(crate) async fn admin_create<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Body(req): Body<NewGroupFor>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let owner = find_user(&st, &e.id, &req.owner).await?;
    create_group(&st, &e.id, &req.name, req.display_name, &owner).await
}

async fn create_group<S: AccountStore>(
    st: &Shared<S>,
    enterprise_id: &str,
    name: &str,
    display_name: String,
    owner: &User,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stored = account_name("name", name)?;
    // Shown as typed: the display name keeps the capitals the name has lost.
    let display = if display_name.trim().is_empty() { name.to_owned() } else { display_name };
    check_text("display_name", &display, 128)?;
    let group = st
        .store
        .create_group(enterprise_id, &stored, &display, &owner.id)
        .await
        .map_err(|e| taken(e, format!("a group `{stored}` in `{enterprise_id}`")))?;
    announce(st, &group, &owner.username, true).await;
    Ok((StatusCode::CREATED, Json(group_json(st, &group).await?)))
}

/// `GET /v1/groups?since=V`: the caller's memberships changed after version `V`, leaving ones
/// included (`member: false`); all current ones when `V` is 0.
pub(crate) async fn mine<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Params(q): Params<Since>,
) -> Result<Json<Value>, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    let since = q.since.max(0);
    let groups = st.store.groups_since(&me.id, since).await?;
    let version = groups.iter().map(|g| g.version).max().unwrap_or(since);
    Ok(Json(json!({ "version": version, "full": since == 0, "groups": groups })))
}

/// `GET /v1/enterprises/{enterprise}/groups`: every group of the enterprise, paged by name.
pub(crate) async fn admin_list<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Params(page): Params<Page>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    if page.org_unit.is_some() {
        return Err(ApiError::bad_request("groups have no `org_unit`"));
    }
    let limit = page.limit()?;
    let groups = st.store.list_groups(&e.id, &page.after, limit).await?;
    let next = (groups.len() as i64 == limit).then(|| groups.last().map(|g| g.name.clone())).flatten();
    Ok(page_json("groups", json!(groups), next))
}

/// `GET /v1/groups/{group}`: the group and its members, for its members.
pub(crate) async fn show<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    let (group, _) = find_group(&st, &me.enterprise_id, &group, &Actor::from_user(&me)).await?;
    Ok(Json(group_json(&st, &group).await?))
}

pub(crate) async fn admin_show<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((enterprise, group)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    let (group, _) = find_group(&st, &e.id, &group, &Actor::Admin).await?;
    Ok(Json(group_json(&st, &group).await?))
}

/// `PUT /v1/groups/{group}/members/{username}`: an owner adds a user of the enterprise, or
/// changes their role. Idempotent.
pub(crate) async fn put_member<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((group, username)): Path<(String, String)>,
    OptionalBody(req): OptionalBody<MemberUpdate>,
) -> Result<Json<Value>, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    set_member(&st, &me.enterprise_id, &group, &username, req, Actor::from_user(&me)).await
}

pub(crate) async fn admin_put_member<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((enterprise, group, username)): Path<(String, String, String)>,
    OptionalBody(req): OptionalBody<MemberUpdate>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    set_member(&st, &e.id, &group, &username, req, Actor::Admin).await
}

async fn set_member<S: AccountStore>(
    st: &Shared<S>,
    enterprise_id: &str,
    group: &str,
    username: &str,
    req: MemberUpdate,
    actor: Actor<'_>,
) -> Result<Json<Value>, ApiError> {
    let (group, access) = find_group(st, enterprise_id, group, &actor).await?;
    if access != Access::Manage {
        return Err(ApiError::forbidden(format!("only owners of `{}` may add members or change roles", group.name)));
    }
    let user = find_user(st, enterprise_id, username).await?;
    let role = match req.owner {
        Some(true) => Role::Owner,
        Some(false) => Role::Member,
        None => st.store.group_role(&group.id, &user.id).await?.unwrap_or(Role::Member),
    };
    if st.store.set_membership(&group.id, &user.id, Some(role)).await?.is_some() {
        announce(st, &group, &user.username, true).await;
    }
    Ok(Json(json!({ "group": group.name, "username": user.username, "role": role, "member": true })))
}

/// `DELETE /v1/groups/{group}/members/{username}`: an owner removes a member, or a member
/// leaves. The last owner can do neither.
pub(crate) async fn remove_member<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((group, username)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (_, me) = caller(&st, &headers).await?;
    remove(&st, &me.enterprise_id, &group, &username, Actor::from_user(&me)).await
}

pub(crate) async fn admin_remove_member<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Path((enterprise, group, username)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let e = admin_of(&st, &headers, &enterprise).await?;
    remove(&st, &e.id, &group, &username, Actor::Admin).await
}

async fn remove<S: AccountStore>(
    st: &Shared<S>,
    enterprise_id: &str,
    group: &str,
    username: &str,
    actor: Actor<'_>,
) -> Result<StatusCode, ApiError> {
    let (group, access) = find_group(st, enterprise_id, group, &actor).await?;
    let username = account_name("username", username)?;
    if access != Access::Manage && !actor.is(&username) {
        return Err(ApiError::forbidden(format!("only owners of `{}` may remove others", group.name)));
    }
    let user = find_user(st, enterprise_id, &username).await?;
    match st.store.set_membership(&group.id, &user.id, None).await? {
        Some(_) => {
            announce(st, &group, &user.username, false).await;
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found(format!("`{}` is not a member of `{}`", user.username, group.name))),
    }
}

/// The group `name` of the enterprise, and what the actor may do in it. To someone who may
/// not see it, it does not exist: the answer is the same as for a name nobody uses.
async fn find_group<S: AccountStore>(
    st: &Shared<S>,
    enterprise_id: &str,
    name: &str,
    actor: &Actor<'_>,
) -> Result<(Group, Access), ApiError> {
    let name = account_name("group", name)?;
    let absent = || ApiError::not_found(format!("no group `{name}` you are a member of"));
    let group = st.store.group_by_name(enterprise_id, &name).await?.ok_or_else(absent)?;
    let access = match actor {
        Actor::Admin => Access::Manage,
        Actor::User(u) => match st.store.group_role(&group.id, &u.id).await? {
            Some(Role::Owner) => Access::Manage,
            Some(Role::Member) => Access::Member,
            None => return Err(absent()),
        },
    };
    Ok((group, access))
}

async fn find_user<S: AccountStore>(st: &Shared<S>, enterprise_id: &str, username: &str) -> Result<User, ApiError> {
    let username = account_name("username", username)?;
    st.store
        .user_by_name(enterprise_id, &username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user `{username}` in this enterprise")))
}

/// The group as the API shows it: its names, when it was made and its members with their roles.
async fn group_json<S: AccountStore>(st: &Shared<S>, group: &Group) -> Result<Value, ApiError> {
    let members = st.store.group_members(&group.id).await?;
    let mut body = json!(group);
    body["members"] = json!(members);
    Ok(body)
}

/// A stored membership change reaches the edges: first the directory they load a user's groups
/// from at CONNECT, then the event that running edges apply at once.
async fn announce<S: AccountStore>(st: &Shared<S>, group: &Group, username: &str, member: bool) {
    if let Some(dir) = &st.directory
        && let Err(e) = dir.set_member(&group.enterprise_id, &group.name, username, member).await
    {
        directory_failed("group membership", &e);
    }
    let change = pb::GroupMembershipChanged { group: group.name.clone(), username: username.to_owned(), member };
    st.events.emit(&group.enterprise_id, Event::GroupMembershipChanged(change)).await;
}
