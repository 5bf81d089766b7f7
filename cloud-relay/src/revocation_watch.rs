//! Drops live sessions of agents revoked by another process (the CLI writing
//! to the same store): polls SQLite's cheap change marker once a second.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::context::RelayContext;

pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<RelayContext>) {
    let mut last = None;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let marker = match ctx.store_call(|s| s.change_marker()).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot poll the store for revocations");
                continue;
            }
        };
        if last == Some(marker) {
            continue;
        }
        last = Some(marker);
        for live in ctx.registry.all() {
            let id = live.agent_id.clone();
            match ctx.store_call(move |s| s.find_agent(&id)).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    info!(agent = %live.agent_name, "agent revoked elsewhere; dropping its session");
                    ctx.registry.remove_if(&live.agent_id, live.session_id);
                    live.disconnect("agent revoked").await;
                }
                Err(e) => warn!(error = %e, "cannot check agent during revocation poll"),
            }
        }
    }
}
