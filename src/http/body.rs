//! Request and response bodies: bounded reads, read timeouts, and parsing that agrees with
//! InvokeAI's own parsers (Starlette, python-multipart, pydantic) or refuses the input.
//!
//! Invariants:
//! - A body is read only up to its limit and within its timeout; a streamed body that stalls
//!   longer than the timeout between two chunks is cut with an error (the upstream sees an
//!   aborted request, never a truncated complete one).
//! - JSON is parsed against the rule's [`JsonPlan`]: memory stays proportional to what checks read.
//! - Multipart input that Starlette could read differently from the guard (repeated parameters,
//!   repeated or nameless parts, transfer encodings) is refused with 400; parameter names are
//!   matched case-insensitively as Starlette does. A form has at most [`MAX_FORM_FIELDS`] fields
//!   and [`MAX_FORM_FILES`] files (Starlette's limits); more is refused with 400.
//! - A request body with a `Content-Encoding` is refused where the guard reads it (Starlette does
//!   not decode request bodies, so the guard would be judging bytes InvokeAI never parses).
//! - A response body the guard must read is decoded (gzip, deflate) within the same limit, or
//!   refused: it is never passed on unread.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde_json::Value;
use tokio::time::{Instant, Sleep};

use crate::decision::{BoxError, Refusal};
use crate::http::jsonplan::{self, JsonPlan};

/// Read a whole request body: at most `limit` bytes, within `timeout`.
pub async fn read(
    body: crate::decision::Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refusal::TooLarge);
    }
    match tokio::time::timeout(timeout, read_bounded(body, limit)).await {
        Err(_) => Err(Refusal::Timeout),
        Ok(result) => result,
    }
}

/// Collect at most `limit` bytes (one chunk is kept as it came; more are joined once).
pub async fn read_bounded(mut body: crate::decision::Body, limit: usize) -> Result<Bytes, Refusal> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| Refusal::BadRequest("could not read the request body".into()))?;
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total > limit {
                return Err(Refusal::TooLarge);
            }
            chunks.push(data);
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => Bytes::from(chunks.concat()),
    })
}

/// Refuse a compressed request body on a rule that reads it.
pub fn refuse_encoded(headers: &HeaderMap) -> Result<(), Refusal> {
    let encoded = headers.get_all(CONTENT_ENCODING).iter().any(|v| {
        v.to_str()
            .map(|s| !s.trim().eq_ignore_ascii_case("identity"))
            .unwrap_or(true)
    });
    if encoded {
        // InvokeAI would parse the compressed bytes, not what the guard could decode (differential).
        return Err(Refusal::BadRequest(
            "Content-Encoding on a request body is not supported".into(),
        ));
    }
    Ok(())
}

/// Parse a JSON body, keeping what `plan` selects (an empty body is no body).
pub fn json(bytes: &[u8], plan: &JsonPlan) -> Result<Option<Value>, Refusal> {
    if bytes.is_empty() {
        return Ok(None);
    }
    jsonplan::parse(bytes, plan)
        .map(Some)
        .map_err(|e| Refusal::Unprocessable(format!("JSON decode error: {e}")))
}

// === multipart ===

/// `type/subtype; k=v; ...` with lower-cased parameter names, as python-multipart's
/// `parse_options_header` reads it; a repeated parameter is ambiguous and refused.
fn options_header(value: &str) -> Result<(String, HashMap<String, String>), String> {
    let mut parts = split_params(value)?.into_iter();
    let main = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mut params = HashMap::new();
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = k.trim().to_ascii_lowercase();
        let mut val = v.trim().to_owned();
        if val.len() >= 2 && val.starts_with('"') && val.ends_with('"') {
            val = val[1..val.len() - 1].to_owned();
        }
        if val.contains('\\') {
            // Quoted-pair escapes are decoded differently by different parsers.
            return Err(format!("escaped parameter '{key}'"));
        }
        // Ambiguous: Starlette keeps the last of a repeated parameter, other parsers the first.
        if params.insert(key.clone(), val).is_some() {
            return Err(format!("parameter '{key}' given twice"));
        }
    }
    Ok((main, params))
}

/// Split on `;` outside double quotes.
fn split_params(value: &str) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.last_mut().expect("non-empty").push(c);
            }
            ';' if !quoted => out.push(String::new()),
            _ => out.last_mut().expect("non-empty").push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted string".into());
    }
    Ok(out)
}

/// Starlette's own `request.form()` limits (`max_fields`, `max_files`): InvokeAI refuses a form
/// with more parts too, so refusing it here changes no answer and bounds the work per body.
pub const MAX_FORM_FIELDS: usize = 1000;
/// See [`MAX_FORM_FIELDS`].
pub const MAX_FORM_FILES: usize = 1000;

/// The text fields of a multipart/form-data body (file parts are skipped).
pub async fn form(bytes: &Bytes, headers: &HeaderMap) -> Result<HashMap<String, String>, Refusal> {
    let bad = |m: String| Refusal::BadRequest(format!("multipart: {m}"));
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let content_type = match (types.next(), types.next()) {
        (Some(v), None) => v
            .to_str()
            .map_err(|_| bad("Content-Type is not ASCII".into()))?,
        (None, _) => "",
        (Some(_), Some(_)) => return Err(bad("Content-Type given twice".into())),
    };
    let (media, params) = options_header(content_type).map_err(bad)?;
    let boundary = match (media.as_str(), params.get("boundary")) {
        ("multipart/form-data", Some(b)) if !b.is_empty() => b.clone(),
        _ => {
            return Err(Refusal::Unprocessable(
                "expected a multipart/form-data body".into(),
            ))
        }
    };
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(bytes.clone())));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields = HashMap::new();
    let mut names = std::collections::HashSet::new();
    let mut files = 0usize;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Ok(fields),
            Err(e) => return Err(Refusal::Unprocessable(format!("multipart: {e}"))),
        };
        let part_headers = field.headers();
        let mut dispositions = part_headers.get_all("content-disposition").iter();
        let disposition = match (dispositions.next(), dispositions.next()) {
            (Some(v), None) => v
                .to_str()
                .map_err(|_| bad("Content-Disposition is not ASCII".into()))?
                .to_owned(),
            (None, _) => return Err(bad("a part has no Content-Disposition".into())),
            (Some(_), Some(_)) => return Err(bad("Content-Disposition given twice".into())),
        };
        if let Some(te) = part_headers.get("content-transfer-encoding") {
            let te = te.to_str().unwrap_or("?").trim().to_ascii_lowercase();
            if !matches!(te.as_str(), "7bit" | "8bit" | "binary") {
                return Err(bad(format!("Content-Transfer-Encoding '{te}'")));
            }
        }
        let (_, params) = options_header(&disposition).map_err(bad)?;
        let name = params
            .get("name")
            .cloned()
            .ok_or_else(|| bad("a part has no name".into()))?;
        if name == "_charset_" {
            // A charset override changes how every other field is decoded upstream.
            return Err(bad("'_charset_' parts are not supported".into()));
        }
        if !names.insert(name.clone()) {
            // A repeated field could be read differently upstream (parameter pollution).
            return Err(bad(format!("duplicate form field '{name}'")));
        }
        let is_file = params.contains_key("filename") || params.contains_key("filename*");
        // Part floods (many tiny parts): counted as Starlette counts them, refused past its limits.
        if is_file {
            files += 1;
            if files > MAX_FORM_FILES {
                return Err(bad(format!("more than {MAX_FORM_FILES} files")));
            }
        } else if names.len() - files > MAX_FORM_FIELDS {
            return Err(bad(format!("more than {MAX_FORM_FIELDS} fields")));
        }
        let data = field
            .bytes()
            .await
            .map_err(|e| Refusal::Unprocessable(format!("multipart: {e}")))?;
        if !is_file {
            let text = String::from_utf8(data.to_vec())
                .map_err(|_| Refusal::Unprocessable(format!("form field '{name}' is not UTF-8")))?;
            fields.insert(name, text);
        }
    }
}

// === response bodies ===

/// Decode a response body the guard must read (`Content-Encoding` as the upstream sent it).
/// The decoded size is bounded by `limit` like the raw one.
pub fn decode(encoding: Option<&str>, bytes: Bytes, limit: usize) -> Result<Bytes, Refusal> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    let decoder: Box<dyn Read> = match encoding.as_deref() {
        None | Some("") | Some("identity") => return Ok(bytes),
        Some("gzip") | Some("x-gzip") => Box::new(flate2::read::MultiGzDecoder::new(&bytes[..])),
        // HTTP "deflate" is zlib-wrapped; some servers send raw deflate.
        Some("deflate")
            if bytes.len() >= 2 && (u16::from(bytes[0]) << 8 | u16::from(bytes[1])) % 31 == 0 =>
        {
            Box::new(flate2::read::ZlibDecoder::new(&bytes[..]))
        }
        Some("deflate") => Box::new(flate2::read::DeflateDecoder::new(&bytes[..])),
        Some(other) => {
            return Err(Refusal::BadUpstream(format!(
                "response Content-Encoding '{other}' cannot be read"
            )))
        }
    };
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refusal::BadUpstream(format!("response body could not be decoded: {e}")))?;
    if out.len() > limit {
        return Err(Refusal::BadUpstream(
            "decoded response body over the filter limit".into(),
        ));
    }
    Ok(Bytes::from(out))
}

// === streamed bodies ===

/// A body that fails when no frame arrives for `idle` (slow-body defence for streamed uploads).
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled for longer than the read timeout")]
pub struct Stalled;

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_header_matches_starlette_and_refuses_repeats() {
        let (m, p) = options_header("FORM-DATA; NAME=\"data\"; filename=x.png").unwrap();
        assert_eq!(m, "form-data");
        assert_eq!(p["name"], "data");
        assert_eq!(p["filename"], "x.png");
        assert!(options_header("multipart/form-data; boundary=AAA; boundary=BBB").is_err());
        assert!(options_header("form-data; name=\"zzz\"; name=\"data\"").is_err());
        assert!(options_header("form-data; name=\"zzz\"; NAME=\"data\"").is_err());
        assert!(options_header("form-data; name=\"a\\\"b\"").is_err());
        let (_, p) = options_header("form-data; name=\"a;b\"").unwrap();
        assert_eq!(p["name"], "a;b");
    }

    #[test]
    fn decode_bounds_and_refuses_unknown() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[b'a'; 4096]).unwrap();
        let packed = Bytes::from(gz.finish().unwrap());
        assert_eq!(
            decode(Some("gzip"), packed.clone(), 4096).unwrap().len(),
            4096
        );
        assert!(decode(Some("gzip"), packed, 4095).is_err());
        assert!(decode(Some("br"), Bytes::from_static(b"xx"), 10).is_err());
        assert!(decode(Some("gzip"), Bytes::from_static(b"not gzip"), 10).is_err());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"{}").unwrap();
        assert_eq!(
            &decode(Some("deflate"), Bytes::from(z.finish().unwrap()), 10).unwrap()[..],
            b"{}"
        );
    }
}
