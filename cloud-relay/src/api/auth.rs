//! API keys on the way in: `check_api_key` finds the caller behind the bearer key
//! (`every_request` runs it under `/v1/`); `AdminOnly` refuses handlers to `call` keys.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;
use postern_logs::{LeftOut, LogBudget};
use postern_protocol::api::ApiKeyScope;
use postern_protocol::headers::REQUEST_ID;
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
/// store (hash, constant-time) or the keys it answered for since it last changed. A key
/// refused is logged with the request's id and the address it came from. Given the head's
/// parts, not the request: its body is not `Sync`, and the check awaits the store.
pub async fn check_api_key(
    ctx: &Arc<RelayContext>,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<ApiCaller, ApiError> {
    let origin = || Origin::of(headers, extensions);
    let refused = |reason: &'static str, error: ApiError| {
        ctx.metrics.api_key_refused(reason);
        error
    };
    let presented = bearer_key(headers)
        .map_err(|message| refused("missing", ApiError::new(ErrorCode::Unauthorized, message)))?;
    let key = SecretToken::parse(SecretKind::ApiKey, presented).map_err(|e| {
        if let Some(left_out) = take(&ctx.malformed_key_lines) {
            let origin = origin();
            tracing::warn!(peer = %origin.peer, request_id = %origin.id, "API request refused: {e}{left_out}");
        }
        refused(
            "malformed",
            ApiError::invalid_token(format!("invalid API key: {e}")),
        )
    })?;
    let record = match ctx.lookups.api_key(&key) {
        Ok(record) => record,
        Err(seen) => {
            let asked = key.clone();
            let found = ctx
                .store_call(move |store| match store.api_key(&asked)? {
                    Some(record) => Ok(Ok(record)),
                    None => store.revoked_api_key_name(&asked).map(Err),
                })
                .await
                .map_err(ApiError::store)?;
            let record = match found {
                Ok(record) => record,
                Err(None) => {
                    if let Some(left_out) = take(&ctx.unknown_key_lines) {
                        let origin = origin();
                        tracing::warn!(peer = %origin.peer, request_id = %origin.id, "API request refused: no such key {key:?}{left_out}");
                    }
                    return Err(refused(
                        "unknown",
                        ApiError::invalid_token("unknown API key"),
                    ));
                }
                Err(Some(name)) => {
                    return Err(refused("revoked", revoked(ctx, &name, origin())));
                }
            };
            ctx.lookups.remember_api_key(seen, &key, &record);
            record
        }
    };
    Ok(ApiCaller {
        name: record.name,
        scope: record.scope,
    })
}

/// A revoked key still sent: named to its sender, who holds it, and in the log (a few
/// lines a minute), where before only a counter showed that some integration still sent
/// a revoked key, and not which.
fn revoked(ctx: &RelayContext, name: &str, origin: Origin) -> ApiError {
    let left_out = take(&ctx.revoked_key_lines);
    if let Some(left_out) = left_out {
        tracing::warn!(key = %name, peer = %origin.peer, request_id = %origin.id, "API request refused: its key was revoked{left_out}");
    }
    ApiError::invalid_token(format!(
        "API key {name:?} was revoked: ask the relay's admin for another"
    ))
}

/// Where a refused key came from, for its log line: the peer's address (a proxy's, behind
/// one) and the request's id, which the caller got back in `x-request-id`.
struct Origin {
    peer: String,
    id: String,
}

impl Origin {
    fn of(headers: &http::HeaderMap, extensions: &http::Extensions) -> Self {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
        // Set by `every_request`, from the caller's own when sane.
        let id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Self { peer, id }
    }
}

/// Whether `budget` lets a line be logged now, and what it adds about those left out.
/// Keys that name no caller are logged a few lines a minute each kind, by their reason or
/// their (non-secret) id: a staging key sent to production, a token in the key's place.
fn take(budget: &Mutex<LogBudget>) -> Option<LeftOut> {
    budget.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// The key in `Authorization: Bearer <key>`, or why there is none: no header, or one
/// of another scheme (a caller that sent Basic is told what to send instead).
fn bearer_key(headers: &http::HeaderMap) -> Result<&str, &'static str> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err("missing API key: send Authorization: Bearer <api key>");
    };
    let value = value.to_str().unwrap_or_default();
    let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(
            "the Authorization scheme must be Bearer: send Authorization: Bearer <api key>",
        );
    }
    match key.trim_start() {
        "" => Err("missing API key: send Authorization: Bearer <api key>"),
        key => Ok(key),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn authorization(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        let value = http::HeaderValue::from_str(value).expect("header");
        headers.insert(http::header::AUTHORIZATION, value);
        headers
    }

    #[test]
    fn a_bearer_key_is_taken_and_another_scheme_named() {
        let missing = Err("missing API key: send Authorization: Bearer <api key>");
        assert_eq!(bearer_key(&http::HeaderMap::new()), missing);
        assert_eq!(bearer_key(&authorization("Bearer")), missing);
        assert_eq!(bearer_key(&authorization("Bearer ")), missing);
        assert_eq!(bearer_key(&authorization("bEaReR  psk_x")), Ok("psk_x"));
        for other in ["Basic YWRtaW46eA==", "psk_x", "Token psk_x"] {
            let refused = bearer_key(&authorization(other)).expect_err(other);
            assert!(
                refused.starts_with("the Authorization scheme must be Bearer"),
                "{other}: {refused}"
            );
        }
    }
}
