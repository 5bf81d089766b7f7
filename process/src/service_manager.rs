//! What a `Type=notify` unit tells systemd: ready (only then does `systemctl start` return),
//! what it is doing (`systemctl status`), and that it stops. Nothing without `NOTIFY_SOCKET`.

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

/// What `systemctl status` shows beside the unit.
pub fn status(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Status(&status)]);
}

/// The stop began: the unit shows as deactivating while the program drains.
pub fn stopping(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
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
