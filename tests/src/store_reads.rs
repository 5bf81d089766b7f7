//! A relay store whose reads fail for a while, as a running relay meets a store it cannot
//! read: another process holds SQLite's WAL-index locks over a header it has spoiled.
//!
//! WAL lets readers past a writer's lock (`relay_support::hold_sqlite_lock`), so a busy
//! store alone fails only writes. A reader that finds the WAL-index header torn must
//! rebuild it, which needs the write and recovery locks: held by another process, the
//! reader waits out its busy timeout (5 s for the relay) and fails with "database is
//! locked". Put back, the header is whole again and reads work at once.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// python3: locks bytes 120–122 of `argv[1]`-shm (WAL write, checkpoint and recovery locks),
/// flips the first byte of the header's first copy, says so, and on end of input puts it
/// back and lets go.
const SPOIL_AND_HOLD: &str = "import fcntl, os, sys
fd = os.open(sys.argv[1] + '-shm', os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 3, 120)
saved = os.pread(fd, 1, 0)
os.pwrite(fd, bytes([saved[0] ^ 0xff]), 0)
print('held', flush=True)
sys.stdin.read()
os.pwrite(fd, saved, 0)
";

/// Reads of the store failing until [`ReadsFail::restore`] (or drop, which kills the
/// holder: the next reader then rebuilds the header from the WAL, as after a crash).
pub struct ReadsFail(Child);

/// Makes every read of the SQLite store `db` (in WAL mode, open in a relay) fail until
/// the returned value is restored or dropped. Returns once the locks are held.
pub fn fail_reads(db: &Path) -> Result<ReadsFail> {
    let mut child = Command::new("python3")
        .args(["-c", SPOIL_AND_HOLD])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let held = ReadsFail(child);
    if line.trim() != "held" {
        bail!(
            "python3 did not take the WAL-index locks of {}: {line:?}",
            db.display()
        );
    }
    Ok(held)
}

impl ReadsFail {
    /// Puts the header back and lets the locks go; returns once done (within 5 s).
    pub fn restore(mut self) -> Result<()> {
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait()? {
                if !status.success() {
                    bail!("the WAL-index holder ended with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the WAL-index holder did not let go within 5 s")
    }
}

impl Drop for ReadsFail {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
