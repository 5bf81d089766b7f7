//! Drops live sessions whose credential no longer holds: agents revoked or rotated by
//! another process (the CLI), and old tokens whose grace ran out; drops cached lookups too.

use postern_protocol::control::EndReason;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::context::RelayContext;
use crate::store::{AgentRecord, unix_now};

pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Grace periods end without any write to the store, so look anyway this often.
pub const FULL_CHECK_EVERY: u32 = 5;

pub async fn run(ctx: Arc<RelayContext>) {
    let mut last = None;
    let mut ticks = 0u32;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        ticks = ticks.wrapping_add(1);
        let marker = match ctx.store_call(|s| s.change_marker()).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot poll the store for revocations");
                continue;
            }
        };
        if last == Some(marker) && !ticks.is_multiple_of(FULL_CHECK_EVERY) {
            continue;
        }
        if last != Some(marker) {
            // Another process (the CLI) changed the store: revoked keys must stop working.
            ctx.lookups.clear();
        }
        // Seen only once acted on: a check the store failed is made again next tick.
        if check_sessions(&ctx).await {
            last = Some(marker);
        }
    }
}

/// One store query for all agents, then each live session against its record; the
/// departures of agents no longer in the store are forgotten. False when the store
/// could not be read.
pub async fn check_sessions(ctx: &Arc<RelayContext>) -> bool {
    let live = ctx.registry.all_with_retiring();
    let listed_at = std::time::SystemTime::now();
    let agents = match ctx.store_call(|s| s.list_agents()).await {
        Ok(list) => list
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect::<HashMap<_, _>>(),
        Err(e) => {
            warn!(error = %e, "cannot check sessions against the store");
            return false;
        }
    };
    ctx.registry
        .forget_gone(listed_at, |id| agents.contains_key(id));
    let now = unix_now();
    // Looked for first, so the store is written only when a grace has run out.
    if agents
        .values()
        .any(|a| a.old_token_until.is_some_and(|t| t > 0 && t <= now))
    {
        match ctx.store_write(move |s| s.end_past_graces(now)).await {
            Ok(ended) => info!(ended, "old tokens whose grace ran out ended for good"),
            // A store it cannot write: the grace stays over while the clock holds.
            Err(e) => debug!(error = %e, "cannot record the end of a grace"),
        }
    }
    for session in live {
        let Some(reason) = ended(agents.get(&session.agent_id), session.token_version, now) else {
            continue;
        };
        info!(agent = %session.agent_name, reason = reason.describe(), "credential no longer valid; dropping its session");
        ctx.end_session(session, reason);
    }
    true
}

/// Why a session that logged in with `token_version` must end, given its agent's record
/// now (`None`: revoked); `None` while its credential holds.
pub fn ended(agent: Option<&AgentRecord>, token_version: i64, now: i64) -> Option<EndReason> {
    match agent {
        None => Some(EndReason::Revoked),
        Some(agent) if !agent.accepts_session(token_version, now) => Some(EndReason::TokenRotated),
        Some(_) => None,
    }
}
