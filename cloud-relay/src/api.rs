//! The relay's HTTP API: `fn router()` so tests can drive it without a socket;
//! every `/v1` route needs `Authorization: Bearer <api key>`.

pub mod agents;
pub mod call;
pub mod error;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
use postern_protocol::{ErrorCode, SecretKind, SecretToken};

use crate::context::RelayContext;
pub use error::ApiError;

pub fn router(ctx: Arc<RelayContext>) -> Router {
    let v1 = Router::new()
        .route("/v1/agents", get(agents::list).post(agents::create))
        .route(
            "/v1/agents/{agent}",
            get(agents::show).delete(agents::revoke),
        )
        .route(
            "/v1/agents/{agent}/connections/{connection}/http",
            any(call::call),
        )
        .route(
            "/v1/agents/{agent}/connections/{connection}/http/",
            any(call::call),
        )
        .route(
            "/v1/agents/{agent}/connections/{connection}/http/{*path}",
            any(call::call),
        )
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_api_key));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(v1)
        .fallback(not_found)
        .with_state(ctx)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// Checks the bearer API key against the store (hash, constant-time).
async fn require_api_key(
    State(ctx): State<Arc<RelayContext>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing API key: send Authorization: Bearer <api key>",
            )
        })?;
    let key = SecretToken::parse(SecretKind::ApiKey, presented)
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, format!("invalid API key: {e}")))?;
    let name = ctx
        .store_call(move |store| store.api_key_name(&key))
        .await
        .map_err(ApiError::store)?;
    if name.is_none() {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "unknown or revoked API key",
        ));
    }
    Ok(next.run(request).await)
}
