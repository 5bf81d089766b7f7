//! A login the relay ends with its own words rather than a refusal (its store failing or too
//! slow, an agent with all its connections): the loop disconnects, the handler then fails.
//!
//! The handler cannot reach the session while it answers a login, and a refusal would read
//! as a bad token to the agent. So it leaves the login unanswered and waits (or gives up the
//! store check the timeout overtook); the loop, which holds the session's handle, queues the
//! disconnect and lets the handler fail, and russh then writes the queued disconnect instead
//! of an answer (russh patch 15).

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Why the store failing ended a login: the agent logs it, and retries at its usual pace.
pub const STORE_UNAVAILABLE: &str = "the relay's store is unavailable, so it could not check the token (the relay's trouble, not the token's); try again later";

/// Why a login whose token the store had not checked by the authentication timeout was
/// ended (see `ssh_server`'s `Stage::Checking`): the relay's slowness, not the token's.
pub const CHECK_TOO_SLOW: &str = "the relay could not check the token in time, its store being slow (the relay's trouble, not the token's); try again later";

/// Why a login of an agent with all its connections was ended, at the authentication
/// timeout (see `ssh_server`'s `Stage::Busy`).
pub const AGENT_BUSY: &str = "this agent's token holds the most connections the relay allows one agent (another agent with the same token, or connections a dying link left behind); try again later";

/// One connection's login ending: its reason, the handler's ask and the loop's answer.
#[derive(Default)]
pub struct LoginEnd {
    reason: Mutex<Option<&'static str>>,
    now: CancellationToken,
    sent: CancellationToken,
}

impl LoginEnd {
    /// For the handler: ends the login with `why`, at once or (not `at_once`) when the
    /// authentication timeout comes. Returns once the disconnect is queued, with the error
    /// the handler fails the login with; the session is dropped if it never is.
    pub async fn end(&self, why: &'static str, at_once: bool) -> russh::Error {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        if at_once {
            self.now.cancel();
        }
        self.ended().await;
        russh::Error::Disconnect
    }

    /// For the loop: resolves when the handler asks for the login to end at once.
    pub async fn asked(&self) {
        self.now.cancelled().await;
    }

    /// For the loop: the reason a handler waits with, if one does.
    pub fn reason(&self) -> Option<&'static str> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the handler: resolves once the loop has queued a disconnect (the handler's
    /// login, if it still runs, should fail now) or is gone.
    pub async fn ended(&self) {
        self.sent.cancelled().await;
    }

    /// For the loop, once the disconnect is queued: the handler may fail the login.
    pub fn sent(&self) {
        self.sent.cancel();
    }
}

/// Held by the connection's loop: however the loop ends, a handler that asks later (a
/// store check that outlived the authentication timeout, whose loop already closed the
/// connection) is let go at once. Waiting for a disconnect no loop will queue, it would
/// hold its session task, and its socket, for ever.
pub struct ReleaseOnDrop(pub Arc<LoginEnd>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.sent();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_login_ended_after_its_loop_is_gone_is_let_go() {
        let end = Arc::new(LoginEnd::default());
        drop(ReleaseOnDrop(end.clone()));
        let late = tokio::time::timeout(Duration::from_secs(5), end.end(STORE_UNAVAILABLE, true));
        assert!(
            late.await.is_ok(),
            "the handler waits for a loop that is gone"
        );
    }

    #[tokio::test]
    async fn a_login_ended_while_its_loop_runs_waits_for_the_disconnect() {
        let end = Arc::new(LoginEnd::default());
        let _loop = ReleaseOnDrop(end.clone());
        let asked = tokio::time::timeout(Duration::from_millis(200), end.end(AGENT_BUSY, false));
        assert!(
            asked.await.is_err(),
            "let go before the disconnect was queued"
        );
        assert_eq!(end.reason(), Some(AGENT_BUSY));
    }
}
