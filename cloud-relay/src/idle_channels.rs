//! Closes pooled call channels left idle past `idle_channel_timeout`, or ended or written
//! to while idle, in every live session: a burst of calls does not keep them for life.

use std::sync::Arc;
use std::time::Duration;

use crate::context::RelayContext;

/// How often the pools are looked through; a channel closes at most this late.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<RelayContext>) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for live in ctx.registry.all() {
            live.channels.close_idle(ctx.config.idle_channel_timeout);
        }
    }
}
