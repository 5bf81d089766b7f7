//! API key management routes (admin only): create (key shown once), list
//! (names and scopes, never keys), revoke (stops working at once).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use http::StatusCode;
use postern_protocol::SecretKind;
use postern_protocol::api::{ApiKeyCreated, ApiKeyInfo, ApiKeyList, CreateApiKey};
use tracing::info;

use super::ApiError;
use super::auth::AdminOnly;
use crate::context::RelayContext;
use crate::secrets::new_token;
use crate::store::ApiKeyRecord;

pub async fn create(
    State(ctx): State<Arc<RelayContext>>,
    AdminOnly(caller): AdminOnly,
    body: Result<Json<CreateApiKey>, JsonRejection>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    let Json(request) = body.map_err(super::error::json_rejection)?;
    let key = new_token(SecretKind::ApiKey);
    let stored = key.clone();
    let kept = stored.clone();
    let record = super::awaited::create_shown(
        &ctx,
        "API key",
        move |store| store.create_scoped_api_key(&request.name, &kept, request.scope),
        move |store, _| store.delete_api_key(&stored),
    )
    .await
    .map_err(ApiError::store)?;
    info!(key = %record.name, scope = %record.scope, by = %caller.name, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            name: record.name,
            key: key.expose().to_owned(),
            scope: record.scope,
        }),
    ))
}

pub async fn list(
    State(ctx): State<Arc<RelayContext>>,
    _admin: AdminOnly,
) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = ctx
        .store_call(|store| store.list_api_keys())
        .await
        .map_err(ApiError::store)?;
    Ok(Json(ApiKeyList {
        api_keys: keys.into_iter().map(info).collect(),
    }))
}

pub async fn revoke(
    State(ctx): State<Arc<RelayContext>>,
    AdminOnly(caller): AdminOnly,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let record = ctx
        .store_write(move |store| store.revoke_api_key(&name))
        .await
        .map_err(ApiError::store)?;
    info!(key = %record.name, by = %caller.name, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

pub fn info(record: ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        name: record.name,
        scope: record.scope,
        created_at: record.created_at,
    }
}
