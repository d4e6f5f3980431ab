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

/// The scalar visits of a serde `Visitor` whose `Value` is the same for every scalar but strings
/// (`visit_str` is the visitor's own): the JSON visitors of [`batch`] and [`jsonplan`].
macro_rules! non_str_scalars_are {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// [`non_str_scalars_are`], strings included.
macro_rules! scalars_are {
    ($value:expr) => {
        non_str_scalars_are!($value);
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

pub mod batch;
pub mod body;
pub mod canonical;
pub mod cookies;
pub mod framing;
pub mod headers;
pub mod jsonplan;
pub mod request_id;
