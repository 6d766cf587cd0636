//! Retries, fallback and circuit breaking: what the exchange does when an attempt fails.
//!
//! ```text
//!  exchange ── target 1 (the route's provider) ── attempt ─┬─ ok ─────────────► client
//!     │            breaker open? skip ──┐                  ├─ retryable, and a retry is
//!     │                                 │                  │  allowed (attempts left,
//!     │                                 │                  │  retry budget, Retry-After
//!     │                                 │                  │  under the cap, deadline):
//!     │                                 │                  │  held back, backoff, again
//!     │                                 ▼                  └─ not retryable: forwarded
//!     └─ target 2.. (route.fallback) ── same, with the model rewritten in the body
//! ```
//!
//! A response is held back (not forwarded) only while another attempt is possible; the
//! last one always reaches the client as the provider sent it. Nothing is retried once a
//! response byte has gone to the client. Every attempt acquires a credential and signs
//! anew.
//!
//! Every one of these decisions is [`step::next_step`], a function of the attempt's
//! outcome and its target's gate (attempts made, resends, fallback, deadline), tested on
//! tokio's paused clock. The exchange (`proxy::attempts`) only carries its step out.

pub mod breaker;
pub mod retry;
pub mod step;

pub use breaker::{Breaker, BreakerSettings};
pub use retry::{RetryBudget, RetryPolicy};
pub use step::{next_step, Step};
