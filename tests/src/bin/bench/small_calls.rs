//! Scenario 1, small calls: wrk GETs of a 30-byte JSON answer, direct, through `ssh -R`,
//! and through postern with `auth = none`, an HS256 bearer and RS256 + RFC 7523.

use anyhow::Result;

use crate::Args;
use crate::World;
use crate::table::{Row, Table};
use crate::wrk::wrk_median;

pub fn run(w: &World, args: &Args, rows: &mut Table) -> Result<()> {
    let call = |c: &str| {
        format!(
            "{}/v1/agents/a0/connections/{c}/http/small",
            w.postern.api.base
        )
    };
    for &connections in &args.connections {
        let direct = wrk_median(&format!("http://{}/small", w.fast), connections, args, None)?;
        let ssh = wrk_median(
            &format!("http://127.0.0.1:{}/small", w.ssh_port),
            connections,
            args,
            None,
        )?;
        let exchanges_before = w.exchange.exchanges().len();
        for (label, conn) in [
            ("auth none", "none"),
            ("HS256 bearer", "hs"),
            ("RS256 + RFC 7523 (cached)", "rs"),
        ] {
            let p = wrk_median(&call(conn), connections, args, Some(&w.postern.api.key))?;
            let scenario = format!("small calls, {connections} conns, {label}");
            let openssh = (conn == "none").then_some(ssh);
            let direct = (conn == "none").then_some(direct);
            for (i, (measure, value)) in p.figures().into_iter().enumerate() {
                rows.push(Row {
                    scenario: scenario.clone(),
                    measure,
                    postern: Some(value),
                    openssh: openssh.map(|s| s.figures()[i].1),
                    direct: direct.map(|d| d.figures()[i].1),
                });
            }
        }
        rows.push(Row::postern(
            format!("small calls, {connections} conns, RS256 + RFC 7523"),
            "token exchanges",
            (w.exchange.exchanges().len() - exchanges_before) as f64,
        ));
    }
    Ok(())
}
