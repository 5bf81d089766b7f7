//! Scenario 5, recovery: the relay stopped and started again on the same ports, timed
//! from the start until the agent serves a call again, over repeated restarts.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::table::{Row, Table, median};
use crate::{Args, World};

pub async fn run(w: &mut World, args: &Args, rows: &mut Table) -> Result<()> {
    let mut recoveries = Vec::new();
    for _ in 0..args.restarts {
        w.postern.relay.terminate()?;
        let started = Instant::now();
        w.postern.relay = w.start_relay()?;
        let deadline = started + Duration::from_secs(30);
        loop {
            if w.postern
                .api
                .call("a0", "none", "/small")
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("no call served 30 s after a relay restart");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recoveries.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let scenario = format!("recovery over {} relay restarts", args.restarts);
    let max = recoveries.iter().copied().fold(0.0, f64::max);
    rows.push(Row::postern(scenario.clone(), "p50 ms", median(recoveries)));
    rows.push(Row::postern(scenario, "max ms", max));
    Ok(())
}
