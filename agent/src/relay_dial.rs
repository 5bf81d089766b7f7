//! The TCP connection to a relay or its proxy: each address in turn, IPv6 and IPv4 taking
//! turns, the link set to give up on a silent peer. A connection test dials its server so too.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long one address may take to accept before the next is tried: a relay with an
/// IPv6 address behind a firewall that drops IPv6, or a dead node of a round robin, must
/// not use up the whole connect each time with the next address never tried.
pub const PER_ADDRESS: Duration = Duration::from_secs(4);
/// The whole dial, every address included; the SSH handshake has its own time after it.
pub const DIAL_BUDGET: Duration = Duration::from_secs(8);

/// A connection to `relay` (`host:port`), or why there is none, naming each address tried.
pub async fn dial(relay: &str) -> Result<TcpStream, String> {
    dial_to(relay, relay).await
}

/// A connection to `target` (shown as `shown`), as [`dial`]: the relay, or the proxy
/// the agent reaches it through, whose dead node or dropped IPv6 must not stop it either.
pub async fn dial_to(
    target: impl tokio::net::ToSocketAddrs,
    shown: &str,
) -> Result<TcpStream, String> {
    let resolving = tokio::time::timeout(DIAL_BUDGET, tokio::net::lookup_host(target));
    let addresses: Vec<SocketAddr> = match resolving.await {
        Err(_) => {
            return Err(format!(
                "resolving {shown}: no answer within {DIAL_BUDGET:?}"
            ));
        }
        Ok(found) => found
            .map_err(|e| format!("resolving {shown}: {e}"))?
            .collect(),
    };
    let stream = first_to_accept(addresses, PER_ADDRESS, DIAL_BUDGET)
        .await
        .map_err(|failed| failed.to_string())?;
    // Best effort: a kernel without the option (WSL1) still has the session's inactivity
    // timeout, and failing the dial for it would keep the agent offline for good.
    if let Err(e) = postern_protocol::silent_link::prepare(&stream) {
        tracing::warn!(to = %shown, error = %e, "cannot set TCP_USER_TIMEOUT on the link: a link gone silent is noticed only by the 60 s inactivity timeout");
    }
    Ok(stream)
}

/// The addresses in the resolver's order, but the two families taking turns (as Happy
/// Eyeballs orders them): three IPv6 addresses listed first behind a firewall that drops
/// IPv6 must not use up the dial before an IPv4 one is tried.
fn families_in_turn(addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addresses.first().map(SocketAddr::is_ipv6) else {
        return addresses;
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addresses.into_iter().partition(|a| a.is_ipv6() == first);
    let mut ordered = Vec::with_capacity(same.len() + other.len());
    same.reverse();
    other.reverse();
    while let Some(next) = same.pop() {
        ordered.push(next);
        ordered.extend(other.pop());
    }
    ordered.extend(other.into_iter().rev());
    ordered
}

/// Each address in turn ([`families_in_turn`]), given `per_address`, or its even share of
/// what is left of `budget` if that is less; the last one, all that is left.
pub(crate) async fn first_to_accept(
    addresses: Vec<SocketAddr>,
    per_address: Duration,
    budget: Duration,
) -> Result<TcpStream, NoneAccepted> {
    let addresses = families_in_turn(addresses);
    let deadline = Instant::now() + budget;
    let mut failures = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let left = u32::try_from(addresses.len() - i).unwrap_or(u32::MAX);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let share = if left == 1 {
            remaining
        } else {
            per_address.min(remaining / left)
        };
        let outcome = match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                failures.push((*address, format!("no answer within {share:.1?}")));
                continue;
            }
        };
        match outcome {
            Ok(stream) => return Ok(stream),
            Err(e) => failures.push((*address, e.to_string())),
        }
    }
    Err(NoneAccepted(failures))
}

/// Why no address took the connection: each one tried, and what it did.
#[derive(Debug)]
pub(crate) struct NoneAccepted(Vec<(SocketAddr, String)>);

impl NoneAccepted {
    /// What each address did, the address given by its place in turn only: for a report
    /// that leaves the host (a connection test's, to the relay).
    pub(crate) fn without_addresses(&self) -> String {
        match self.0.as_slice() {
            [] => NO_ADDRESS.to_owned(),
            [(_, why)] => why.clone(),
            several => several
                .iter()
                .enumerate()
                .map(|(i, (_, why))| format!("address {}: {why}", i + 1))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

const NO_ADDRESS: &str = "the name resolves to no address";

impl std::fmt::Display for NoneAccepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str(NO_ADDRESS);
        }
        let each: Vec<String> = self
            .0
            .iter()
            .map(|(a, why)| format!("{a}: {why}"))
            .collect();
        f.write_str(&each.join("; "))
    }
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
    /// refusal moves on at once. Each failure is named, also when the budget runs out.
    #[tokio::test]
    async fn an_address_that_drops_does_not_keep_the_next_from_being_tried() {
        let (share, budget) = (Duration::from_millis(300), Duration::from_secs(2));
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
        let stream = first_to_accept(vec![dropped, refused, good], share, budget)
            .await
            .expect("the third address accepts");
        assert_eq!(stream.peer_addr().expect("peer"), good);
        assert!(started.elapsed() < Duration::from_secs(1));

        // Several that drop share the budget: the last is still tried, and all named.
        let started = std::time::Instant::now();
        let failed = first_to_accept(vec![dropped, dropped, dropped, refused], budget, budget)
            .await
            .expect_err("none accepts");
        let said = failed.to_string();
        assert!(started.elapsed() < budget + Duration::from_millis(500));
        assert_eq!(
            said.matches(&format!("{dropped}: no answer within"))
                .count(),
            3,
            "{said}"
        );
        assert!(said.contains(&format!("{refused}: ")), "{said}");
        // Told without them, the same failures by their place in turn.
        let told = failed.without_addresses();
        assert!(told.starts_with("address 1: no answer within"), "{told}");
        assert!(told.contains("; address 4: "), "{told}");
        assert!(!told.contains("127.0.0.1"), "{told}");

        // The last one that drops is named too, not lost to an outer timeout.
        let said = first_to_accept(vec![refused, dropped], share, Duration::from_millis(500))
            .await
            .expect_err("none accepts")
            .to_string();
        assert!(
            said.contains(&format!("{dropped}: no answer within")),
            "{said}"
        );
        assert!(first_to_accept(vec![], share, budget).await.is_err());
    }

    #[test]
    fn the_families_take_turns_from_the_resolvers_first() {
        let a = |text: &str| text.parse::<SocketAddr>().expect("address");
        let (v6a, v6b, v6c) = (
            a("[2001:db8::1]:22"),
            a("[2001:db8::2]:22"),
            a("[2001:db8::3]:22"),
        );
        let (v4a, v4b) = (a("192.0.2.1:22"), a("192.0.2.2:22"));
        assert_eq!(
            families_in_turn(vec![v6a, v6b, v6c, v4a, v4b]),
            vec![v6a, v4a, v6b, v4b, v6c]
        );
        assert_eq!(families_in_turn(vec![v4a, v4b, v6a]), vec![v4a, v6a, v4b]);
        assert_eq!(families_in_turn(vec![v4a, v4b]), vec![v4a, v4b]);
        assert!(families_in_turn(Vec::new()).is_empty());
    }
}
