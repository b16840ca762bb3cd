//! Administration over HTTP, mirroring the operator CLI: users and login
//! lockouts (auth service), submitters and their keys (registry).
//!
//! The auth service audits its own user and lockout changes (the gateway
//! passes who asked); registry changes are audited here.

use crate::AppState;
use crate::access::{ADMIN, ANY_ROLE, Caller, READ_ADMIN, append_audit};
use crate::problem::Problem;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rpc_contracts::auth::{self, Password, Role, ThrottleScope};
use rpc_contracts::registry;
use rpc_contracts::{Call, KeyId, RpcError, SubmitterId};
use serde::Deserialize;
use time::OffsetDateTime;

fn rpc_problem(e: &RpcError, trace: &str) -> Response {
    Problem::from_rpc(e, trace).into_response()
}

/// Parses a JSON body into `T`, or a `bad_request` naming the body.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], trace: &str) -> Result<T, Response> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message names the field and position, never the value.
        Problem::invalid_param("body", format!("the JSON body does not fit: {e}"), trace)
            .into_response()
    })
}

/// One call for the caller, mapped to a response.
async fn forward<C: Call>(
    state: &AppState,
    caller: &Caller,
    request: &C::Request,
) -> Result<C::Response, Response> {
    state
        .rpc
        .call_with::<C>(request, caller.call_options())
        .await
        .map_err(|e| rpc_problem(&e, &caller.trace_id))
}

/// Audits a registry change made by `caller`.
async fn audit_change(
    state: &AppState,
    caller: &Caller,
    action: &str,
    submitter: &SubmitterId,
    target: Option<String>,
    status: u16,
) {
    let mut record = caller.record(action, "success");
    record.status = Some(status);
    record.submitter_id = Some(submitter.clone());
    record.target = target;
    let _ = append_audit(&state.rpc, record).await;
}

// ---------------------------------------------------------------- users ---

/// `GET /v1/users`.
pub(crate) async fn list_users(State(state): State<AppState>, caller: Caller) -> Response {
    if let Err(r) = caller.require(&state, READ_ADMIN).await {
        return r;
    }
    match forward::<auth::ListUsers>(&state, &caller, &auth::ListUsersRequest {}).await {
        Ok(users) => Json(users).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    username: String,
    roles: Vec<Role>,
    password: String,
}

/// `POST /v1/users` `{username, roles, password}` → 201.
pub(crate) async fn add_user(
    State(state): State<AppState>,
    caller: Caller,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller.require(&state, ADMIN).await {
        return r;
    }
    let new: NewUser = match body(&bytes, &caller.trace_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = auth::AddUserRequest {
        username: new.username,
        roles: new.roles,
        password: Password(new.password),
        actor: Some(caller.username.clone()),
    };
    match forward::<auth::AddUser>(&state, &caller, &request).await {
        Ok(user) => (StatusCode::CREATED, Json(user)).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserChange {
    #[serde(default)]
    roles: Option<Vec<Role>>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// `PATCH /v1/users/{username}` `{roles?, disabled?}`.
pub(crate) async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller.require(&state, ADMIN).await {
        return r;
    }
    let change: UserChange = match body(&bytes, &caller.trace_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = auth::UpdateUserRequest {
        username,
        roles: change.roles,
        disabled: change.disabled,
        actor: Some(caller.username.clone()),
    };
    match forward::<auth::UpdateUser>(&state, &caller, &request).await {
        Ok(user) => Json(user).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordReset {
    password: String,
}

/// `PUT /v1/users/{username}/password` `{password}`: an admin reset; every
/// token of the user stops working.
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller.require(&state, ADMIN).await {
        return r;
    }
    let reset: PasswordReset = match body(&bytes, &caller.trace_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = auth::SetPasswordRequest {
        username,
        password: Password(reset.password),
        current_password: None,
        actor: Some(caller.username.clone()),
    };
    match forward::<auth::SetPassword>(&state, &caller, &request).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `PUT /v1/auth/password` `{current_password, new_password}`: users change
/// their own password; every token they hold (this one included) stops
/// working.
pub(crate) async fn change_own_password(
    State(state): State<AppState>,
    caller: Caller,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller.require(&state, ANY_ROLE).await {
        return r;
    }
    let change: PasswordChange = match body(&bytes, &caller.trace_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = auth::SetPasswordRequest {
        username: caller.username.clone(),
        password: Password(change.new_password),
        current_password: Some(Password(change.current_password)),
        actor: Some(caller.username.clone()),
    };
    match forward::<auth::SetPassword>(&state, &caller, &request).await {
        Ok(_) => {
            state.access.forget(caller.token.jti);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

/// `GET /v1/lockouts`: accounts and addresses with failed logins.
pub(crate) async fn list_lockouts(State(state): State<AppState>, caller: Caller) -> Response {
    if let Err(r) = caller.require(&state, READ_ADMIN).await {
        return r;
    }
    match forward::<auth::ListThrottles>(&state, &caller, &auth::ListThrottlesRequest {}).await {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

/// `DELETE /v1/lockouts/{account|address}/{key}`: clears one entry.
pub(crate) async fn clear_lockout(
    State(state): State<AppState>,
    caller: Caller,
    Path((scope, key)): Path<(String, String)>,
) -> Response {
    if let Err(r) = caller.require(&state, ADMIN).await {
        return r;
    }
    let scope = match scope.as_str() {
        "account" => ThrottleScope::Account,
        "address" => ThrottleScope::Address,
        _ => {
            return Problem::invalid_param(
                "scope",
                "the scope must be `account` or `address`",
                &caller.trace_id,
            )
            .into_response();
        }
    };
    let request = auth::ClearThrottleRequest {
        scope,
        key,
        actor: Some(caller.username.clone()),
    };
    match forward::<auth::ClearThrottle>(&state, &caller, &request).await {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

// ---------------------------------------------------- submitters, keys ---

fn submitter_path(id: String, trace: &str) -> Result<SubmitterId, Response> {
    SubmitterId::parse(id)
        .map_err(|e| Problem::invalid_param("submitter", e, trace).into_response())
}

/// `GET /v1/submitters`.
pub(crate) async fn list_submitters(State(state): State<AppState>, caller: Caller) -> Response {
    if let Err(r) = caller.require(&state, READ_ADMIN).await {
        return r;
    }
    match forward::<registry::ListSubmitters>(&state, &caller, &registry::ListSubmittersRequest {})
        .await
    {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSubmitter {
    submitter_id: String,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /v1/submitters` `{submitter_id, name?}` → 201.
pub(crate) async fn add_submitter(
    State(state): State<AppState>,
    caller: Caller,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller.require(&state, ADMIN).await {
        return r;
    }
    let new: NewSubmitter = match body(&bytes, &caller.trace_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let submitter_id = match submitter_path(new.submitter_id, &caller.trace_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let request = registry::AddSubmitterRequest {
        submitter_id: submitter_id.clone(),
        name: new.name,
    };
    match forward::<registry::AddSubmitter>(&state, &caller, &request).await {
        Ok(s) => {
            audit_change(
                &state,
                &caller,
                "admin.add_submitter",
                &submitter_id,
                None,
                201,
            )
            .await;
            (StatusCode::CREATED, Json(s)).into_response()
        }
        Err(r) => r,
    }
}

/// `GET /v1/submitters/{submitter}/keys`.
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path(submitter): Path<String>,
) -> Response {
    if let Err(r) = caller.require(&state, READ_ADMIN).await {
        return r;
    }
    let submitter_id = match submitter_path(submitter, &caller.trace_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let request = registry::ListKeysRequest { submitter_id };
    match forward::<registry::ListKeys>(&state, &caller, &request).await {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    public_key_pem: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    not_before: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    not_after: Option<OffsetDateTime>,
}

/// `POST /v1/submitters/{submitter}/keys` `{public_key_pem, not_before?,
/// not_after?}` → 201 with the key id.
pub(crate) async fn add_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(submitter): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller.require(&state, ADMIN).await {
        return r;
    }
    let submitter_id = match submitter_path(submitter, &caller.trace_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let new: NewKey = match body(&bytes, &caller.trace_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = registry::AddKeyRequest {
        submitter_id: submitter_id.clone(),
        public_key_pem: new.public_key_pem,
        not_before: new.not_before,
        not_after: new.not_after,
    };
    match forward::<registry::AddKey>(&state, &caller, &request).await {
        Ok(key) => {
            let kid = Some(key.key_id.to_string());
            audit_change(&state, &caller, "admin.add_key", &submitter_id, kid, 201).await;
            (StatusCode::CREATED, Json(key)).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Revocation {
    #[serde(default, with = "time::serde::rfc3339::option")]
    at: Option<OffsetDateTime>,
}

/// `POST /v1/submitters/{submitter}/keys/{key_id}/revoke` `{at?}`.
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((submitter, key_id)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller.require(&state, ADMIN).await {
        return r;
    }
    let submitter_id = match submitter_path(submitter, &caller.trace_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(key_id) = KeyId::parse(key_id) else {
        return Problem::invalid_param("key_id", "not a key id", &caller.trace_id).into_response();
    };
    let revocation: Revocation = if bytes.is_empty() {
        Revocation::default()
    } else {
        match body(&bytes, &caller.trace_id) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
    let request = registry::RevokeKeyRequest {
        submitter_id: submitter_id.clone(),
        key_id: key_id.clone(),
        at: revocation.at,
    };
    match forward::<registry::RevokeKey>(&state, &caller, &request).await {
        Ok(key) => {
            let kid = Some(key_id.to_string());
            audit_change(&state, &caller, "admin.revoke_key", &submitter_id, kid, 200).await;
            Json(key).into_response()
        }
        Err(r) => r,
    }
}
