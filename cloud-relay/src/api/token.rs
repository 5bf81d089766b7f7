//! `POST /v1/agents/{agent}/token`: a new token for an agent (admin only). The
//! old one dies at once with its live session, unless a grace period is asked for.

use crate::revocation_watch::ended;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, State};
use http::HeaderMap;
use postern_protocol::api::{RotateToken, TokenRotated};
use postern_protocol::{ErrorCode, SecretKind, SecretToken};
use tracing::info;

use super::ApiError;
use super::auth::AdminOnly;
use crate::context::RelayContext;
use crate::secrets::new_token;
use crate::store::Rotation;
use crate::store::{StoreError, unix_now};

/// Longer overlaps defeat the point of rotating.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

pub async fn rotate(
    State(ctx): State<Arc<RelayContext>>,
    AdminOnly(caller): AdminOnly,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenRotated>, ApiError> {
    let body = body.map_err(|e| super::error::body_refused(e.status(), e.body_text()))?;
    // The body is optional (no options), whatever its content type; one that is there
    // is JSON, checked by the same extractor as on the other routes.
    let request: RotateToken = if body.iter().all(u8::is_ascii_whitespace) {
        RotateToken::default()
    } else {
        let mut json = axum::extract::Request::new(axum::body::Body::from(body));
        *json.headers_mut() = headers;
        let Json(request) = Json::from_request(json, &())
            .await
            .map_err(super::error::json_rejection)?;
        request
    };
    let grace = parse_grace(request.grace.as_deref())
        .map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
    let outcome = rotate_agent_token(&ctx, agent, grace).await?;
    info!(agent = %outcome.name, by = %caller.name, grace_s = grace.map(|g| g.as_secs()), "agent token rotated");
    Ok(Json(outcome))
}

/// `"5m"` → 5 minutes; `None` and `"0s"` mean no grace. A blank one is refused: a
/// template whose variable was unset (`{"grace":"$GRACE"}`) must not end the token now.
pub fn parse_grace(text: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(text) = text.map(str::trim) else {
        return Ok(None);
    };
    if text.is_empty() {
        return Err(
            "grace is empty: give a duration like \"5m\", or \"0s\" to end the old token now"
                .to_owned(),
        );
    }
    let grace = humantime::parse_duration(text)
        .map_err(|e| format!("grace {text:?} is not a duration like \"5m\": {e}"))?;
    if grace > MAX_GRACE {
        return Err(format!("grace {text:?} is longer than the 24 h maximum"));
    }
    Ok((!grace.is_zero()).then_some(grace))
}

/// Stores the new token and, without a grace period, drops the live session at once.
pub async fn rotate_agent_token(
    ctx: &Arc<RelayContext>,
    agent: String,
    grace: Option<Duration>,
) -> Result<TokenRotated, ApiError> {
    let token = new_token(SecretKind::AgentToken);
    let stored = token.clone();
    let until = grace.map(grace_end);
    let work = ctx.clone();
    let (_awaiting, awaited) = super::awaited::awaiting();
    let record = ctx
        .to_completion(async move {
            // Rolled back if nobody waits for the new token any more: the old one goes on.
            let sessions = work.clone();
            // A live session on the current token makes it used, even before its login's
            // mark is in the store.
            let in_use = move |record: &crate::store::AgentRecord| {
                sessions
                    .registry
                    .sessions_of(&record.id)
                    .iter()
                    .any(|live| live.token_version == record.token_version)
            };
            let record = work
                .store_write(move |store| {
                    store.rotate_token(&agent, &stored, until, &in_use, &mut |_| awaited.still())
                })
                .await
                .inspect_err(|e| {
                    if matches!(e, StoreError::NotShown(_)) {
                        info!("token rotation for a request given up on rolled back: the old token goes on");
                    }
                })?;
            // Out of the registry before the answer, so no call reaches them after it.
            for live in work.registry.sessions_of(&record.agent.id) {
                if let Some(reason) = ended(Some(&record.agent), live.token_version, unix_now()) {
                    work.end_session(live, reason);
                }
            }
            Ok(record)
        })
        .await
        .map_err(ApiError::store)?;
    Ok(rotated(&record, &token, until))
}

/// The answer to a rotation, as the API and the CLI's `--json` give it.
pub fn rotated(rotation: &Rotation, token: &SecretToken, until: Option<i64>) -> TokenRotated {
    TokenRotated {
        id: rotation.agent.id.clone(),
        name: rotation.agent.name.clone(),
        token: token.expose().to_owned(),
        old_token_valid_until: until.map(rfc3339),
        earlier_grace_cut: rotation.grace_cut.map(rfc3339),
        replaced_unused_token: rotation.replaced_unused,
    }
}

/// When a grace starting now ends, in the store's whole unix seconds: rounded up, so a
/// grace is never cut short.
pub fn grace_end(grace: Duration) -> i64 {
    (SystemTime::now() + grace)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |end| end.as_secs_f64().ceil() as i64)
}

/// Unix seconds as `old_token_valid_until` shows them.
pub fn rfc3339(unix: i64) -> String {
    super::agents::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
}
