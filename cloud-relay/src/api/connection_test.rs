//! `POST /v1/agents/{agent}/connections/{connection}/test`: the agent runs the
//! connection's configured test request and its report comes back as JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use postern_protocol::channel_io::ChannelIo;
use postern_protocol::{ChannelTarget, ErrorCode};
use tokio::io::AsyncReadExt;

use super::ApiError;
use super::agents::find;
use crate::context::RelayContext;

/// A report is small; anything longer is not one.
const MAX_REPORT: u64 = 256 * 1024;

pub async fn run(
    State(ctx): State<Arc<RelayContext>>,
    Path((agent, connection)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = find(&ctx, agent).await?;
    let live = ctx.registry.get(&record.id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AgentOffline,
            format!("agent {:?} is not connected", record.name),
        )
    })?;
    let Some(name) = live.serving(&connection) else {
        return Err(ApiError::new(
            ErrorCode::UnknownConnection,
            format!("agent {:?} has no connection {connection:?}", record.name),
        ));
    };
    let channel = live
        .open_channel(&ChannelTarget::Test(name))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::TunnelError,
                format!("the agent did not open a test channel: {e}"),
            )
        })?;
    let mut report = Vec::new();
    let mut stream = ChannelIo::new(channel).take(MAX_REPORT);
    let read = stream.read_to_end(&mut report);
    match tokio::time::timeout(ctx.config.call_timeout, read).await {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::UpstreamTimeout,
                "the connection test did not finish in time",
            ));
        }
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
