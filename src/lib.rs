//! llm-sidecar: a sidecar proxy, built on Pingora, that carries an application's traffic
//! to LLM providers. The app keeps no provider secrets and no resilience code.
//!
//! Each module opens with an overview of its part:
//! [`config`] (YAML → snapshot, hot reload), [`proxy`] (the request path),
//! [`routing`], [`auth`], [`tenant`], [`upstream`] (peers, DNS, TLS trust), [`forward`]
//! (the HTTPS_PROXY listener, interception and its CA),
//! [`observability`], [`admin`], [`server`] (listeners, shutdown), and [`mock`] (the
//! mock provider used by the quickstart, tests and benchmarks).

pub mod admin;
pub mod auth;
pub mod config;
pub mod forward;
pub mod limits;
pub mod mock;
pub mod observability;
pub mod proxy;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod tenant;
pub mod translate;
pub mod upstream;
pub mod usage;

pub use server::{build_server, Options, ShutdownReport, Sidecar, StartError};

/// The version printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
