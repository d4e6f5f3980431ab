//! The log writer of `serve`: log lines (the decision log above all) are formatted on the
//! worker thread and handed to one writer thread, which writes them to stderr in batches. A
//! request never waits for a `write(2)` to stderr (a pipe, a journal, a container runtime's
//! log reader) as long as the writer keeps up.
//!
//! Invariants:
//! - **Lossless and in order**: every line handed over is written, whole, in the order the
//!   lines were handed over (one channel, one consumer). Nothing is sampled or dropped.
//! - **Bounded**: at most [`QUEUE_LINES`] lines wait. When the queue is full (stderr slower
//!   than the request rate for that long), the logging thread blocks until there is room:
//!   the same back-pressure as the synchronous writer this replaces, never unbounded memory.
//! - **Flushed on exit**: [`FlushGuard`] (held by `serve` for the life of the process) drains
//!   every queued line to the sink before it returns (waiting at most [`FLUSH_WAIT`]).
//! - Lines are written between batches of at most the queue's contents and flushed whenever the
//!   queue is empty, so a quiet guard's last line reaches stderr at once.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

/// How many lines may wait for the writer thread.
pub const QUEUE_LINES: usize = 16 * 1024;
/// How long [`FlushGuard`] waits for the queue to drain.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// A `tracing_subscriber` writer factory (`MakeWriter`) whose writers queue to the writer thread.
#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Msg>,
}

/// Drains the queue when dropped (or on [`FlushGuard::flush`]).
pub struct FlushGuard {
    tx: SyncSender<Msg>,
}

/// Start the writer thread over `sink`.
pub fn spawn<W: Write + Send + 'static>(sink: W) -> (NonBlocking, FlushGuard) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("invoke-guard-log".into())
        .spawn(move || run(sink, rx))
        .expect("spawn the log writer thread");
    (NonBlocking { tx: tx.clone() }, FlushGuard { tx })
}

fn run<W: Write>(sink: W, rx: Receiver<Msg>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, sink);
    // Blocks for the first message of a batch, then takes whatever else is already queued.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    // A failing stderr cannot be reported anywhere; keep draining.
                    let _ = out.write_all(&line);
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

impl FlushGuard {
    /// Wait (at most [`FLUSH_WAIT`]) until every line queued before this call is written.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(FLUSH_WAIT);
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One event's writer: tracing's fmt layer formats a whole line, then writes it in one call.
pub struct LineWriter {
    tx: SyncSender<Msg>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.tx
                .send(Msg::Line(buf.to_vec()))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "log writer stopped"))?;
        }
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
            tx: self.tx.clone(),
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
        // More lines than the queue holds: the writers block for room, nothing is dropped.
        let n = QUEUE_LINES * 2 + 7;
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
