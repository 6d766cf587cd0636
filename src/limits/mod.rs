//! Request-rate, concurrency and token-budget limits.

pub mod gcra;
