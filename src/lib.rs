//! invoke-guard: an authorization reverse proxy for a multiuser InvokeAI server.
//!
//! Layout (folders show the architecture; each module states its invariants in its `//!` header):
//! - [`cli`]: `serve`, `check`, `explain`, `test`, `health`, `ledger` (a thin `main` hands over here).
//! - [`server`]: the accept loop, the request pipeline (phases over one per-request context; the
//!   request phase is shared with `explain` and `test` through `server::evaluate`), the candidate
//!   table, the admin listener, the lifecycle (readiness first, then drain) and TLS certificates
//!   that follow their files.
//! - [`http`]: canonical targets, framing, headers, cookies, bodies (what the guard reads, and how).
//! - [`rules`]: the policy language: vocabulary (a leaf, nested by family), `routes.toml` parsing
//!   and the table, caller groups.
//! - [`identity`]: InvokeAI's JWT verified against the user's current row.
//! - [`facts`]: ownership facts from InvokeAI's database (read-only, cached, fresh) and the
//!   guard's own ledger.
//! - [`policy`]: `decide`, a function of rule, request data, caller and fact source (reads only).
//! - [`decision`]: refusals (with their source), verdicts with provenance and outcomes, mapped to
//!   HTTP in one place.
//! - [`filters`]: response filters by family (headers, sessions, owner records, 6.12 lists, lists
//!   recomputed for 6.12/6.13), and the requests planned in their place.
//! - [`socketio`]: Socket.IO terminated in the guard: identity at CONNECT, session guards, rooms,
//!   per-event filtering; it sees a narrow `socketio::Env`, never the whole [`state`].
//! - [`upstream`]: the pooled upstream client.
//! - [`coverage`]: the InvokeAI endpoint inventory checked against the route table.
//! - [`decisionlog`]: the fixed-shape decision line (escaped, capped, one per request).
//! - [`logwriter`]: log lines written to stderr by one writer thread, off the request path.
//! - [`config`] (layered by figment, every setting listed once), [`state`], [`metrics`]
//!   (negotiated exposition format): plumbing.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod coverage;
pub mod decision;
pub mod decisionlog;
pub mod facts;
pub mod filters;
pub mod http;
pub mod identity;
pub mod logwriter;
pub mod metrics;
pub mod policy;
pub mod rules;
pub mod server;
pub mod socketio;
pub mod state;
pub mod upstream;
