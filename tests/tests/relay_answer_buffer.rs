//! What the relay holds of answers their callers have not read is bounded per agent by
//! `answer_buffer_per_agent`, however many callers stop reading; and every stalled answer
//! still arrives whole once its caller reads again.

use std::time::Duration;

use anyhow::{Result, ensure};
use postern_tests::harness::{Bins, peak_rss_kib, rss_kib};
use postern_tests::relay_support::RelayWorld;

const CALLERS: usize = 12;
const SIZE: usize = 16 * 1024 * 1024;
/// What each caller reads at once before it stops: its channel's window grows meanwhile.
const GROW_WITH: usize = 4 * 1024 * 1024;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_that_stop_reading_pin_no_more_than_the_answer_buffer() -> Result<()> {
    let w =
        RelayWorld::start_configured(bins(), "answer_buffer_per_agent = 4194304\n", &[]).await?;
    let _agent = w.agent_online("site").await?;
    let relay = w.relay.pid();
    // A warm-up call, so the measure starts with the relay's buffers for one call in place.
    let warm = w.admin.call("site", "orders", "/ping").await?;
    ensure!(warm.status() == 200, "warm-up: {}", warm.status());
    let before = rss_kib(relay)?;

    // Each caller reads the first 4 MiB of a 16 MiB body at once (streamed by the
    // internal server as it is asked, so it holds none of it), which grows its channel's
    // window, then stops reading. Without the budget each window would have grown to
    // 4–8 MiB and been filled: ~100 MiB queued in the relay.
    let mut stalled = Vec::new();
    let mut first = 0usize;
    for _ in 0..CALLERS {
        let mut answer = w
            .admin
            .call("site", "orders", &format!("/chunked/{SIZE}"))
            .await?;
        ensure!(answer.status() == 200, "{}", answer.status());
        let mut read = 0usize;
        while read < GROW_WITH {
            let chunk = tokio::time::timeout(Duration::from_secs(30), answer.chunk())
                .await??
                .ok_or_else(|| anyhow::anyhow!("the answer ended after {read} bytes"))?;
            ensure!(chunk.iter().all(|&b| b == b'x'), "the body was corrupted");
            read += chunk.len();
        }
        first = read;
        stalled.push((answer, read));
    }
    ensure!(first >= GROW_WITH);
    // The agent sends what the windows let it; the peak is what counts.
    let peak = peak_rss_kib(relay, Duration::from_secs(4)).await?;
    let grown = peak.saturating_sub(before);
    eprintln!("relay RSS {before} → {peak} KiB with {CALLERS} callers not reading");
    ensure!(
        grown < 40 * 1024,
        "the relay held {grown} KiB more for {CALLERS} stalled answers, past a 4 MiB answer buffer"
    );

    // Read again, all at once: the windows grow within the budget, and every byte arrives.
    let reads = stalled.into_iter().map(|(mut answer, read)| async move {
        let mut received = read;
        while let Some(chunk) =
            tokio::time::timeout(Duration::from_secs(30), answer.chunk()).await??
        {
            ensure!(chunk.iter().all(|&b| b == b'x'), "the body was corrupted");
            received += chunk.len();
        }
        Ok::<_, anyhow::Error>(received)
    });
    for received in futures_util::future::join_all(reads).await {
        ensure!(received? == SIZE, "a stalled answer was cut short");
    }
    Ok(())
}
