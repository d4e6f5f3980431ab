//! The decision log: one fixed-shape line per request, written without tracing's formatter.
//!
//! A [`DecisionLine`] borrows every field from the request's context; [`emit`] formats it into
//! a reused per-thread buffer (text: `key=value` pairs; JSON: tracing-subscriber's line shape;
//! both written by hand, field by field) and hands the bytes to the sink [`install`]ed by `serve` (the writer thread of
//! [`crate::logwriter`]). Whether a line is written is still the log filter's decision
//! (`log.level` / `INVOKE_GUARD_LOG`), asked per line class with `tracing::enabled!`:
//! - [`ALLOW_TARGET`] (`invoke_guard::decision::allow`): outcomes `allow`, `redirect`, `socket`;
//! - [`DENY_TARGET`] (`invoke_guard::decision::deny`): every other outcome (`deny`, `would_deny`,
//!   `withheld`, `upstream_error`, `prelude_refused`).
//!
//! So `info,invoke_guard::decision::allow=off` keeps denials and drops allows, and
//! `invoke_guard::decision=off` drops both.
//!
//! Invariants:
//! - **One line per call, unforgeable.** In the text format every string value is escaped:
//!   control characters (C0, DEL, C1), the Unicode line and paragraph separators and the
//!   bidirectional controls become `\n`, `\t`, `\u{…}`, quotes and backslashes are escaped, and
//!   a value with anything but plain visible ASCII is quoted. A value can therefore never end the
//!   line or start a `key=` of its own (log injection, CWE-117; Trojan Source, CVE-2021-42574).
//!   The JSON format escapes the same characters (as `\uXXXX` where JSON has no shorter escape).
//! - **Bounded.** Every value is cut at [`MAX_VALUE_BYTES`] (on a character boundary) and marked
//!   `...[truncated N bytes]`; the facts at [`MAX_FACT_BYTES`] each and [`MAX_FACTS`] in all, so
//!   a line is a few KiB at most whatever the request carried.
//! - Nothing is allocated per line once a thread's buffer has grown (no `String` of the facts,
//!   no `Debug` formatting, no ANSI colours).
//! - Without an installed sink (unit tests, `explain`), nothing is written.

use std::io::Write as _;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The target of lines whose request was forwarded as asked (`allow`, `redirect`, `socket`).
pub const ALLOW_TARGET: &str = "invoke_guard::decision::allow";
/// The target of every other line (`deny`, `would_deny`, `withheld`, ...).
pub const DENY_TARGET: &str = "invoke_guard::decision::deny";
/// The most bytes of one value that are logged.
pub const MAX_VALUE_BYTES: usize = 256;
/// The most bytes of one fact that are logged.
pub const MAX_FACT_BYTES: usize = 256;
/// The most facts logged on one line.
pub const MAX_FACTS: usize = 16;

/// One decision, every field borrowed from the request's context.
#[derive(Debug, Clone, Copy)]
pub struct DecisionLine<'a> {
    /// `X-Request-Id` as sent upstream (a trusted proxy's, or the guard's own).
    pub request_id: &'a str,
    /// The connection's peer address, as text (formatted once per connection).
    pub client: &'a str,
    /// The matched rule, or `-`.
    pub rule_id: &'a str,
    pub user_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub method: &'a str,
    /// The canonical path, or the raw one when the target was refused (escaped here).
    pub path: &'a str,
    /// `allow`, `deny`, `would_deny`, `redirect`, `socket`, `withheld`, ...
    pub outcome: &'a str,
    /// A fixed reason label, or `-`.
    pub reason: &'a str,
    /// The predicate or stage that decided (`all` for an allow), or `-`.
    pub check: &'a str,
    /// The deciding check's facts (joined with `; ` when written).
    pub facts: &'a [String],
    /// A cause for operators (database errors, withheld answers); empty when none.
    pub detail: &'a str,
    pub status: u16,
    pub micros: u64,
}

impl DecisionLine<'_> {
    /// The target this line is filtered and written under.
    pub fn target(&self) -> &'static str {
        match self.outcome {
            "allow" | "redirect" | "socket" => ALLOW_TARGET,
            _ => DENY_TARGET,
        }
    }
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `TIMESTAMP  INFO TARGET: key=value ...`, like the guard's other text lines.
    Text,
    /// `{"timestamp":…,"level":"INFO","target":…,"fields":{…}}`, like its other JSON lines.
    Json,
}

type SinkFn = dyn Fn(&[u8]) + Send + Sync;

struct Sink {
    format: Format,
    write: Box<SinkFn>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Where this process's decision lines go (once per process; `false` if one was installed
/// already). `write` gets whole lines, newline included.
pub fn install(format: Format, write: impl Fn(&[u8]) + Send + Sync + 'static) -> bool {
    SINK.set(Sink {
        format,
        write: Box::new(write),
    })
    .is_ok()
}

thread_local! {
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Write one decision line, if a sink is installed and the log filter enables its target.
pub fn emit(line: &DecisionLine<'_>) {
    let Some(sink) = SINK.get() else { return };
    let enabled = match line.target() {
        ALLOW_TARGET => {
            tracing::enabled!(target: "invoke_guard::decision::allow", tracing::Level::INFO)
        }
        _ => tracing::enabled!(target: "invoke_guard::decision::deny", tracing::Level::INFO),
    };
    if !enabled {
        return;
    }
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        format_line(buf, sink.format, line, SystemTime::now());
        (sink.write)(buf);
        // A line is a few KiB at most; do not keep a rare large one's capacity.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
    });
}

/// Format `line` (newline included) into `out`.
pub fn format_line(out: &mut Vec<u8>, format: Format, line: &DecisionLine<'_>, now: SystemTime) {
    match format {
        Format::Text => text(out, line, now),
        Format::Json => json(out, line, now),
    }
}

fn text(out: &mut Vec<u8>, l: &DecisionLine<'_>, now: SystemTime) {
    timestamp(out, now);
    out.extend_from_slice(b"  INFO ");
    out.extend_from_slice(l.target().as_bytes());
    out.push(b':');
    let field = |out: &mut Vec<u8>, key: &str, value: &str| {
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        text_value(out, value, MAX_VALUE_BYTES);
    };
    // Values the guard itself spells, in a closed alphabet: written as they are.
    let word = |out: &mut Vec<u8>, key: &str, value: &str| {
        debug_assert!(bare(value.as_bytes()), "{key}={value:?}");
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    };
    field(out, "request_id", l.request_id);
    // An IP address in text: hex digits, dots and colons.
    word(out, "client", l.client);
    // A rule id: [a-z0-9_.-], checked when the table is compiled.
    word(out, "rule_id", l.rule_id);
    field(out, "user_id", l.user_id.unwrap_or("-"));
    field(out, "email", l.email.unwrap_or("-"));
    // An HTTP method: token characters (hyper refuses anything else).
    word(out, "method", l.method);
    field(out, "path", l.path);
    // Fixed labels of the crate.
    word(out, "outcome", l.outcome);
    word(out, "reason", l.reason);
    word(out, "check", l.check);
    out.extend_from_slice(b" facts=\"");
    for_each_fact(l.facts, |part| match part {
        Part::Separator => out.extend_from_slice(b"; "),
        Part::Fact(f) => escape_capped(out, f, MAX_FACT_BYTES),
        Part::More(n) => {
            let _ = write!(out, "...[{n} more facts]");
        }
    });
    out.extend_from_slice(b"\" detail=");
    text_value(out, l.detail, MAX_VALUE_BYTES);
    out.extend_from_slice(b" status=");
    out.extend_from_slice(itoa::Buffer::new().format(l.status).as_bytes());
    out.extend_from_slice(b" micros=");
    out.extend_from_slice(itoa::Buffer::new().format(l.micros).as_bytes());
    out.push(b'\n');
}

thread_local! {
    /// The current second as RFC 3339 (`YYYY-MM-DDTHH:MM:SS`): formatted once a second.
    static SECOND: std::cell::RefCell<(u64, [u8; 19])> = const { std::cell::RefCell::new((u64::MAX, [0; 19])) };
}

/// `now` as RFC 3339 with microseconds, UTC (what `humantime::format_rfc3339_micros` writes;
/// the date and time part is formatted by it once per second).
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let formatted = humantime::format_rfc3339_seconds(whole).to_string();
            text.copy_from_slice(&formatted.as_bytes()[..19]);
            *cached = secs;
        }
        out.extend_from_slice(&text[..]);
    });
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.push(b'.');
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is below `n` (n ≤ 128; exact as a yes/no).
fn any_below(w: u64, n: u8) -> bool {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS != 0
}

/// Whether any byte of `w` is `b`.
fn any_eq(w: u64, b: u8) -> bool {
    let x = w ^ (ONES * u64::from(b));
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// The length of the leading run of bytes that need no escaping in a quoted value: printable
/// ASCII (0x20..0x7f) but `"` and `\`. Eight bytes at a time.
fn quoted_run(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        if any_below(w, 0x20)
            || w & HIGHS != 0
            || any_eq(w, 0x7f)
            || any_eq(w, b'"')
            || any_eq(w, b'\\')
        {
            break;
        }
        i += 8;
    }
    while i < bytes.len() && (0x20..0x7f).contains(&bytes[i]) && !matches!(bytes[i], b'"' | b'\\') {
        i += 1;
    }
    i
}

/// Whether `value` can be written bare: visible ASCII (0x21..0x7f) but `"`, `\` and `=`.
fn bare(value: &[u8]) -> bool {
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        if any_below(w, 0x21)
            || w & HIGHS != 0
            || any_eq(w, 0x7f)
            || any_eq(w, b'"')
            || any_eq(w, b'\\')
            || any_eq(w, b'=')
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'='))
}

/// A value bare when it is plain visible ASCII (and not empty), else quoted and escaped.
fn text_value(out: &mut Vec<u8>, value: &str, max: usize) {
    let bare = !value.is_empty() && value.len() <= max && bare(value.as_bytes());
    if bare {
        out.extend_from_slice(value.as_bytes());
    } else {
        out.push(b'"');
        escape_capped(out, value, max);
        out.push(b'"');
    }
}

/// `value` cut at `max` bytes (on a character boundary) and the number of bytes cut.
fn cap(value: &str, max: usize) -> (&str, usize) {
    if value.len() <= max {
        return (value, 0);
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    (&value[..end], value.len() - end)
}

/// Escape `value` (capped) for the inside of a quoted text value.
fn escape_capped(out: &mut Vec<u8>, value: &str, max: usize) {
    write_capped(out, value, max, escape);
}

/// `value` cut at `max` bytes, written by `write`, then the mark of what was cut (if anything).
fn write_capped(out: &mut Vec<u8>, value: &str, max: usize, write: fn(&mut Vec<u8>, &str)) {
    let (value, cut) = cap(value, max);
    write(out, value);
    if cut > 0 {
        let _ = write!(out, "...[truncated {cut} bytes]");
    }
}

fn escape(out: &mut Vec<u8>, value: &str) {
    // Log injection (CWE-117) and Trojan Source (CVE-2021-42574): nothing raw that ends or reorders a line.
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // The common case: visible ASCII and spaces, found in runs and copied in runs.
        i += quoted_run(&bytes[i..]);
        if i >= bytes.len() {
            break;
        }
        let ch = value[i..].chars().next().unwrap_or('\u{fffd}');
        let len = ch.len_utf8();
        let replacement: Option<&[u8]> = match ch {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            _ => None,
        };
        if replacement.is_none() && !needs_unicode_escape(ch) {
            i += len;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match replacement {
            Some(r) => out.extend_from_slice(r),
            None => {
                let _ = write!(out, "\\u{{{:04x}}}", ch as u32);
            }
        }
        i += len;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Characters that can end a line or rearrange what a reader sees.
fn needs_unicode_escape(ch: char) -> bool {
    ch.is_control()
        || matches!(
            ch,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

enum Part<'a> {
    Separator,
    Fact(&'a str),
    More(usize),
}

/// The facts as written: at most [`MAX_FACTS`], `; `-separated, then how many were left out.
fn for_each_fact<'a>(facts: &'a [String], mut f: impl FnMut(Part<'a>)) {
    for (i, fact) in facts.iter().take(MAX_FACTS).enumerate() {
        if i > 0 {
            f(Part::Separator);
        }
        f(Part::Fact(fact));
    }
    if facts.len() > MAX_FACTS {
        f(Part::Separator);
        f(Part::More(facts.len() - MAX_FACTS));
    }
}

// === JSON ===

/// `{"timestamp":…,"level":"INFO","target":…,"fields":{…}}`: the shape of tracing-subscriber's
/// JSON lines, written field by field (the keys are fixed; every string value goes through
/// [`json_escape`]).
fn json(out: &mut Vec<u8>, l: &DecisionLine<'_>, now: SystemTime) {
    // Values the guard itself spells (a closed alphabet, as in the text format: an IP address,
    // a rule id, a method, fixed labels) are written as they are; each constant piece closes
    // the previous value and opens the next.
    let word = |out: &mut Vec<u8>, piece: &[u8], value: &str| {
        debug_assert!(bare(value.as_bytes()), "{value:?}");
        out.extend_from_slice(piece);
        out.extend_from_slice(value.as_bytes());
    };
    let field = |out: &mut Vec<u8>, piece: &[u8], value: &str| {
        out.extend_from_slice(piece);
        json_capped(out, value, MAX_VALUE_BYTES);
    };
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    word(out, b"\",\"level\":\"INFO\",\"target\":\"", l.target());
    field(out, b"\",\"fields\":{\"request_id\":\"", l.request_id);
    word(out, b"\",\"client\":\"", l.client);
    word(out, b"\",\"rule_id\":\"", l.rule_id);
    field(out, b"\",\"user_id\":\"", l.user_id.unwrap_or("-"));
    field(out, b"\",\"email\":\"", l.email.unwrap_or("-"));
    word(out, b"\",\"method\":\"", l.method);
    field(out, b"\",\"path\":\"", l.path);
    word(out, b"\",\"outcome\":\"", l.outcome);
    word(out, b"\",\"reason\":\"", l.reason);
    word(out, b"\",\"check\":\"", l.check);
    out.extend_from_slice(b"\",\"facts\":\"");
    for_each_fact(l.facts, |part| match part {
        Part::Separator => out.extend_from_slice(b"; "),
        Part::Fact(f) => json_capped(out, f, MAX_FACT_BYTES),
        Part::More(n) => {
            let _ = write!(out, "...[{n} more facts]");
        }
    });
    field(out, b"\",\"detail\":\"", l.detail);
    out.extend_from_slice(b"\",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(l.status).as_bytes());
    out.extend_from_slice(b",\"micros\":");
    out.extend_from_slice(itoa::Buffer::new().format(l.micros).as_bytes());
    out.extend_from_slice(b"}}\n");
}

/// `value` (capped and marked like the text format's) escaped for the inside of a JSON string.
fn json_capped(out: &mut Vec<u8>, value: &str, max: usize) {
    write_capped(out, value, max, json_escape);
}

/// The inside of a JSON string (RFC 8259 section 7): `"`, `\` and the C0 controls escaped as
/// `serde_json` escapes them, and, like the text format, DEL, the C1 controls, the line and
/// paragraph separators and the bidirectional controls as `\uXXXX` (all in the BMP), so that a
/// JSON line read raw (a terminal, `grep`) cannot be reordered either. It parses back to the same
/// string. The rest (valid UTF-8, as `value` is a `str`) is copied in runs.
fn json_escape(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut i = 0;
    loop {
        // Log injection (CWE-117) and Trojan Source (CVE-2021-42574), as in the text format.
        i += quoted_run(&bytes[i..]);
        let Some(&b) = bytes.get(i) else { break };
        let (code, len) = if b < 0x80 {
            (u32::from(b), 1)
        } else {
            let ch = value[i..].chars().next().unwrap_or('\u{fffd}');
            if !needs_unicode_escape(ch) {
                i += ch.len_utf8();
                continue;
            }
            (ch as u32, ch.len_utf8())
        };
        out.extend_from_slice(&bytes[start..i]);
        match code {
            0x22 => out.extend_from_slice(b"\\\""),
            0x5c => out.extend_from_slice(b"\\\\"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((code >> shift) & 0xf) as usize]);
                }
            }
        }
        i += len;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, facts: &'a [String]) -> DecisionLine<'a> {
        DecisionLine {
            request_id: "r-1",
            client: "10.1.2.3",
            rule_id: "boards.get",
            user_id: Some("u-1"),
            email: Some("bob@example.com"),
            method: "GET",
            path,
            outcome: "deny",
            reason: "forbidden",
            check: "board.read",
            facts,
            detail: "",
            status: 403,
            micros: 42,
        }
    }

    fn text_of(l: &DecisionLine<'_>) -> String {
        let mut out = Vec::new();
        format_line(&mut out, Format::Text, l, SystemTime::UNIX_EPOCH);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_lines_have_a_fixed_shape() {
        let facts = ["board b-1 owner u-2".to_owned(), "caller u-1".to_owned()];
        assert_eq!(
            text_of(&line("/api/v1/boards/b-1", &facts)),
            "1970-01-01T00:00:00.000000Z  INFO invoke_guard::decision::deny: request_id=r-1 \
             client=10.1.2.3 rule_id=boards.get user_id=u-1 email=bob@example.com method=GET \
             path=/api/v1/boards/b-1 outcome=deny reason=forbidden check=board.read \
             facts=\"board b-1 owner u-2; caller u-1\" detail=\"\" status=403 micros=42\n"
        );
    }

    #[test]
    fn control_characters_and_quotes_cannot_forge_a_line_or_a_field() {
        let forged = "x\n2026-01-01T00:00:00Z  INFO invoke_guard::decision: rule_id=images.get \
                      user_id=\"admin\" outcome=\"allow\"\r\u{2028}\u{202e}\u{85}\u{1b}[31m\\";
        let facts = [format!("board {forged} owner u-2")];
        let text = text_of(&line(forged, &facts));
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        for raw in ['\r', '\u{2028}', '\u{202e}', '\u{85}', '\u{1b}'] {
            assert!(!text.contains(raw), "{raw:?} in {text}");
        }
        assert!(
            text.contains(r"\u{2028}\u{202e}\u{0085}\u{001b}[31m\\"),
            "{text}"
        );
        // Read as logfmt, the line has each key once, and the forged text stays a value.
        let fields = logfmt(text.trim_end().split_once(": ").unwrap().1);
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "request_id",
                "client",
                "rule_id",
                "user_id",
                "email",
                "method",
                "path",
                "outcome",
                "reason",
                "check",
                "facts",
                "detail",
                "status",
                "micros"
            ],
            "{text}"
        );
        assert_eq!(fields[7].1, "deny");
        assert!(fields[6].1.starts_with("x\\n2026-"), "{:?}", fields[6]);
    }

    /// key=value pairs, values bare or quoted with backslash escapes (kept as written).
    fn logfmt(mut rest: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some((key, after)) = rest.trim_start().split_once('=') {
            let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
                let mut end = 0;
                let bytes = quoted.as_bytes();
                while bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                (&quoted[..end], &quoted[end + 1..])
            } else {
                after.split_at(after.find(' ').unwrap_or(after.len()))
            };
            out.push((key.to_owned(), value.to_owned()));
            rest = tail;
        }
        out
    }

    #[test]
    fn every_value_is_capped_and_marked() {
        let long = "é".repeat(1_000_000);
        let facts: Vec<String> = (0..100).map(|i| format!("fact {i} {long}")).collect();
        let mut l = line(&long, &facts);
        l.detail = &long;
        l.request_id = &long;
        let text = text_of(&l);
        assert!(text.len() < 8 * 1024, "{}", text.len());
        assert!(text.contains("...[truncated 1999744 bytes]"), "{text}");
        assert!(text.contains("...[84 more facts]"), "{text}");
        let mut json = Vec::new();
        format_line(&mut json, Format::Json, &l, SystemTime::UNIX_EPOCH);
        assert!(json.len() < 8 * 1024, "{}", json.len());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let path = v["fields"]["path"].as_str().unwrap();
        assert!(path.ends_with("...[truncated 1999744 bytes]"), "{path}");
        assert!(path.len() <= MAX_VALUE_BYTES + 32);
    }

    #[test]
    fn json_lines_keep_the_tracing_shape() {
        let facts = ["a \"b\"\nc".to_owned(), "d".to_owned()];
        let mut out = Vec::new();
        format_line(
            &mut out,
            Format::Json,
            &line("/p", &facts),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], DENY_TARGET);
        let f = &v["fields"];
        assert_eq!(f["facts"], "a \"b\"\nc; d");
        assert_eq!(f["client"], "10.1.2.3");
        assert_eq!(f["email"], "bob@example.com");
        assert_eq!(f["status"], 403);
        assert_eq!(f["micros"], 42);
        assert_eq!(f["request_id"], "r-1");
    }

    #[test]
    fn allows_and_denials_have_their_own_targets() {
        let mut l = line("/p", &[]);
        for (outcome, target) in [
            ("allow", ALLOW_TARGET),
            ("redirect", ALLOW_TARGET),
            ("socket", ALLOW_TARGET),
            ("deny", DENY_TARGET),
            ("would_deny", DENY_TARGET),
            ("withheld", DENY_TARGET),
            ("upstream_error", DENY_TARGET),
        ] {
            l.outcome = outcome;
            assert_eq!(l.target(), target, "{outcome}");
        }
    }
}

#[cfg(test)]
mod fast_scan_tests {
    use super::*;

    /// The word-at-a-time scans agree with the byte-at-a-time rules on every byte value in
    /// every position of a word and its tail.
    #[test]
    fn scans_agree_with_the_byte_rules() {
        let quoted = |b: u8| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\');
        let bare_byte = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'=');
        for len in [1usize, 7, 8, 9, 16, 17] {
            for pos in 0..len {
                for b in 0u8..=255 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    let want_run = v.iter().position(|&x| !quoted(x)).unwrap_or(len);
                    assert_eq!(quoted_run(&v), want_run, "len {len} pos {pos} byte {b}");
                    assert_eq!(bare(&v), v.iter().all(|&x| bare_byte(x)), "{len} {pos} {b}");
                }
            }
        }
    }

    /// Escaped JSON strings read back (with `serde_json`) as the original, byte for byte, and
    /// hold nothing raw that the text format escapes.
    #[test]
    fn json_strings_read_back_as_written() {
        let mut every_char: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        every_char.push_str("\u{202e}\u{10ffff}\"\\ end");
        for value in [
            every_char.as_str(),
            "",
            "\u{0}",
            "a\"b\\c\n\r\t\u{8}\u{c}\u{1f}\u{7f}é\u{85}\u{2028}",
        ] {
            let mut out = b"\"".to_vec();
            json_escape(&mut out, value);
            out.push(b'"');
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, value);
            let raw = std::str::from_utf8(&out[1..out.len() - 1]).unwrap();
            assert!(!raw.chars().any(needs_unicode_escape), "{raw:?}");
        }
    }

    #[test]
    fn timestamps_are_humantime_s() {
        for t in [0u64, 1_700_000_000_123_456, 1_765_000_000_999_999] {
            let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(t);
            let mut out = Vec::new();
            timestamp(&mut out, now);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_micros(now).to_string()
            );
        }
    }
}
