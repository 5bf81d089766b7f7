//! A login the relay ends with its own words rather than a refusal (its store failing, an
//! agent with all its connections): the handler asks, the connection's loop disconnects.
//!
//! The handler cannot reach the session while it answers a login, and a refusal would read
//! as a bad token to the agent. So it leaves the login unanswered and waits; the loop, which
//! holds the session's handle, queues the disconnect and lets the handler fail, and russh
//! then writes the queued disconnect instead of an answer (russh patch 15).

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// Why the store failing ended a login: the agent logs it, and retries at its usual pace.
pub const STORE_UNAVAILABLE: &str = "the relay's store is unavailable, so it could not check the token (the relay's trouble, not the token's); try again later";

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
        self.sent.cancelled().await;
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

    /// For the loop, once the disconnect is queued: the handler may fail the login.
    pub fn sent(&self) {
        self.sent.cancel();
    }
}
