//! An agent that stops (SIGTERM) says goodbye before it exits: the relay records the
//! session as closed by the agent, not as a lost connection.

use anyhow::Result;
use postern_tests::relay_support::{ONLINE_WITHIN, RelayWorld, sample, scrape};

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_agent_is_recorded_as_closed_not_lost() -> Result<()> {
    let w = RelayWorld::start(postern_tests::bins!()).await?;
    let token = w.create_agent("warehouse-1").await?;
    // The race it guards against (exit before the disconnect is written) showed in
    // about one stop in ten to three.
    let rounds = 10;
    for _ in 0..rounds {
        let mut agent = w.start_agent(&token)?;
        w.admin
            .wait_online("warehouse-1", true, ONLINE_WITHIN)
            .await?;
        let status = agent.terminate()?;
        assert!(status.success(), "agent exit: {status}");
        w.admin
            .wait_online("warehouse-1", false, ONLINE_WITHIN)
            .await?;
    }
    let samples = scrape(&w.admin).await?;
    let closed = |reason: &str| {
        sample(
            &samples,
            &format!("postern_sessions_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(closed("connection_lost"), 0.0);
    assert_eq!(closed("agent_closed"), f64::from(rounds));
    Ok(())
}
