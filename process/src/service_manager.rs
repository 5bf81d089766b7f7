//! What a `Type=notify` unit tells systemd: ready (only then does `systemctl start` return),
//! what it is doing (`systemctl status`), and that it stops. Nothing without `NOTIFY_SOCKET`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

/// Whether a service manager listens (`NOTIFY_SOCKET` is set): what only it would read
/// need not be kept up to date otherwise.
pub fn listening() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The program serves: `systemctl start` returns now, and one that exits before this fails.
pub fn ready(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// What `systemctl status` shows beside the unit; once [`stopping`], nothing: a drain's
/// changes of state are not to overwrite the stop's own words.
pub fn status(status: &str) {
    let status = one_line(status);
    unless_stopping(&[NotifyState::Status(&status)]);
}

/// The stop began: the unit shows as deactivating while the program drains. From here on,
/// strictly, no status and no watchdog feed follow.
pub fn stopping(status: &str) {
    let status = one_line(status);
    let mut stopping = STOPPING.lock().unwrap_or_else(|e| e.into_inner());
    *stopping = true;
    send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
}

/// Set by [`stopping`]; held while anything else is said, so nothing follows `STOPPING=1`.
static STOPPING: Mutex<bool> = Mutex::new(false);

/// Says `states` unless [`stopping`] was said: whether it is not sent.
fn unless_stopping(states: &[NotifyState]) -> bool {
    let stopping = STOPPING.lock().unwrap_or_else(|e| e.into_inner());
    if !*stopping {
        send(states);
    }
    *stopping
}

/// While the unit's `WatchdogSec=` runs (systemd set `WATCHDOG_USEC` for this process),
/// says `WATCHDOG=1` at a third of it until `stop`: a program whose runtime no longer runs
/// its tasks (every worker blocked) stops saying it, and systemd restarts it. A stop is
/// not watched (systemd's `TimeoutStopSec=` bounds it), so nothing is said after `stop`.
pub async fn feed_watchdog(stop: impl std::future::Future<Output = ()>) {
    let Some(limit) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut every = tokio::time::interval(limit / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = every.tick() => if unless_stopping(&[NotifyState::Watchdog]) {
                return;
            },
        }
    }
}

/// The protocol is one `KEY=value` a line: a newline in a relay's error text would end
/// the status early and start a line of its own.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn send(states: &[NotifyState]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states)
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "cannot tell the service manager through NOTIFY_SOCKET; a Type=notify unit will time out starting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_stays_on_its_line() {
        assert_eq!(one_line("lost\nREADY=1\r\tx"), "lost READY=1  x");
    }
}
