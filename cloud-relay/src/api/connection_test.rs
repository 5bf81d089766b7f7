//! `POST /v1/agents/{agent}/connections/{connection}/test`: the agent runs the
//! connection's configured test request and its report comes back as JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use postern_protocol::{ChannelTarget, ErrorCode};
use tokio::io::AsyncReadExt;

use super::ApiError;
use super::agents::find;
use crate::channel_pool::CallError;
use crate::context::RelayContext;

/// A report is small; anything longer is not one.
const MAX_REPORT: u64 = 256 * 1024;

pub async fn run(
    State(ctx): State<Arc<RelayContext>>,
    Path((agent, connection)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = find(&ctx, agent).await?;
    let serving = super::call::serving(&ctx, &record, &connection)?;
    let (live, name, _in_flight) = super::call::call_slot(&ctx, &record, &connection, serving)?;
    // The whole test, opening its channel included, is one wait of `call_timeout`.
    let deadline = tokio::time::Instant::now() + ctx.config.call_timeout;
    let opened = live.channels.open_oneshot(ChannelTarget::Test(name));
    let channel = match tokio::time::timeout_at(deadline, opened).await {
        Err(_) => return Err(timed_out()),
        Ok(Ok(channel)) => channel,
        Ok(Err(CallError::Refused { reason, .. })) => {
            return Err(super::call::refused(&record.name, &connection, &reason));
        }
        Ok(Err(e)) => {
            return Err(ApiError::new(
                ErrorCode::AgentOffline,
                format!(
                    "the tunnel to agent {:?} closed before the test began: {e}",
                    record.name
                ),
            ));
        }
    };
    let mut report = Vec::new();
    let mut stream = channel.take(MAX_REPORT);
    let read = stream.read_to_end(&mut report);
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => {
            return Err(ApiError::new(
                ErrorCode::TunnelError,
                format!("reading the test report: {e}"),
            ));
        }
        Ok(Ok(_)) => {}
    }
    let value = serde_json::from_slice(&report).map_err(|_| {
        ApiError::new(
            ErrorCode::TunnelError,
            "the agent sent no valid test report",
        )
    })?;
    Ok(Json(value))
}

fn timed_out() -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamTimeout,
        "the connection test did not finish in time",
    )
}
