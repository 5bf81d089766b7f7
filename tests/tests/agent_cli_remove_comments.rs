//! `postern connection remove` takes the comment right above the removed table with it and
//! keeps a comment block a blank line sets apart (about the section or the whole file);
//! `connection add` keeps the file's comments, those above a replaced table too.

use std::path::Path;

use anyhow::Result;
use postern_tests::harness::{Bins, agent_cli, offline_agent_config, output_text};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

fn remove(config: &Path, name: &str) -> Result<String> {
    let out = agent_cli(&bins(), config, &["connection", "remove", name])?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    Ok(std::fs::read_to_string(config)?)
}

#[test]
fn remove_keeps_a_file_comment_above_the_first_table() -> Result<()> {
    let dir = TempDir::new("review-remove-top")?;
    let head = "# Agent for the Lyon site. Ask ops@ before editing.\n\n";
    let config = dir.write_private(
        "agent.toml",
        &format!(
            "{head}{}",
            offline_agent_config(
                "127.0.0.1:1",
                "\n# Connections: one per internal API, named as the relay's callers name them.\n\n\
                 # The orders API (team Rabbit).\n[connections.orders]\nbase_uri = \"http://127.0.0.1:9/o\"\n\n\
                 [connections.stock]\nbase_uri = \"http://127.0.0.1:9/s\"\n"
            )
        ),
    )?;
    let text = remove(&config, "orders")?;
    assert!(text.starts_with(head), "{text}");
    assert!(
        text.contains(
            "\n# Connections: one per internal API, named as the relay's callers name them.\n\n\
             [connections.stock]\n"
        ),
        "{text}"
    );
    assert!(
        !text.contains("team Rabbit") && !text.contains("orders"),
        "{text}"
    );
    Ok(())
}

#[test]
fn remove_keeps_a_comment_between_tables_that_is_not_the_removed_ones() -> Result<()> {
    let dir = TempDir::new("review-remove-between")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "\n[connections.a]\nbase_uri = \"http://127.0.0.1:9/a\"\n\n\
             # Below: the finance APIs, reachable only from the DMZ.\n\n\
             # b is the ledger.\n[connections.b]\nbase_uri = \"http://127.0.0.1:9/b\"\n\n\
             # c is billing.\n[connections.c]\nbase_uri = \"http://127.0.0.1:9/c\"\n\n\
             # Keep last: retired in 2027.\n\n[connections.d]\nbase_uri = \"http://127.0.0.1:9/d\"\n",
        ),
    )?;
    let text = remove(&config, "b")?;
    assert!(
        text.contains(
            "\n# Below: the finance APIs, reachable only from the DMZ.\n\n\
             # c is billing.\n[connections.c]\n"
        ) && !text.contains("ledger"),
        "{text}"
    );
    // The last table's comment outlives it at the end of the file.
    let text = remove(&config, "d")?;
    assert!(
        text.ends_with("base_uri = \"http://127.0.0.1:9/c\"\n\n# Keep last: retired in 2027.\n"),
        "{text}"
    );
    let text = remove(&config, "c")?;
    assert!(
        !text.contains("billing")
            && text.contains("DMZ.\n")
            && text.contains("# Keep last: retired in 2027.\n"),
        "{text}"
    );
    Ok(())
}

fn add(config: &Path, args: &[&str]) -> Result<String> {
    let mut all = vec!["connection", "add"];
    all.extend_from_slice(args);
    let out = agent_cli(&bins(), config, &all)?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    Ok(std::fs::read_to_string(config)?)
}

#[test]
fn add_keeps_an_explicit_connections_header_and_its_comment() -> Result<()> {
    let dir = TempDir::new("review-add-header")?;
    let section = "\n# Internal APIs, one per team.\n[connections]\n\n[connections.orders]\nbase_uri = \"http://127.0.0.1:9/o\"\n";
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", section))?;
    let text = add(&config, &["stock", "--base-uri", "http://127.0.0.1:9/s"])?;
    assert!(
        text.contains("# Internal APIs, one per team.\n[connections]\n"),
        "{text}"
    );
    assert!(text.contains("[connections.stock]"), "{text}");
    Ok(())
}

#[test]
fn add_replace_keeps_the_replaced_tables_comment_and_place() -> Result<()> {
    let dir = TempDir::new("review-add-replace")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "\n# The orders API (team Rabbit).\n[connections.orders]\nbase_uri = \"http://127.0.0.1:9/o\"\n\n\
             [connections.stock]\nbase_uri = \"http://127.0.0.1:9/s\"\n",
        ),
    )?;
    let text = add(
        &config,
        &["orders", "--base-uri", "http://127.0.0.1:9/v2", "--replace"],
    )?;
    let orders = text.find("# The orders API (team Rabbit).\n[connections.orders]\n");
    let stock = text.find("[connections.stock]");
    assert!(
        matches!((orders, stock), (Some(o), Some(s)) if o < s),
        "{text}"
    );
    assert!(text.contains("/v2") && !text.contains("/o\""), "{text}");
    Ok(())
}
