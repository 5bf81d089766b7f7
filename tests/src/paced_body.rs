//! Request bodies that arrive slowly, piece by piece, for tests of timeouts that count
//! from an upload's last progress.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;

/// A request body of `pieces` 64 KiB pieces, one every `every`; then, if `stall`, it
/// sends nothing more for that long before it ends. Also returns when the last piece went.
pub fn paced_body(
    pieces: usize,
    every: Duration,
    stall: Option<Duration>,
) -> (reqwest::Body, Arc<Mutex<Option<Instant>>>) {
    let last = Arc::new(Mutex::new(None));
    let noted = last.clone();
    let stream = futures_util::stream::unfold(0usize, move |sent| {
        let noted = noted.clone();
        async move {
            if sent == pieces {
                tokio::time::sleep(stall?).await;
                return None;
            }
            tokio::time::sleep(every).await;
            if let Ok(mut at) = noted.lock() {
                *at = Some(Instant::now());
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from(vec![b'u'; 64 * 1024])),
                sent + 1,
            ))
        }
    });
    (reqwest::Body::wrap_stream(stream), last)
}

/// When the last piece of a `paced_body` went.
pub fn when(last: &Mutex<Option<Instant>>) -> Result<Instant> {
    last.lock()
        .ok()
        .and_then(|at| *at)
        .context("no piece was sent")
}
