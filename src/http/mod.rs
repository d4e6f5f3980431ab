//! The HTTP edge: what the guard reads from requests and responses, and how.
//!
//! - [`canonical`]: the one canonical form of a request target (matched and forwarded).
//! - [`framing`]: a raw-byte scanner that flags ambiguous HTTP/1 framing ahead of hyper.
//! - [`headers`]: header hygiene for both legs.
//! - [`cookies`]: cookies as Starlette reads them.
//! - [`body`]: bounded, timed body reads; JSON, multipart and response decoding as InvokeAI reads them.
//! - [`jsonplan`]: pruned JSON parsing (only what a rule's checks read).
//! - [`request_id`]: the `X-Request-Id` a request is logged and forwarded with.
//! - [`batch`]: a streaming scan of an enqueued batch (model references, queue-item count).

pub mod batch;
pub mod body;
pub mod canonical;
pub mod cookies;
pub mod framing;
pub mod headers;
pub mod jsonplan;
pub mod request_id;
