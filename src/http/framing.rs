//! A read-side scanner of HTTP/1 request heads, ahead of hyper.
//!
//! hyper resolves ambiguous framing safely (Transfer-Encoding wins over Content-Length and the
//! connection is closed; equal duplicate Content-Lengths are merged) but hides that it happened.
//! A security proxy should *refuse* such requests (RFC 9112 §6.1 allows it), so this wrapper
//! follows request boundaries on the raw byte stream with `httparse` and flags a connection whose
//! client sent an ambiguous head. The service checks the flag before anything else.
//!
//! Invariants:
//! - Bytes pass through unchanged; the scanner only observes.
//! - The flag for a request is set before hyper can parse that request (we see its bytes first).
//! - A request head httparse cannot parse flags the connection (hyper refuses such a head too,
//!   so this only matters when the scanner lost step with hyper). Anything else the scanner does
//!   not follow (HTTP/2, CONNECT, a chunked body hyper fails, an oversized head) stops scanning;
//!   hyper's own strict parser still applies, and it serves nothing more after those.
//! - A chunked body is followed with hyper's own decoder grammar, byte for byte.
//! - An `Upgrade` request is scanned on like any other: hyper serves more requests on the
//!   connection when the answer is not 101, and after a 101 no request is served there any more,
//!   so a flag its frames might raise refuses nothing.
//! - With [`Scanned::first_byte_within`], a connection that sends nothing at all within the
//!   deadline fails its read and is closed (hyper's header timeout starts only once its HTTP
//!   version sniffing saw a byte, so an idle connection would otherwise hold a slot forever).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per-connection verdict shared with the service.
#[derive(Debug, Default)]
pub struct Flag(OnceLock<&'static str>);

impl Flag {
    /// Why this connection's framing was refused, if it was.
    pub fn get(&self) -> Option<&'static str> {
        self.0.get().copied()
    }

    fn set(&self, why: &'static str) {
        let _ = self.0.set(why);
    }
}

enum Mode {
    Head(Vec<u8>),
    Fixed(u64),
    Chunked(Chunk),
    Opaque,
}

/// Where the scanner is inside a chunked body: hyper's own decoder states, byte for byte, so
/// that a chunked body ends exactly where hyper ends it (a trailer line ends at `\r\n` only,
/// a bare `\n` is part of it; the section ends at an empty `\r\n` line).
#[derive(Clone, Copy)]
enum Chunk {
    /// The first hex digit of a size line.
    Start,
    /// More hex digits of the size so far.
    Size(u64),
    /// Blanks after the size (no more digits).
    SizeLws(u64),
    /// A chunk extension, up to its `\r`.
    Extension(u64),
    /// The `\n` after a size line's `\r`.
    SizeLf(u64),
    /// Chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk's size line: the end (`\r\n`) or a trailer line.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

/// An IO wrapper that scans request heads as they are read.
pub struct Scanned<IO> {
    inner: IO,
    mode: Mode,
    flag: Arc<Flag>,
    max_head: usize,
    /// Until the first byte arrives: when to give up on a silent client.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Scanned<IO> {
    /// Wrap `inner`; the returned flag is shared with the service.
    pub fn new(inner: IO, max_head: usize) -> (Self, Arc<Flag>) {
        let flag = Arc::new(Flag::default());
        (
            Self {
                inner,
                mode: Mode::Head(Vec::new()),
                flag: flag.clone(),
                max_head,
                first_byte: None,
            },
            flag,
        )
    }

    /// Fail the first read when the client sends nothing within `deadline`.
    pub fn first_byte_within(mut self, deadline: std::time::Duration) -> Self {
        self.first_byte = Some(Box::pin(tokio::time::sleep(deadline)));
        self
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let mode = std::mem::replace(&mut self.mode, Mode::Opaque);
            let (next, used) = self.step(mode, data);
            self.mode = next;
            data = &data[used..];
            if matches!(self.mode, Mode::Opaque) {
                return;
            }
        }
    }

    fn step(&self, mode: Mode, data: &[u8]) -> (Mode, usize) {
        match mode {
            Mode::Opaque => (Mode::Opaque, data.len()),
            Mode::Head(mut buf) => {
                if buf.is_empty() {
                    // Empty lines before a request line (hyper and httparse skip them): else the
                    // request after them would never be scanned (CL.TE behind blank lines).
                    let blank = data.iter().take_while(|&&b| matches!(b, b'\r' | b'\n'));
                    let skip = blank.count();
                    if skip > 0 {
                        return (Mode::Head(buf), skip);
                    }
                    // The whole head in this read (the common case): read it where it is. The
                    // same as the copying path below with an empty buffer, without the copy.
                    if let Some(end) = head_end(data, 0) {
                        return (self.after_head(&data[..end]), end);
                    }
                }
                let start = buf.len().saturating_sub(3);
                buf.extend_from_slice(data);
                let Some(end) = head_end(&buf, start) else {
                    if buf.len() > self.max_head {
                        return (Mode::Opaque, data.len());
                    }
                    return (Mode::Head(buf), data.len());
                };
                let used = data.len() - (buf.len() - end);
                (self.after_head(&buf[..end]), used)
            }
            Mode::Fixed(n) => {
                let take = n.min(data.len() as u64);
                let rest = n - take;
                let next = if rest == 0 {
                    Mode::Head(Vec::new())
                } else {
                    Mode::Fixed(rest)
                };
                (next, take as usize)
            }
            Mode::Chunked(Chunk::Data(n)) => {
                let take = n.min(data.len() as u64);
                let rest = n - take;
                let next = if rest == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(rest)
                };
                (Mode::Chunked(next), take as usize)
            }
            Mode::Chunked(state) => (chunk_step(state, data[0]), 1),
        }
    }

    fn after_head(&self, head: &[u8]) -> Mode {
        // Uninitialized slots: httparse writes the ones it fills (128 initialized headers
        // would be 4 KiB of stores per request head).
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(head, &mut headers);
        if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
            // Desync by a head the scanner cannot read (a body framed differently than hyper
            // frames it): refuse the connection rather than stop looking. hyper refuses such a
            // head itself, so no request a client could have had served is lost.
            if !head.starts_with(H2_PREFACE) {
                self.flag.set("unparsable request head");
            }
            return Mode::Opaque;
        }
        if req.method == Some("CONNECT") {
            return Mode::Opaque;
        }
        // The framing headers: how many of each, the first Content-Length, the last
        // Transfer-Encoding (no allocation: most heads have neither).
        let (mut lengths, mut length) = (0usize, None::<&[u8]>);
        let (mut codings, mut coding) = (0usize, None::<&[u8]>);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = length.or(Some(h.value));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                codings += 1;
                coding = Some(h.value);
            }
        }
        // CL.TE / TE.CL desync (Kettle 2019): both framings in one request.
        if lengths > 0 && codings > 0 {
            self.flag.set("Content-Length with Transfer-Encoding");
            return Mode::Opaque;
        }
        // Duplicate Content-Length, even equal, or a list in one header.
        if lengths > 1 || length.is_some_and(|v| v.contains(&b',')) {
            self.flag.set("duplicate Content-Length");
            return Mode::Opaque;
        }
        if let Some(last) = coding {
            let chunked = String::from_utf8_lossy(last)
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            return if chunked {
                Mode::Chunked(Chunk::Start)
            } else {
                Mode::Opaque
            };
        }
        match length {
            None => Mode::Head(Vec::new()),
            Some(v) => match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(0) => Mode::Head(Vec::new()),
                Some(n) => Mode::Fixed(n),
                None => Mode::Opaque,
            },
        }
    }
}

/// The start of the HTTP/2 connection preface: hyper-util switches to HTTP/2 on it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// One byte of a chunked body, as hyper's decoder reads it. Where hyper fails the body (it
/// then serves no more requests on the connection) the scanner stops too.
fn chunk_step(state: Chunk, byte: u8) -> Mode {
    let hex = |size: u64| {
        let digit = (byte as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(digit))
    };
    let next = match (state, byte) {
        (Chunk::Start, _) => hex(0).map(Chunk::Size),
        (Chunk::Size(n), b'\t' | b' ') | (Chunk::SizeLws(n), b'\t' | b' ') => {
            Some(Chunk::SizeLws(n))
        }
        (Chunk::Size(n) | Chunk::SizeLws(n), b';') => Some(Chunk::Extension(n)),
        (Chunk::Size(n) | Chunk::SizeLws(n) | Chunk::Extension(n), b'\r') => Some(Chunk::SizeLf(n)),
        (Chunk::Size(n), _) => hex(n).map(Chunk::Size),
        (Chunk::SizeLws(_), _) => None,
        (Chunk::Extension(_), b'\n') => None,
        (Chunk::Extension(n), _) => Some(Chunk::Extension(n)),
        (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
        (Chunk::SizeLf(n), b'\n') => Some(Chunk::Data(n)),
        (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
        (Chunk::DataLf, b'\n') => Some(Chunk::Start),
        (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
        (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
        (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
        (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
        (Chunk::EndLf, b'\n') => return Mode::Head(Vec::new()),
        (Chunk::SizeLf(_) | Chunk::Data(_) | Chunk::DataCr | Chunk::DataLf, _)
        | (Chunk::TrailerLf | Chunk::EndLf, _) => None,
    };
    next.map_or(Mode::Opaque, Mode::Chunked)
}

/// What the scanner saw in a byte stream: for the fuzz target that compares its framing with
/// hyper's (`fuzz/fuzz_targets/framing.rs`). Not used by the server.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Offsets where the scanner expects each request head to start, in order.
    pub heads: Vec<usize>,
    /// Offset from which the scanner stopped looking (`None`: it followed the whole stream).
    pub opaque_at: Option<usize>,
    /// The verdict, as the service would read it after all chunks.
    pub flag: Option<&'static str>,
}

/// Run the scanner over `chunks` as successive reads deliver them (the same `step` the
/// connection wrapper runs) and report where it found request heads.
#[doc(hidden)]
pub fn trace(chunks: &[&[u8]], max_head: usize) -> Trace {
    let (mut s, flag) = Scanned::new((), max_head);
    let mut heads = vec![0];
    let mut offset = 0;
    let mut opaque_at = None;
    'chunks: for chunk in chunks {
        let mut data: &[u8] = chunk;
        while !data.is_empty() {
            let mode = std::mem::replace(&mut s.mode, Mode::Opaque);
            let was_fresh = matches!(&mode, Mode::Head(b) if b.is_empty());
            let (next, used) = s.step(mode, data);
            // Empty lines skipped before a head: the head still starts where they start.
            let blank = was_fresh && data[..used].iter().all(|b| matches!(b, b'\r' | b'\n'));
            offset += used;
            data = &data[used..];
            match &next {
                Mode::Opaque => {
                    opaque_at = Some(offset);
                    s.mode = next;
                    break 'chunks;
                }
                // A fresh head starts here (after a body, trailers, or a body-less head); empty
                // lines before it stay in front of it (httparse skips them).
                Mode::Head(buf) if buf.is_empty() && !blank => heads.push(offset),
                _ => {}
            }
            s.mode = next;
        }
    }
    Trace {
        heads,
        opaque_at,
        flag: flag.get(),
    }
}

/// Where a request head ends: after its first empty line, with the line endings httparse (and
/// so hyper) accepts, `\r\n` or a bare `\n` (else `\r\n\n` ends a head for hyper, not for us).
/// Only the line ends are looked at (`memchr`), not every byte of the head.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'\n', &buf[from..])
        .map(|i| i + from)
        .find_map(|i| match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
}

impl<IO: AsyncRead + Unpin> AsyncRead for Scanned<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.first_byte = None;
            if !matches!(self.mode, Mode::Opaque) {
                self.observe(&buf.filled()[before..]);
            }
        } else if let Some(deadline) = self.first_byte.as_mut() {
            // Idle connection (connected, never a byte: slowloris' cheapest form).
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header read timeout",
                )));
            }
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Scanned<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<&'static str> {
        let (mut s, flag) = Scanned::new((), 65536);
        for c in chunks {
            s.observe(c);
        }
        flag.get()
    }

    #[test]
    fn clean_keepalive_sequences_pass() {
        let two = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(scan(&[two]), None);
        let chunked = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(scan(&[chunked]), None);
    }

    #[test]
    fn an_upgrade_answered_without_101_does_not_stop_the_scan() {
        // Found by fuzz/fuzz_targets/framing.rs: hyper serves the next request when the upgrade
        // is refused, so the scanner must look at it.
        let s = b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(scan(&[s]).is_some());
    }

    #[test]
    fn bare_line_feeds_end_a_head_as_for_hyper() {
        // Found by fuzz/fuzz_targets/framing.rs: `\r\n\n` ends a head for httparse.
        let s = b"GET /a HTTP/1.1\r\n\nPOST /b HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        assert!(scan(&[s]).is_some());
        let crash = b"\r\nGET /a HTTP/1.1\r\n\nGET /a HTTP/1.1\r\nHost:P/1.1\r\nHost: g\r\n\r\n";
        assert_eq!(trace(&[crash], 65536).heads, [0, 20, crash.len()]);
    }

    #[test]
    fn empty_lines_between_requests_do_not_stop_the_scan() {
        // httparse and hyper skip empty lines before a request line (RFC 9112 §2.2): so must the
        // scanner, or the request after them is never scanned.
        let blank = b"GET /a HTTP/1.1\r\n\r\n\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(scan(&[blank]).is_some());
        let split: [&[u8]; 2] = [
            b"GET /a HTTP/1.1\r\n\r\n\r",
            b"\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ];
        assert!(scan(&split).is_some());
        let two = b"\r\nGET /a HTTP/1.1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(trace(&[two], 65536).heads, [0, 21, two.len()]);
    }

    #[test]
    fn chunked_trailers_end_where_hyper_ends_them() {
        // Found by fuzz/fuzz_targets/framing.rs (reliability item 10): a trailer line ends at
        // `\r\n` only, so `X-T:\n\r\n` is one trailer line and ` 1\r\n` another; the body
        // ends at the next empty line and hyper serves `GET /b`.
        let s = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T:\n\r\n 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let t = trace(&[s], 65536);
        assert_eq!((t.heads.len(), t.opaque_at, t.flag), (3, None, None));
        assert_eq!(&s[t.heads[1]..t.heads[1] + 6], b"GET /b");
        // Byte by byte, the same.
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(trace(&bytes, 65536), t);
        // Extensions, blanks after the size and upper-case hex, as hyper reads them.
        let ext = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nA \t;x=1\r\n0123456789\r\n0;y\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        assert!(scan(&[ext]).is_some());
    }

    #[test]
    fn a_head_the_scanner_cannot_parse_refuses_the_connection() {
        let s = b"GET /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\x01junk\r\n\r\n";
        assert_eq!(scan(&[s]), Some("unparsable request head"));
        // The HTTP/2 preface is not an HTTP/1 head: hyper-util serves HTTP/2 after it.
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"]), None);
        // A chunked body hyper fails ends the scan without refusing (hyper serves no more).
        let bad = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+1\r\nx\r\n0\r\n\r\n";
        assert_eq!(trace(&[bad], 65536).flag, None);
        assert!(trace(&[bad], 65536).opaque_at.is_some());
    }

    #[test]
    fn ambiguous_heads_are_flagged_even_when_split_or_later() {
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nContent-Len",
            b"gth: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ])
        .is_some());
        let later = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        assert!(scan(&[later]).is_some());
        // A body that looks like a request head is not scanned as one.
        let body = b"POST /a HTTP/1.1\r\nContent-Length: 60\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        assert_eq!(scan(&[body]), None);
    }
}
