//! The OpenSSH side of the comparison: a private `sshd` on a free loopback port with its
//! own host key, and `ssh -N -R` clients forwarding a port to the internal server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::procs::{Kill, free_port, wait_port};

pub struct Sshd {
    _daemon: Kill,
    port: u16,
    key: PathBuf,
}

pub fn start_sshd(dir: &Path) -> Result<Sshd> {
    std::fs::create_dir_all("/run/sshd")?;
    let keygen = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()?
            .success();
        if !ok {
            bail!("ssh-keygen failed");
        }
        Ok(path)
    };
    let host = keygen("sshd_host")?;
    let client = keygen("client")?;
    std::fs::copy(client.with_extension("pub"), dir.join("authorized_keys"))?;
    let port = free_port()?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding yes\nMaxSessions 100\nMaxStartups 1000\nLogLevel ERROR\n",
            host.display(),
            dir.join("sshd.pid").display(),
            dir.join("authorized_keys").display()
        ),
    )?;
    let daemon = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sshd")?;
    let daemon = Kill(daemon);
    wait_port(port, Duration::from_secs(10))?;
    Ok(Sshd {
        _daemon: daemon,
        port,
        key: client,
    })
}

/// `ssh -N -R remote:127.0.0.1:local`; returns once `remote` accepts.
pub fn ssh_reverse(sshd: &Sshd, remote: u16, local: u16) -> Result<Kill> {
    let child = Command::new("ssh")
        .args([
            "-N",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(&sshd.key)
        .args([
            "-p",
            &sshd.port.to_string(),
            "-R",
            &format!("{remote}:127.0.0.1:{local}"),
            "root@127.0.0.1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ssh -R")?;
    let child = Kill(child);
    wait_port(remote, Duration::from_secs(15))?;
    Ok(child)
}
