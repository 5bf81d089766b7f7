//! API keys on the way in: `check_api_key` finds the caller behind the bearer key
//! (`every_request` runs it under `/v1/`); `AdminOnly` refuses handlers to `call` keys.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;
use postern_protocol::api::ApiKeyScope;
use postern_protocol::{ErrorCode, SecretKind, SecretToken};

use super::ApiError;
use crate::context::RelayContext;

/// Who is calling: the API key's name and scope (never the key).
#[derive(Debug, Clone)]
pub struct ApiCaller {
    pub name: String,
    pub scope: ApiKeyScope,
}

/// The caller behind the request's `Authorization: Bearer <api key>`, checked against the
/// store (hash, constant-time) or the keys it answered for since it last changed.
pub async fn check_api_key(
    ctx: &Arc<RelayContext>,
    headers: &http::HeaderMap,
) -> Result<ApiCaller, ApiError> {
    let refused = |reason: &'static str, message: String| {
        ctx.metrics.api_key_refused(reason);
        ApiError::new(ErrorCode::Unauthorized, message)
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim_start())
        .ok_or_else(|| {
            refused(
                "missing",
                "missing API key: send Authorization: Bearer <api key>".into(),
            )
        })?;
    let key = SecretToken::parse(SecretKind::ApiKey, presented)
        .map_err(|e| refused("malformed", format!("invalid API key: {e}")))?;
    let record = match ctx.lookups.api_key(&key) {
        Ok(record) => record,
        Err(seen) => {
            let asked = key.clone();
            let record = ctx
                .store_call(move |store| store.api_key(&asked))
                .await
                .map_err(ApiError::store)?
                .ok_or_else(|| refused("unknown", "unknown or revoked API key".into()))?;
            ctx.lookups.remember_api_key(seen, &key, &record);
            record
        }
    };
    Ok(ApiCaller {
        name: record.name,
        scope: record.scope,
    })
}

/// A handler argument that only an `admin` key gets past (403 `forbidden`).
pub struct AdminOnly(pub ApiCaller);

impl<S: Send + Sync> FromRequestParts<S> for AdminOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<ApiCaller>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "no API key checked"))?;
        if caller.scope != ApiKeyScope::Admin {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "API key {:?} has scope {}; this needs an admin key",
                    caller.name, caller.scope
                ),
            ));
        }
        Ok(Self(caller))
    }
}
