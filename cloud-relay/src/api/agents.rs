//! Agent management routes: create (token shown once), list, show, revoke
//! (which drops a live session at once).

use postern_protocol::control::EndReason;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use http::StatusCode;
use postern_protocol::api::{AgentCreated, AgentInfo, AgentList, CreateAgent};
use postern_protocol::{ErrorCode, SecretKind};

use super::ApiError;
use super::auth::AdminOnly;
use crate::context::RelayContext;
use crate::secrets::new_token;
use crate::store::AgentRecord;

pub async fn create(
    State(ctx): State<Arc<RelayContext>>,
    AdminOnly(caller): AdminOnly,
    body: Result<Json<CreateAgent>, JsonRejection>,
) -> Result<(StatusCode, Json<AgentCreated>), ApiError> {
    let Json(request) = body.map_err(super::error::json_rejection)?;
    let token = new_token(SecretKind::AgentToken);
    let stored = token.clone();
    let agent = super::awaited::create_shown(
        &ctx,
        "agent",
        move |store| store.create_agent(&request.name, &stored),
        |store, agent: &AgentRecord| store.delete_agent(&agent.id),
    )
    .await
    .map_err(ApiError::store)?;
    tracing::info!(agent = %agent.name, id = %agent.id, by = %caller.name, "agent created");
    Ok((
        StatusCode::CREATED,
        Json(AgentCreated {
            id: agent.id,
            name: agent.name,
            token: token.expose().to_owned(),
        }),
    ))
}

pub async fn list(State(ctx): State<Arc<RelayContext>>) -> Result<Json<AgentList>, ApiError> {
    let agents = ctx
        .store_call(|store| store.list_agents())
        .await
        .map_err(ApiError::store)?;
    Ok(Json(AgentList {
        agents: agents.into_iter().map(|a| info(&ctx, a)).collect(),
    }))
}

pub async fn show(
    State(ctx): State<Arc<RelayContext>>,
    Path(agent): Path<String>,
) -> Result<Json<AgentInfo>, ApiError> {
    let record = find(&ctx, agent).await?;
    Ok(Json(info(&ctx, record)))
}

pub async fn revoke(
    State(ctx): State<Arc<RelayContext>>,
    AdminOnly(caller): AdminOnly,
    Path(agent): Path<String>,
) -> Result<StatusCode, ApiError> {
    let work = ctx.clone();
    let record = ctx
        .to_completion(async move {
            let record = work
                .store_write(move |store| store.revoke_agent(&agent))
                .await?;
            for live in work.registry.sessions_of(&record.id) {
                work.end_session(live, EndReason::Revoked);
            }
            Ok(record)
        })
        .await
        .map_err(ApiError::store)?;
    tracing::info!(agent = %record.name, id = %record.id, by = %caller.name, "agent revoked");
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn find(ctx: &Arc<RelayContext>, agent: String) -> Result<AgentRecord, ApiError> {
    let seen = match ctx.lookups.agent(&agent) {
        Ok(record) => return Ok(record),
        Err(seen) => seen,
    };
    let wanted = agent.clone();
    let record = ctx
        .store_call(move |store| store.find_agent(&wanted))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::new(ErrorCode::AgentNotFound, format!("no agent {agent:?}")))?;
    ctx.lookups.remember_agent(seen, &agent, &record);
    Ok(record)
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn info(ctx: &RelayContext, agent: AgentRecord) -> AgentInfo {
    let live = ctx.registry.get(&agent.id);
    let departure = ctx.registry.departure(&agent.id);
    AgentInfo {
        calls_in_flight: live.as_ref().map_or(0, |l| l.agent_calls_in_flight()),
        last_seen: if live.is_some() {
            Some(rfc3339(SystemTime::now()))
        } else {
            departure.as_ref().map(|d| rfc3339(d.at))
        },
        last_disconnect_reason: departure.map(|d| d.reason),
        online: live.is_some(),
        connected_since: live.as_ref().map(|l| rfc3339(l.since)),
        remote_addr: live.as_ref().map(|l| l.remote_addr.to_string()),
        agent_version: live.as_ref().map(|l| l.agent_version.clone()),
        protocol_version: live.as_ref().map(|l| l.protocol_version),
        connections: live.map(|l| l.connections()).unwrap_or_default(),
        id: agent.id,
        name: agent.name,
        created_at: agent.created_at,
    }
}
