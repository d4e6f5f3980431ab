//! The log writer of `serve`: log lines (the decision log above all, through
//! [`NonBlocking::write_line`]) are formatted on the worker thread and appended to one shared
//! buffer; one writer thread writes the buffer to
//! stderr in batches. A request never waits for a `write(2)` to stderr (a pipe, a journal, a
//! container runtime's log reader), and a busy guard does not wake the writer once per line:
//! the writer is woken by the first line of a batch, then lingers [`LINGER`] so the lines of
//! that burst go out in one write.
//!
//! Invariants:
//! - **Lossless and in order**: every line handed over is written, whole, in the order the
//!   lines were handed over (one buffer, one consumer). Nothing is sampled or dropped.
//! - **Bounded**: at most [`MAX_PENDING`] bytes wait. When the buffer is full (stderr slower
//!   than the request rate for that long), the logging thread blocks until the writer has taken
//!   the buffer: the same back-pressure as the synchronous writer this replaces, never
//!   unbounded memory.
//! - **Prompt**: a line reaches stderr at most [`LINGER`] plus one write after it was logged.
//! - **Flushed on exit**: [`FlushGuard`] (held by `serve` for the life of the process) waits
//!   until every line logged before it drops is written (at most [`FLUSH_WAIT`]).

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How many bytes may wait for the writer thread before loggers block.
pub const MAX_PENDING: usize = 1024 * 1024;
/// How long the writer waits after the first line of a batch before it writes the batch.
pub const LINGER: Duration = Duration::from_millis(2);
/// How long [`FlushGuard`] waits for the buffer to drain.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// Flushes asked for, and the last one the writer completed (it wrote everything that was
    /// pending when it saw the request).
    flush_asked: u64,
    flush_done: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits here for a first line (or a flush request).
    work: Condvar,
    /// Loggers wait here for room; flushers for completion.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bytes behind: keep logging.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A `tracing_subscriber` writer factory (`MakeWriter`) whose writers hand lines to the writer
/// thread.
#[derive(Clone)]
pub struct NonBlocking {
    shared: Arc<Shared>,
}

/// Drains the buffer when dropped (or on [`FlushGuard::flush`]).
pub struct FlushGuard {
    shared: Arc<Shared>,
}

/// Start the writer thread over `sink`.
pub fn spawn<W: Write + Send + 'static>(sink: W) -> (NonBlocking, FlushGuard) {
    let shared = Arc::new(Shared::default());
    let writer = shared.clone();
    std::thread::Builder::new()
        .name("invoke-guard-log".into())
        .spawn(move || run(sink, &writer))
        .expect("spawn the log writer thread");
    (
        NonBlocking {
            shared: shared.clone(),
        },
        FlushGuard { shared },
    )
}

fn run<W: Write>(mut sink: W, shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && state.flush_asked == state.flush_done {
            state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.flush_asked == state.flush_done {
            // Let the rest of this burst arrive, so it goes out in one write.
            drop(state);
            std::thread::sleep(LINGER);
            state = shared.lock();
        }
        let flushing = state.flush_asked;
        std::mem::swap(&mut batch, &mut state.pending);
        drop(state);
        shared.done.notify_all();
        // A failing stderr cannot be reported anywhere; keep draining.
        let _ = sink.write_all(&batch).and_then(|()| sink.flush());
        batch.clear();
        if batch.capacity() > MAX_PENDING {
            batch.shrink_to(MAX_PENDING);
        }
        let mut state = shared.lock();
        state.flush_done = state.flush_done.max(flushing);
        drop(state);
        shared.done.notify_all();
    }
}

impl FlushGuard {
    /// Wait (at most [`FLUSH_WAIT`]) until every line logged before this call is written.
    pub fn flush(&self) {
        let mut state = self.shared.lock();
        state.flush_asked += 1;
        let mine = state.flush_asked;
        self.shared.work.notify_one();
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        while state.flush_done < mine {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .shared
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

impl NonBlocking {
    /// Hand over one whole line (the decision log's writer).
    pub fn write_line(&self, line: &[u8]) {
        self.shared.append(line);
    }
}

impl Shared {
    /// Append `buf` (a whole line) to the pending bytes, waiting for room when full.
    fn append(&self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        let mut state = self.lock();
        while !state.pending.is_empty() && state.pending.len() + buf.len() > MAX_PENDING {
            state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let first = state.pending.is_empty();
        state.pending.extend_from_slice(buf);
        drop(state);
        if first {
            self.work.notify_one();
        }
    }
}

/// One event's writer: tracing's fmt layer formats a whole line, then writes it in one call.
pub struct LineWriter {
    shared: Arc<Shared>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: self.shared.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_after_flush() {
        use tracing_subscriber::fmt::MakeWriter;
        let sink = Sink::default();
        let (make, guard) = spawn(sink.clone());
        // More bytes than the buffer holds: the writers block for room, nothing is dropped.
        let n = MAX_PENDING / 10 + 7;
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let make = make.clone();
                std::thread::spawn(move || {
                    for i in 0..n / 2 {
                        let mut w = make.make_writer();
                        w.write_all(format!("t{t} line {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        guard.flush();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for t in 0..2 {
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} line ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(seen, (0..n / 2).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(text.lines().count(), 2 * (n / 2));
    }

    #[test]
    fn dropping_the_guard_drains_the_queue() {
        use tracing_subscriber::fmt::MakeWriter;
        let sink = Sink::default();
        let (make, guard) = spawn(sink.clone());
        for i in 0..1000 {
            writeln!(make.make_writer(), "{i}").unwrap();
        }
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().split(|b| *b == b'\n').count(), 1001);
    }
}
