//! The TCP connection to a relay: each address its name resolves to in turn, and the
//! link set up to give up on a peer gone silent ([`postern_protocol::silent_link`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// How long an address may take to accept before the next one is tried: a relay with an
/// IPv6 address behind a firewall that drops IPv6, or a dead node of a round robin, must
/// not use up the whole connect each time with the next address never tried.
pub const PER_ADDRESS: Duration = Duration::from_secs(4);

/// A connection to `relay` (`host:port`), or why there is none, naming each address tried.
/// The last address has no limit of its own: the caller's bounds the whole connect.
pub async fn dial(relay: &str) -> Result<TcpStream, String> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(relay)
        .await
        .map_err(|e| format!("resolving {relay}: {e}"))?
        .collect();
    let stream = first_to_accept(&addresses, PER_ADDRESS).await?;
    postern_protocol::silent_link::prepare(&stream)
        .map_err(|e| format!("setting up the connection: {e}"))?;
    Ok(stream)
}

async fn first_to_accept(
    addresses: &[SocketAddr],
    per_address: Duration,
) -> Result<TcpStream, String> {
    let mut failures = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let connect = TcpStream::connect(address);
        let outcome = if i + 1 == addresses.len() {
            connect.await
        } else {
            match tokio::time::timeout(per_address, connect).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    failures.push(format!("{address}: no answer within {per_address:?}"));
                    continue;
                }
            }
        };
        match outcome {
            Ok(stream) => return Ok(stream),
            // One address: its error alone, as before there were several.
            Err(e) if addresses.len() == 1 => return Err(e.to_string()),
            Err(e) => failures.push(format!("{address}: {e}")),
        }
    }
    if failures.is_empty() {
        return Err("the name resolves to no address".to_owned());
    }
    Err(failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback listener whose accept queue is full: the kernel drops further SYNs, as
    /// a firewall that drops would.
    fn dropping() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any.into()).expect("bind");
        socket.listen(0).expect("listen");
        let address = socket
            .local_addr()
            .expect("address")
            .as_socket()
            .expect("inet");
        // Fills the queue of one (backlog 0 admits one); nobody accepts it.
        let queued = std::net::TcpStream::connect(address).expect("the first connect");
        (socket, queued, address)
    }

    /// An address that never answers costs its share, then the next one is tried; a
    /// refusal moves on at once. Each failure is named.
    #[tokio::test]
    async fn an_address_that_drops_does_not_keep_the_next_from_being_tried() {
        let share = Duration::from_millis(300);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let good = listener.local_addr().expect("address");
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address")
        };
        let (_full, _queued, dropped) = dropping();
        let started = std::time::Instant::now();
        let stream = first_to_accept(&[dropped, refused, good], share)
            .await
            .expect("the third address accepts");
        assert_eq!(stream.peer_addr().expect("peer"), good);
        assert!(started.elapsed() < Duration::from_secs(3));

        let said = first_to_accept(&[dropped, refused], share)
            .await
            .expect_err("none accepts");
        assert!(
            said.contains(&format!("{dropped}: no answer within 300ms"))
                && said.contains(&format!("{refused}: ")),
            "{said}"
        );
        assert!(first_to_accept(&[], share).await.is_err());
    }
}
