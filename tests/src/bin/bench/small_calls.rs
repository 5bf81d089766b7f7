//! Scenario 1, small calls: wrk GETs of a 30-byte JSON answer, direct, through `ssh -R`,
//! and through postern with `auth = none`, an HS256 bearer (signed once a second, as its
//! payload has no `{{uuid}}`), an HS256 bearer with a `{{uuid}}` jti (signed per call) and
//! RS256 + RFC 7523.
//!
//! Each postern row also says how much CPU the relay and the agent spent per call: on
//! two shared cores that moves far less between runs than requests/s does.
//!
//! The five targets take turns, one run each per repeat, so that drift during the
//! scenario (idle channels piling up, the machine's own spread) hits them alike.

use anyhow::Result;

use crate::Args;
use crate::World;
use crate::procs::cpu_seconds;
use crate::table::{Row, Table, median};
use crate::wrk::{WrkResult, median_of, wrk};

pub fn run(w: &World, args: &Args, rows: &mut Table) -> Result<()> {
    let call = |c: &str| {
        format!(
            "{}/v1/agents/a0/connections/{c}/http/small",
            w.postern.api.base
        )
    };
    let labels = [
        ("auth none", "none"),
        ("HS256 bearer", "hs"),
        ("HS256 bearer + jti", "hsj"),
        ("RS256 + RFC 7523 (cached)", "rs"),
    ];
    for &connections in &args.connections {
        let mut urls = vec![
            (format!("http://{}/small", w.fast), None),
            (format!("http://127.0.0.1:{}/small", w.ssh_port), None),
        ];
        urls.extend(
            labels
                .iter()
                .map(|(_, conn)| (call(conn), Some(w.postern.api.key.as_str()))),
        );
        let exchanges_before = w.exchange.exchanges().len();
        let pids = [w.postern.relay.pid(), w.postern.agent.pid()];
        // Per target, per run: wrk's figures and the relay's and agent's CPU µs per call.
        let mut runs: Vec<Vec<(WrkResult, [f64; 2])>> = vec![Vec::new(); urls.len()];
        for _ in 0..args.repeats {
            for (i, (url, bearer)) in urls.iter().enumerate() {
                let before = pids.map(cpu_seconds);
                let run = wrk(url, connections, args.seconds, *bearer)?;
                let after = pids.map(cpu_seconds);
                let calls = run.rps * args.seconds as f64;
                let cpu = [0, 1].map(|k| (after[k] - before[k]) * 1e6 / calls);
                runs[i].push((run, cpu));
            }
        }
        let wrk_median = |runs: &[(WrkResult, [f64; 2])]| {
            median_of(&runs.iter().map(|(r, _)| *r).collect::<Vec<_>>())
        };
        let (direct, ssh) = (wrk_median(&runs[0]), wrk_median(&runs[1]));
        for ((label, conn), runs) in labels.iter().zip(&runs[2..]) {
            let p = wrk_median(runs);
            let scenario = format!("small calls, {connections} conns, {label}");
            let openssh = (*conn == "none").then_some(ssh);
            let direct = (*conn == "none").then_some(direct);
            for (i, (measure, value)) in p.figures().into_iter().enumerate() {
                rows.push(Row {
                    scenario: scenario.clone(),
                    measure,
                    postern: Some(value),
                    openssh: openssh.map(|s| s.figures()[i].1),
                    direct: direct.map(|d| d.figures()[i].1),
                });
            }
            for (k, measure) in ["relay CPU µs/call", "agent CPU µs/call"]
                .into_iter()
                .enumerate()
            {
                let per_run = runs.iter().map(|(_, cpu)| cpu[k]).collect();
                rows.push(Row::postern(scenario.clone(), measure, median(per_run)));
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
