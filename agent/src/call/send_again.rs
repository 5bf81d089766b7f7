//! Sends a call's request, and once more where that is safe: after a quick close of an
//! idle connection (safe methods only), or with a new token after a cached one's 401.

use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use postern_protocol::ErrorCode;
use tracing::{info, warn};
use url::Url;

use super::{CallContext, RequestBody, send};
use crate::jwt::Bearer;

/// How soon after the send a close without an answer is taken as the server letting an
/// idle connection go (it comes within a round trip).
const QUICK_CLOSE: Duration = Duration::from_secs(1);

/// Why a request went out more than once.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SentAgain {
    /// The internal server closed the connection at once, without answering.
    pub after_close: bool,
    /// It refused the cached token; a new one went with the request.
    pub with_new_token: bool,
}

/// Whether a 401 on `bearer` is sent again with a new token: only a token we had cached
/// can be stale; a fresh one refused would be refused again. Such a call reads a small
/// body into memory before sending, to have it for the second time.
pub(crate) fn may_retry_refused(bearer: Option<&Bearer>) -> bool {
    bearer.is_some_and(|b| b.cached)
}

/// Sends the request, and once more as said above. A call and a connection test both
/// go through here, so a test fails only where a call would.
pub(crate) async fn send_with_retries(
    ctx: &CallContext,
    method: &Method,
    url: &Url,
    headers: &HeaderMap,
    bearer: Option<Bearer>,
    body: RequestBody,
) -> Result<(reqwest::Response, SentAgain), (ErrorCode, String)> {
    let conn = &ctx.connection;
    let mut again = SentAgain::default();
    let may_retry = may_retry_refused(bearer.as_ref());
    let replay = body.replayable();
    let sent_at = Instant::now();
    let mut upstream = match send(ctx, method, url, headers, bearer.as_ref(), body).await {
        // The server let an idle connection go just as the call went out on it (one that
        // closes them sooner than the agent's 4 s): a safe method goes once more, on
        // another connection, as a browser or nginx would send it. Only a close that came
        // at once: one after a while (a worker killed by its server's timeout) is the
        // request's doing, and sending it again would double the wait for the same end.
        Err(failed)
            if failed.closed_unanswered
                && sent_at.elapsed() < QUICK_CLOSE
                && method.is_safe()
                && let Some(bytes) = &replay =>
        {
            info!(connection = %conn.name, %method, "the internal server closed the connection without answering; sending the call once more");
            again.after_close = true;
            let body = RequestBody::Buffered(bytes.clone());
            send(ctx, method, url, headers, bearer.as_ref(), body).await?
        }
        sent => sent?,
    };
    if upstream.status() != StatusCode::UNAUTHORIZED {
        return Ok((upstream, again));
    }
    let (Some(source), Some(used)) = (&ctx.bearer, &bearer) else {
        return Ok((upstream, again));
    };
    if !may_retry {
        // A token made for this very call, refused: the refusal is the request's, and
        // dropping the token would cost the next call an exchange for nothing (a path
        // refusing every call, reached between larger uploads that dropped tokens).
        refused_anew(conn, source, &upstream);
        return Ok((upstream, again));
    }
    // Dropped even when this call cannot be retried, so the next gets a new one.
    source.invalidate(&used.header);
    let Some(replay) = replay else {
        return Ok((upstream, again));
    };
    let fresh = match source.get(conn.timeout).await {
        Ok(fresh) => fresh,
        // The server's own 401 (its `WWW-Authenticate`) tells the caller more.
        Err(e) => {
            warn!(connection = %conn.name, error = %e, "no new token to retry the refused call with; its 401 goes back as it came");
            return Ok((upstream, again));
        }
    };
    // The same token again: its answer would be too. Made anew (the token endpoint gave
    // the refused token back, or a JWT re-signed in the same second) it says refusing is
    // the request's doing, as a refused retry would; from the cache, the refusals are
    // being ignored already.
    if fresh.header == used.header {
        if !fresh.cached {
            refused_anew(conn, source, &upstream);
        }
        return Ok((upstream, again));
    }
    info!(connection = %conn.name, "upstream refused the cached token; retrying once with a new one");
    again.with_new_token = true;
    let body = RequestBody::Buffered(replay);
    upstream = send(ctx, method, url, headers, Some(&fresh), body).await?;
    if upstream.status() == StatusCode::UNAUTHORIZED {
        refused_anew(conn, source, &upstream);
    }
    Ok((upstream, again))
}

/// A token made for this call was refused (401): the request's doing, or the
/// connection's auth does not suit the internal server (its key, its claims, a clock).
/// The 401 goes back to the caller as it came, and the call counts as served; it is said
/// once a minute, with the server's challenge, so an auth that never works shows in the
/// log and not only in `status="401"`.
fn refused_anew(
    conn: &crate::config::Connection,
    source: &crate::jwt::BearerSource,
    upstream: &reqwest::Response,
) {
    if !source.refused_again() {
        return;
    }
    let challenge: String = upstream
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .map(|v| postern_logs::printable(&String::from_utf8_lossy(v.as_bytes())).into_owned())
        .unwrap_or_else(|| "none".to_owned())
        .chars()
        .take(300)
        .collect();
    warn!(connection = %conn.name, www_authenticate = %challenge, "the internal server refused (401) a token made for this call: if every call is refused, the connection's key, its claims (aud, iss, sub…) or a clock (exp, iat, nbf) do not suit it; `postern jwt sign` and `jwt decode` show what is sent; said at most once a minute");
}
