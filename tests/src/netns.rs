//! A two-host test network made of Linux network namespaces: a *cloud* host and
//! an *on-prem* host behind a stateful firewall that lets only on-prem → cloud through.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The cloud host's address on the link (inside our own namespaces only).
pub const CLOUD_ADDR: &str = "10.77.0.1";
/// The on-prem host's address on the link.
pub const ONPREM_ADDR: &str = "10.77.0.2";

/// Both namespaces and the veth link between them; removed on drop.
pub struct Topology {
    pub cloud: String,
    pub onprem: String,
}

/// Why this machine cannot build the topology (not root, no `ip`/`nft`, no netns).
pub fn unavailable() -> Option<String> {
    if !crate::harness::is_root() {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed (iproute2 / nftables)"));
        }
    }
    None
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Topology {
    /// Creates `pst-c-<tag>` and `pst-o-<tag>` joined by a veth pair, loopback up
    /// in both, and the on-prem firewall: inbound only for established flows.
    pub fn create(tag: &str) -> Result<Self> {
        let topo = Self {
            cloud: format!("pst-c-{tag}"),
            onprem: format!("pst-o-{tag}"),
        };
        let (vc, vo) = (format!("pc{tag}"), format!("po{tag}"));
        run(&["ip", "netns", "add", &topo.cloud])?;
        run(&["ip", "netns", "add", &topo.onprem])?;
        run(&[
            "ip",
            "link",
            "add",
            &vc,
            "netns",
            &topo.cloud,
            "type",
            "veth",
            "peer",
            "name",
            &vo,
            "netns",
            &topo.onprem,
        ])?;
        for (ns, dev, addr) in [
            (&topo.cloud, &vc, CLOUD_ADDR),
            (&topo.onprem, &vo, ONPREM_ADDR),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        topo.nft(&topo.onprem, "add table inet postern")?;
        topo.nft(
            &topo.onprem,
            "add chain inet postern input { type filter hook input priority 0; policy drop; }",
        )?;
        topo.nft(&topo.onprem, "add rule inet postern input iif lo accept")?;
        topo.nft(
            &topo.onprem,
            "add rule inet postern input ct state established,related accept",
        )?;
        Ok(topo)
    }

    pub fn nft(&self, ns: &str, rule: &str) -> Result<()> {
        let mut args = vec!["ip", "netns", "exec", ns, "nft"];
        args.extend(rule.split_whitespace());
        run(&args)
    }

    /// Silently drops every packet between the hosts on arrival, in both
    /// directions: no reset, no local send error — a dead link.
    pub fn cut_link(&self) -> Result<()> {
        for (ns, from) in [(&self.onprem, CLOUD_ADDR), (&self.cloud, ONPREM_ADDR)] {
            self.nft(ns, "add table inet postern_cut")?;
            self.nft(
                ns,
                "add chain inet postern_cut cut { type filter hook prerouting priority -300; policy accept; }",
            )?;
            self.nft(
                ns,
                &format!("add rule inet postern_cut cut ip saddr {from} drop"),
            )?;
        }
        Ok(())
    }

    /// Undoes `cut_link`.
    pub fn restore_link(&self) -> Result<()> {
        self.nft(&self.onprem, "delete table inet postern_cut")?;
        self.nft(&self.cloud, "delete table inet postern_cut")
    }

    /// Whether a TCP connection from `ns` to `addr:port` succeeds within 2 s.
    pub fn can_connect(&self, ns: &str, addr: &str, port: u16) -> bool {
        let script = format!(
            "import socket,sys\ns=socket.socket()\ns.settimeout(2)\ntry:\n s.connect(('{addr}',{port}))\nexcept Exception:\n sys.exit(1)"
        );
        crate::harness::command_in(Some(ns), std::path::Path::new("python3"))
            .args(["-c", &script])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.cloud])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.onprem])
            .status();
    }
}
