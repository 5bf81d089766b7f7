//! `postern status` and `postern reload` ask the running daemon over its local socket;
//! the exit code says how it went (0 good, 1 not connected, refused or a config that does
//! not parse, 2 no daemon). `connection test` runs in the daemon through it when it can.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::out;
use crate::config::{self, ConfigFile};
use crate::connection_test::TestReport;
use crate::status::{Refusal, ReloadReport, StatusReport};
use postern_logs::printable;

/// The socket the config names, or why the config cannot say.
fn socket_of(config_path: &Path) -> Result<std::path::PathBuf, String> {
    // Only the socket path is needed: no secrets are read.
    let text = std::fs::read_to_string(config_path).map_err(|e| {
        // No file there, so no "last good config" of it either: the path is what is wrong.
        config::config_path_problem(config_path, &e).unwrap_or_else(|| {
            format!(
                "cannot read {}: {e}\n({UNREADABLE_HINT})",
                config_path.display()
            )
        })
    })?;
    let file = ConfigFile::parse(&text).map_err(|e| {
        format!(
            "{} is not a valid config: {e}\n({UNREADABLE_HINT})",
            config_path.display()
        )
    })?;
    Ok(socket_in(&file, config_path))
}

/// For a config that is there but cannot be used: an agent already running keeps what it
/// loaded.
const UNREADABLE_HINT: &str =
    "`postern config check` lists every problem; a running agent keeps its last good config";

fn socket_in(file: &ConfigFile, config_path: &Path) -> std::path::PathBuf {
    let base = config_path.parent().unwrap_or(Path::new("."));
    config::status_socket(file.status_socket.as_deref(), base)
}

/// Writes `command` to the daemon and reads its whole answer.
fn send(mut stream: UnixStream, command: &str) -> Result<String> {
    writeln!(stream, "{command}").context("sending the request")?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .context("reading the answer")?;
    Ok(text)
}

/// `postern connection test NAME` in the running agent, when one answers and runs this
/// file as it is now; `None`, after saying why on stderr, when the test must run here.
/// `file` is the config as read, and `digest` its bytes' digest.
pub(crate) fn test_in_agent(
    config_path: &Path,
    file: &ConfigFile,
    digest: &str,
    name: &str,
) -> Result<Option<TestReport>> {
    let socket = socket_in(file, config_path);
    let here = |why: String| {
        eprintln!(
            "{why}: testing {} from this shell, with its environment",
            config_path.display()
        );
        Ok(None)
    };
    let connect = || {
        let stream = connect_trusted(&socket, config_path)?;
        // A daemon that hangs must not hang the test with it.
        stream.set_read_timeout(Some(STATUS_WAIT))?;
        Ok::<_, std::io::Error>(stream)
    };
    let status = match connect()
        .map_err(anyhow::Error::from)
        .and_then(|s| send(s, crate::status::STATUS))
    {
        Ok(text) => text,
        Err(e) => return here(format!("no agent answers on {} ({e:#})", socket.display())),
    };
    let Ok(running) = serde_json::from_str::<StatusReport>(&status) else {
        return here(format!(
            "what answers on {} is not a postern agent",
            socket.display()
        ));
    };
    // The file first: a copy with the same bytes elsewhere takes its relative paths (keys,
    // CA files) from its own folder, so the agent's test would not be of it.
    match (&running.config_digest, &running.config_file) {
        (Some(_), Some(file)) if !same_file(file, config_path) => {
            return here(format!(
                "the agent on {} runs {}, not this file",
                socket.display(),
                file.display()
            ));
        }
        (Some(d), _) if *d == digest => {}
        (None, _) => {
            return here(format!(
                "the agent on {} is older than this postern (it reports no config digest; \
                 restart it to run this version)",
                socket.display()
            ));
        }
        (Some(_), _) => {
            return here(
                "the file was edited since the running agent last loaded it (`postern \
                 reload` applies it)"
                    .to_owned(),
            );
        }
    }
    // No read timeout here: the test takes as long as the connection's own timeouts allow.
    let answer = connect_trusted(&socket, config_path)
        .map_err(anyhow::Error::from)
        .and_then(|s| send(s, &format!("{} {name} {digest}", crate::status::TEST)));
    let text = match answer {
        Ok(text) => text,
        Err(e) => return here(format!("the agent stopped answering ({e:#})")),
    };
    if let Ok(refusal) = serde_json::from_str::<Refusal>(&text) {
        if refusal.other_config {
            // The agent checks the digest where it tests: a reload since its status is seen.
            return here(
                "the running agent reloaded its config just now, and it is not this file \
                 as read here"
                    .to_owned(),
            );
        }
        anyhow::bail!("{}", refusal.error);
    }
    let report = serde_json::from_str(&text).context("the daemon sent no valid test report")?;
    eprintln!(
        "tested by the running agent (on {}), with its environment and network",
        socket.display()
    );
    Ok(Some(report))
}

/// How long `connection test` waits for the daemon's status before testing here.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends `command` to the daemon's socket and returns its answer; `Err` with the exit
/// code (after saying why on stderr) when the config is broken (1) or no daemon answers (2).
fn ask(config_path: &Path, command: &str) -> Result<Result<String, ExitCode>> {
    let socket = match socket_of(config_path) {
        Ok(socket) => socket,
        Err(e) => {
            // A guess at the socket would answer "no agent" for the wrong reason.
            eprintln!("error: {e}");
            return Ok(Err(ExitCode::from(1)));
        }
    };
    let stream = match connect_trusted(&socket, config_path) {
        Ok(s) => s,
        Err(e) if distrusted(&e) => {
            eprintln!("not asking {}: {e}", socket.display());
            return Ok(Err(ExitCode::from(2)));
        }
        Err(e) => {
            let hint = match agent_running(config_path) {
                Some(pid) => format!(
                    "`postern run` of {} runs as pid {pid} but does not answer there. If you \
                     changed status_socket while it runs, it still listens on its old socket, \
                     and the CLI only finds it where the file says now: restart the agent \
                     (e.g. `systemctl restart postern-agent`). Else its log says why it has \
                     no status socket",
                    config_path.display()
                ),
                None => "is `postern run` running? If it is, its log says why it has no \
                         status socket; `status_socket` in the config sets where it goes. If \
                         you changed status_socket while the agent runs, it still listens on \
                         its old socket: restart it"
                    .to_owned(),
            };
            eprintln!("no agent answers on {}: {e} ({hint})", socket.display());
            return Ok(Err(ExitCode::from(2)));
        }
    };
    // A frozen or stopped agent still has its socket accept: without a bound, a check
    // built on the exit code would wait for ever.
    stream.set_read_timeout(Some(ANSWER_WAIT))?;
    match send(stream, command) {
        Ok(text) => Ok(Ok(text)),
        Err(e) if timed_out(&e) => {
            eprintln!(
                "the agent on {} took its connection but did not answer within {ANSWER_WAIT:?} \
                 (stopped, frozen, or still stopping)",
                socket.display()
            );
            Ok(Err(ExitCode::from(2)))
        }
        Err(e) => Err(e),
    }
}

/// How long `status` and `reload` wait for the agent's answer (a reload loads the config
/// and keys; far less than the unit's reload timeout).
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn timed_out(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    })
}

/// Connects to `socket` if whoever answers there is to be believed: the socket and its
/// folder belong to this user, root, or the config's owner (the service user, when root
/// asks), and no one else may write in the folder. In a shared place (`/tmp/postern-<uid>`
/// when there is no XDG_RUNTIME_DIR) another user could otherwise answer "connected" and
/// "reloaded" in the agent's name. A [`Distrust`] inside the error says why not.
fn connect_trusted(socket: &Path, config_path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let trusted: Vec<u32> = [
        config::current_uid(),
        Some(0),
        std::fs::metadata(config_path).ok().map(|m| m.uid()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let distrust = |why: String| Err(std::io::Error::other(Distrust(why)));
    let folder = config::folder_of(socket);
    if !folder.exists() {
        // No agent made it: the connect below says so as for any missing socket.
        return UnixStream::connect(socket);
    }
    if let Err(why) = crate::status::folder_trusted(folder, &trusted) {
        return distrust(format!("its folder {}: {why}", folder.display()));
    }
    if let Ok(meta) = std::fs::symlink_metadata(socket)
        && (!meta.file_type().is_socket() || !trusted.contains(&meta.uid()))
    {
        return distrust(format!(
            "it is not a socket of this user, root or the config's owner (uid {})",
            meta.uid()
        ));
    }
    UnixStream::connect(socket)
}

/// Why the CLI does not believe what answers on a socket.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Distrust(String);

fn distrusted(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Distrust>())
}

/// The pid of a `postern run` of this config file, from /proc (only processes this user
/// may inspect): an agent that does not answer where the file now puts the socket may
/// still run it, listening where the file said when it started.
fn agent_running(config_path: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let this_program = std::env::current_exe().ok();
    let is_postern = |exe: &Path| {
        // The program may have been replaced on disk since the agent started.
        let text = exe.as_os_str().as_bytes();
        let exe = Path::new(std::ffi::OsStr::from_bytes(
            text.strip_suffix(b" (deleted)").unwrap_or(text),
        ));
        this_program.as_deref() == Some(exe)
            || exe.file_name() == Some(std::ffi::OsStr::new("postern"))
    };
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            if pid == std::process::id() || !is_postern(&std::fs::read_link(dir.join("exe")).ok()?)
            {
                return None;
            }
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            let args: Vec<&std::ffi::OsStr> = cmdline
                .split(|b| *b == 0)
                .skip(1)
                .map(std::ffi::OsStr::from_bytes)
                .collect();
            // The subcommand is the first word that is neither an option nor an option's
            // value (`connection show run` is no agent).
            let mut words = args.iter();
            let subcommand = loop {
                let word = words.next()?;
                if ["--config", "--log-level", "--log-format"].contains(&word.to_str()?) {
                    words.next();
                } else if !word.as_bytes().starts_with(b"-") {
                    break word;
                }
            };
            if *subcommand != "run" {
                return None;
            }
            let named = args.iter().enumerate().find_map(|(i, arg)| {
                if *arg == "--config" {
                    return args.get(i + 1).map(std::path::PathBuf::from);
                }
                let arg = arg.as_bytes().strip_prefix(b"--config=")?;
                Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(arg)))
            });
            let from_env = || {
                let environ = std::fs::read(dir.join("environ")).ok()?;
                environ.split(|b| *b == 0).find_map(|var| {
                    let value = var.strip_prefix(b"POSTERN_CONFIG=")?;
                    Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(value)))
                })
            };
            let file = named.or_else(from_env).unwrap_or_else(config::default_path);
            // A relative --config is relative to the agent's folder, not this shell's.
            let file = match std::fs::read_link(dir.join("cwd")) {
                Ok(cwd) => cwd.join(file),
                Err(_) => file,
            };
            same_file(&file, config_path).then_some(pid)
        })
}

pub(crate) fn status(config_path: &Path, json: bool) -> Result<ExitCode> {
    let text = match ask(config_path, crate::status::STATUS)? {
        Ok(text) => text,
        Err(code) => return Ok(code),
    };
    let report: StatusReport =
        serde_json::from_str(&text).context("the daemon sent no valid status")?;
    let changed = file_changed(&report, config_path);
    let text = match changed {
        // Added here, as the agent cannot see the file through the CLI's eyes; every
        // field the agent sent stays, those this CLI does not know too.
        Some(changed) => {
            let mut value: serde_json::Value =
                serde_json::from_str(&text).context("the daemon sent no valid status")?;
            if let Some(fields) = value.as_object_mut() {
                fields.insert("config_file_changed".to_owned(), changed.into());
            }
            value.to_string()
        }
        None => text,
    };
    out::stdout(|out| {
        if json {
            writeln!(out, "{text}")
        } else {
            print_report(out, &report, changed == Some(true))
        }
    })?;
    // A refused reload leaves the exit code alone: the agent serves with the config it
    // had, and a check that restarts the agent on 1 would then fail to start it.
    Ok(if report.connected {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `postern reload`: exit 0 applied, 1 refused or unreadable (the old config stays), 2 no daemon.
pub(crate) fn reload(config_path: &Path) -> Result<ExitCode> {
    let text = match ask(config_path, crate::status::RELOAD)? {
        Ok(text) => text,
        Err(code) => return Ok(code),
    };
    let report: ReloadReport =
        serde_json::from_str(&text).context("the daemon sent no valid answer")?;
    // The agent re-reads the file it was started with, whichever file named the socket.
    let other_file = report
        .config_file
        .as_deref()
        .filter(|running| !same_file(running, config_path));
    if let Some(running) = other_file {
        eprintln!(
            "note: the running agent runs {}, not {}: it re-read its own file, so edits \
             in {} are not in force (restart the agent with --config {} to run that file)",
            running.display(),
            config_path.display(),
            config_path.display(),
            config_path.display()
        );
    }
    match report.error {
        None if report.ok => {
            out::stdout(|out| {
                match &report.config_file {
                    Some(file) => writeln!(out, "reloaded {}", file.display())?,
                    None => writeln!(
                        out,
                        "reloaded (the agent is too old to say which file it re-read)"
                    )?,
                }
                for change in &report.changes {
                    writeln!(out, "  {change}")?;
                }
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        error => {
            eprintln!(
                "reload refused; the running config stays in force: {}",
                error.unwrap_or_default()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Whether `config_path` as it is now differs from the file the agent loaded last, when
/// it is the agent's file and both can be told (an agent older than the config digest
/// cannot say).
fn file_changed(report: &StatusReport, config_path: &Path) -> Option<bool> {
    let in_force = report.config_digest.as_deref()?;
    if let Some(running) = &report.config_file
        && !same_file(running, config_path)
    {
        return None;
    }
    let bytes = std::fs::read(config_path).ok()?;
    Some(config::file_digest(&bytes) != in_force)
}

/// Whether two paths name one file: the same inode when both exist (a symlink, another
/// spelling), else the same absolute path.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    }
}

fn print_report(out: &mut dyn Write, r: &StatusReport, file_changed: bool) -> std::io::Result<()> {
    let mut state = match (&r.connected, &r.connected_since) {
        (true, Some(since)) => format!("connected since {since}"),
        (true, None) => "connected".to_owned(),
        (false, _) => "NOT connected".to_owned(),
    };
    if r.stopping {
        state.push_str("; STOPPING: takes no new calls, those under way finish");
    } else if r.draining {
        state.push_str("; draining to reconnect with new settings");
    }
    writeln!(out, "postern agent {} — {state}", r.agent_version)?;
    let relays = r.relays.join(", ");
    let relay = match &r.connected_to {
        // Which one of several it is with.
        Some(to) if r.relays.len() > 1 => format!("{to} (of {relays})"),
        _ => relays,
    };
    writeln!(out, "  relay        {}", printable(&relay))?;
    if let Some(name) = &r.agent_name {
        writeln!(out, "  agent name   {}", printable(name))?;
    }
    writeln!(out, "  reconnects   {}", r.reconnects)?;
    if let Some(e) = &r.last_error {
        writeln!(out, "  last error   {}", printable(e))?;
    }
    if file_changed {
        writeln!(
            out,
            "  config file  CHANGED since the agent loaded it: what runs is not the file on \
             disk (`postern reload` applies it; a restart would load it, or fail on it)"
        )?;
    }
    if let Some(reload) = r.last_reload.as_ref().filter(|l| !l.ok) {
        writeln!(
            out,
            "  last reload  REFUSED at {}: {}; the config loaded before stays in force (a \
             reload that succeeds clears this)",
            printable(&reload.at),
            printable(reload.error.as_deref().unwrap_or("no reason given"))
        )?;
    }
    if !r.connections.is_empty() {
        writeln!(
            out,
            "\n  {:<24} {:>8} {:>8}  TOKEN",
            "CONNECTION", "SERVED", "FAILED"
        )?;
        for (name, c) in &r.connections {
            writeln!(
                out,
                "  {:<24} {:>8} {:>8}  {}",
                printable(name),
                c.calls_served,
                c.calls_failed,
                printable(&c.token_cache)
            )?;
            if let Some(failure) = &c.token_failure {
                // A failed refresh: calls go on with the token until then, and fail after.
                let serving = match &failure.token_used_until {
                    Some(until) => format!(" (the current token is used until {until})"),
                    None => String::new(),
                };
                writeln!(
                    out,
                    "    last token failure at {}: {}{}",
                    printable(&failure.at),
                    printable(&failure.error),
                    printable(&serving)
                )?;
            }
            if let Some(paused) = &c.paused {
                writeln!(
                    out,
                    "    paused until {}, as the internal server's {} asked ({}): calls wait \
                     for its end within max_wait, else get 429 rate_limited",
                    printable(&paused.until),
                    paused.status,
                    printable(&paused.header)
                )?;
            }
        }
    }
    Ok(())
}
