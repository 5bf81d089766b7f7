//! The agent's link to the relay, on both ends: a write the peer never acknowledges fails
//! within [`USER_TIMEOUT`], as the SSH keepalives would have told had they been sent.
//!
//! russh sends keepalives from its session loop, and that loop waits while a write does
//! not fit the socket (a download, or an upload, in full flow when the link died). That
//! wait was bounded only by the 60 s inactivity timeout, reset just before it, so a link
//! that died under a transfer was noticed after ~60 s instead of ~12 s.

use std::time::Duration;

/// Longer than the keepalives' ~12 s, so an idle link is still theirs to judge.
pub const USER_TIMEOUT: Duration = Duration::from_secs(15);

/// Sets `TCP_USER_TIMEOUT` (and `TCP_NODELAY`) on the link. Where the system has no such
/// option the inactivity timeout still bounds the wait.
pub fn prepare(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    #[cfg(target_os = "linux")]
    socket2::SockRef::from(stream).set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_option_is_on_the_socket() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let stream = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        prepare(&stream)?;
        assert!(stream.nodelay()?);
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket2::SockRef::from(&stream).tcp_user_timeout()?,
            Some(USER_TIMEOUT)
        );
        Ok(())
    }
}
