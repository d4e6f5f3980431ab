//! invoke-guard: an authorization reverse proxy for a multiuser InvokeAI server.
//!
//! Layout (one noun per module, each with its invariants in its `//!` header):
//! - [`canonical`]: the one canonical form of a request target (matched and forwarded).
//! - [`routes`]: `routes.toml` parsed, validated, compiled into matchit routers.
//! - [`identity`]: InvokeAI's JWT verified against the user's current row.
//! - [`facts`]: ownership facts from InvokeAI's database (read-only, cached, fresh).
//! - [`ledger`]: the guard's own small database for facts InvokeAI does not keep.
//! - [`policy`]: the predicate registry and rule evaluation.
//! - [`decision`]: decisions as data, mapped to HTTP in one place.
//! - [`headers`]: header hygiene for both legs.
//! - [`framing`]: a raw-byte scanner that flags ambiguous HTTP/1 framing ahead of hyper.
//! - [`proxy`]: the pooled upstream client and WebSocket tunnels.
//! - [`rewrite`]: response filters (token re-minting, cookies, cache headers, ledger records).
//! - [`server`]: the listener and the request pipeline.
//! - [`admin`]: health, readiness and metrics on a separate listener.
//! - [`coverage`]: the InvokeAI endpoint inventory checked against the route table.
//! - [`body`]: bounded, timed body reads; JSON, multipart and response decoding as InvokeAI reads them.
//! - [`jsonplan`]: pruned JSON parsing (only what a rule's checks read).
//! - [`cookies`]: cookies as Starlette reads them.
//! - [`config`], [`cli`], [`state`], [`metrics`]: plumbing.

#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod cookies;
pub mod coverage;
pub mod decision;
pub mod facts;
pub mod framing;
pub mod headers;
pub mod identity;
pub mod jsonplan;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod rewrite;
pub mod routes;
pub mod server;
pub mod state;
