//! Log output both binaries share: callers append lines to a buffer in memory and one
//! thread writes it out in batches, so a log line per call costs the caller no syscall.
//!
//! The writing thread sleeps while nothing is pending and, once a line arrives, gathers
//! for up to [`GATHER`] before writing: under load that is one write (and one wake-up)
//! per batch instead of one per line, which on a busy box was ~8% of each process.
//! Nothing is dropped: past [`MAX_PENDING`] writers wait for the thread to catch up.
//! What a peer keeps sending is logged a few lines a minute at most ([`LogBudget`]).

mod budget;
mod escaped_fields;
mod init;
mod printable;

pub use budget::{LeftOut, LogBudget};
pub use init::{LogArgs, LogFormat};
pub use printable::printable;

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait in memory before it is written.
pub const GATHER: Duration = Duration::from_millis(20);
/// Pending bytes that make the thread write at once instead of gathering on.
const EARLY_WRITE: usize = 64 * 1024;
/// Pending bytes past which writers wait (a stalled stderr slows logging, not memory).
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

/// A writer for `tracing_subscriber::fmt().with_writer(move || writer.clone())`.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Keep it for the life of the program: dropping it writes what is pending and stops the
/// thread; lines logged after that are written directly.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// The writing thread waits here for a first line, or for the end of its gathering.
    wake_writer: Condvar,
    /// Writers wait here while `MAX_PENDING` bytes are queued.
    room: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
    /// [`GATHER`], except in tests that need the gathering to outlast them.
    gather: Duration,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    writer_idle: bool,
    writers_waiting: usize,
    /// The guard is gone: write what is pending without gathering, then stop.
    closed: bool,
    /// The thread has stopped (or never started): writers write directly.
    done: bool,
}

/// Lines to `out` in batches from a thread named `logs` (written directly, line by line,
/// if no thread can be started).
pub fn batched<W: Write + Send + 'static>(out: W) -> (BatchedWriter, FlushGuard) {
    batched_gathering(out, GATHER)
}

fn batched_gathering<W: Write + Send + 'static>(
    out: W,
    gather: Duration,
) -> (BatchedWriter, FlushGuard) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake_writer: Condvar::new(),
        room: Condvar::new(),
        out: Mutex::new(Box::new(out)),
        gather,
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("logs".into())
            .spawn(move || write_batches(&shared))
            .ok()
    };
    if thread.is_none() {
        shared.lock().done = true;
    }
    (
        BatchedWriter {
            shared: shared.clone(),
        },
        FlushGuard { shared, thread },
    )
}

fn write_batches(shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.lines.is_empty() && !pending.closed {
            pending.writer_idle = true;
            pending = wait(&shared.wake_writer, pending);
        }
        pending.writer_idle = false;
        if pending.lines.is_empty() {
            // Closed and drained; decided under the lock, so no line is left behind.
            pending.done = true;
            if pending.writers_waiting > 0 {
                shared.room.notify_all();
            }
            return;
        }
        // A loop on the condition, so a spurious wake-up does not cut a batch short.
        pending = shared
            .wake_writer
            .wait_timeout_while(pending, shared.gather, |p| {
                !p.closed && p.lines.len() < EARLY_WRITE
            })
            .map_or_else(|p| p.into_inner().0, |(p, _)| p);
        std::mem::swap(&mut pending.lines, &mut batch);
        let writers_waiting = pending.writers_waiting > 0;
        drop(pending);
        if writers_waiting {
            shared.room.notify_all();
        }
        shared.write_out(&batch);
        batch.clear();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_out(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // Nowhere to report a failing log stream; the next batch tries again.
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }
}

fn wait<'a>(condvar: &Condvar, guard: MutexGuard<'a, Pending>) -> MutexGuard<'a, Pending> {
    condvar.wait(guard).unwrap_or_else(|p| p.into_inner())
}

impl Write for BatchedWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut pending = shared.lock();
        while pending.lines.len() >= MAX_PENDING && !pending.done {
            pending.writers_waiting += 1;
            pending = wait(&shared.room, pending);
            pending.writers_waiting -= 1;
        }
        if pending.done {
            drop(pending);
            shared.write_out(line);
            return Ok(line.len());
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        let wake = (before == 0 && pending.writer_idle)
            || (before < EARLY_WRITE && pending.lines.len() >= EARLY_WRITE);
        drop(pending);
        if wake {
            shared.wake_writer.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Lines reach the output within `GATHER`; the guard writes the rest at exit.
        Ok(())
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_writer.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output that records each write it is given, and can be made to stall.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        stalled: Arc<Mutex<()>>,
    }

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _wait_while_stalled = self.stalled.lock().expect("stall lock");
            self.writes.lock().expect("writes").push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            let writes = self.writes.lock().expect("writes");
            String::from_utf8(writes.concat()).expect("utf8")
        }
        fn write_count(&self) -> usize {
            self.writes.lock().expect("writes").len()
        }
    }

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn lines_logged_together_are_written_together_and_in_order() {
        let out = Recorder::default();
        let (writer, _guard) = batched(out.clone());
        for i in 0..1000 {
            writer
                .clone()
                .write_all(format!("line {i}\n").as_bytes())
                .expect("write");
        }
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        until("every line", || out.text() == expected);
        // 1000 lines in well under GATHER: a handful of writes, not one per line. Up to
        // 100 allowed, as a busy machine may pause the logging thread mid-loop.
        assert!(out.write_count() < 100, "{} writes", out.write_count());
    }

    #[test]
    fn a_lone_line_is_written_within_the_gathering_time() {
        let out = Recorder::default();
        let (mut writer, _guard) = batched(out.clone());
        std::thread::sleep(Duration::from_millis(50)); // the thread is idle
        let sent = Instant::now();
        writer.write_all(b"hello\n").expect("write");
        until("the line", || out.text() == "hello\n");
        // Slack for a busy machine to wake the thread; waiting for more lines would
        // take the 5 s of `until`.
        assert!(sent.elapsed() < GATHER + Duration::from_millis(500));
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_out_the_gathering_time() {
        let out = Recorder::default();
        // Gathering that outlasts the test: only the early write can get lines out.
        let (mut writer, _guard) = batched_gathering(out.clone(), Duration::from_secs(60));
        writer.write_all(b"first\n").expect("write");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(out.text(), "", "a lone line waits for the gathering time");
        // One write per line, as tracing does: had the newline gone in a write of its own,
        // the thread could take the batch between the two, and the lone newline would
        // then rightly wait out the (here 60 s) gathering time.
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        for _ in 0..EARLY_WRITE / 1024 {
            writer.write_all(&line).expect("write");
        }
        until("the batch", || out.text().len() == 6 + EARLY_WRITE);
        assert!(out.text().starts_with("first\nxxx"));
    }

    #[test]
    fn dropping_the_guard_writes_what_is_pending_and_later_lines_directly() {
        let out = Recorder::default();
        let (mut writer, guard) = batched(out.clone());
        writer.write_all(b"before\n").expect("write");
        drop(guard);
        assert_eq!(out.text(), "before\n");
        writer.write_all(b"after\n").expect("write");
        assert_eq!(out.text(), "before\nafter\n");
    }

    #[test]
    fn a_stalled_output_makes_writers_wait_instead_of_dropping_or_growing() {
        let out = Recorder::default();
        let (writer, guard) = batched(out.clone());
        let stall = out.stalled.lock().expect("stall");
        let line = vec![b'x'; 1023];
        let logger = {
            let mut writer = writer.clone();
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..(3 * MAX_PENDING / 1024) {
                    writer.write_all(&line).expect("write");
                    writer.write_all(b"\n").expect("write");
                }
            })
        };
        // The logger fills the buffer and the one batch the stalled thread holds, then waits.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !logger.is_finished(),
            "writers did not wait for a stalled output"
        );
        let queued = writer.shared.lock().lines.len();
        assert!(queued <= MAX_PENDING + 1024, "{queued} bytes queued");
        drop(stall);
        logger.join().expect("logger");
        drop(guard);
        assert_eq!(out.text().len(), 3 * MAX_PENDING);
    }
}
