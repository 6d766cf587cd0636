#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Integration tests: the real sidecar, in-process or as its binary, against real servers
//! on 127.0.0.1 and real clients.

mod support;

mod audit;
mod auth;
mod clients;
mod conf_files;
mod docs;
mod faults;
mod forward;
mod fuzz;
mod hostile;
mod limits;
mod observability;
mod proxy;
mod reload;
mod resilience;
mod secrets;
mod security;
mod shared_limits;
mod shutdown;
mod streaming;
mod tls;
mod translate;
mod under_load;
