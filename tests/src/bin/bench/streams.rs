//! Scenario 2, streams: large downloads and uploads through postern, `ssh -R` and direct
//! (medians of the repeats), with the relay's and the agent's peak RSS during them.

use std::time::Instant;

use anyhow::{Result, bail};
use bytes::Bytes;

use crate::procs::{peak_rss_mib, reset_peak_rss};
use crate::table::{Row, Table, median};
use crate::{Args, World};

/// MB/s of a download of `bytes` from `{base}/bytes/{bytes}`, every byte counted.
async fn download(
    client: &reqwest::Client,
    base: &str,
    bearer: Option<&str>,
    bytes: u64,
) -> Result<f64> {
    let started = Instant::now();
    let mut request = client.get(format!("{base}/bytes/{bytes}"));
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    let mut response = request.send().await?.error_for_status()?;
    let mut got = 0u64;
    while let Some(chunk) = response.chunk().await? {
        got += chunk.len() as u64;
    }
    if got != bytes {
        bail!("download got {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / 1e6 / started.elapsed().as_secs_f64())
}

/// MB/s of an upload of `bytes` to `{base}/sink`, which must answer the count it received.
async fn upload(
    client: &reqwest::Client,
    base: &str,
    bearer: Option<&str>,
    bytes: u64,
) -> Result<f64> {
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let chunks = bytes / chunk.len() as u64;
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ));
    let started = Instant::now();
    let mut request = client
        .post(format!("{base}/sink"))
        .body(body)
        .header("content-length", bytes);
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    let answer = request.send().await?.error_for_status()?.text().await?;
    if !answer.contains(&format!("\"received\":{bytes}")) {
        bail!("upload answer: {answer}");
    }
    Ok(bytes as f64 / 1e6 / started.elapsed().as_secs_f64())
}

pub async fn run(w: &World, args: &Args, rows: &mut Table) -> Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let bytes = args.stream_mib * 1024 * 1024;
    let postern = format!("{}/v1/agents/a0/connections/none/http", w.postern.api.base);
    let key = Some(w.postern.api.key.as_str());
    let openssh = format!("http://127.0.0.1:{}", w.ssh_port);
    let direct = format!("http://{}", w.fast);
    let (relay, agent) = (w.postern.relay.pid(), w.postern.agent.pid());
    for label in ["download", "upload"] {
        let transfer = |base: &str, bearer: Option<&str>| {
            let (client, base, bearer) =
                (client.clone(), base.to_owned(), bearer.map(str::to_owned));
            async move {
                if label == "upload" {
                    upload(&client, &base, bearer.as_deref(), bytes).await
                } else {
                    download(&client, &base, bearer.as_deref(), bytes).await
                }
            }
        };
        // Each transfer's peak is its own, not that of the small calls before it.
        reset_peak_rss(relay)?;
        reset_peak_rss(agent)?;
        let (mut through_postern, mut through_ssh, mut direct_rates) = (vec![], vec![], vec![]);
        for _ in 0..args.repeats {
            through_postern.push(transfer(&postern, key).await?);
            through_ssh.push(transfer(&openssh, None).await?);
            direct_rates.push(transfer(&direct, None).await?);
        }
        // The highest of all the postern transfers.
        let (relay_peak, agent_peak) = (peak_rss_mib(relay), peak_rss_mib(agent));
        let scenario = format!("stream {} MiB {label}", args.stream_mib);
        rows.push(Row {
            scenario: scenario.clone(),
            measure: "MB/s",
            postern: Some(median(through_postern)),
            openssh: Some(median(through_ssh)),
            direct: Some(median(direct_rates)),
        });
        rows.push(Row::postern(
            scenario.clone(),
            "relay peak RSS MiB",
            relay_peak,
        ));
        rows.push(Row::postern(scenario, "agent peak RSS MiB", agent_peak));
    }
    Ok(())
}
