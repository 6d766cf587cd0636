//! The circuit breaker, one per provider endpoint.
//!
//! ```text
//!            failures ≥ consecutive_failures, or
//!            failure ratio ≥ failure_ratio over ≥ min_requests in `window`
//!   Closed ─────────────────────────────────────────────────────────► Open
//!     ▲                                                               │ cooldown
//!     │ a probe succeeds                                              ▼
//!     └──────────────────────────── HalfOpen (half_open_probes at a time)
//!                                      │ a probe fails: Open again
//! ```
//!
//! The request path reads the state with one atomic load ([`Breaker::admit`]); outcomes
//! are recorded when an attempt ends ([`Breaker::record`]), after the client has its
//! answer, with atomic counters and CAS transitions: no lock, no task. While open, the
//! exchange sheds the request (or goes to a fallback) without an upstream attempt.

use crate::limits::gcra::now_ns;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    /// 0 turns the ratio rule off.
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub cooldown: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(15),
            half_open_probes: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// May a request go to this endpoint now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Half-open: this request is a probe; its outcome decides.
    Probe,
    /// Open: shed it. The breaker may half-open after this long.
    Rejected {
        retry_in: Duration,
    },
}

/// Metric handles for one breaker.
#[derive(Clone, Debug)]
pub struct BreakerMetrics {
    pub state: IntGauge,
    pub opened: IntCounter,
    pub rejected: IntCounter,
}

#[derive(Debug)]
pub struct Breaker {
    pub settings: BreakerSettings,
    state: AtomicU8,
    /// When it last opened (limiter clock, ns).
    opened_at: AtomicU64,
    consecutive: AtomicU32,
    window_start: AtomicU64,
    window_total: AtomicU32,
    window_failed: AtomicU32,
    probes: AtomicU32,
    metrics: Option<BreakerMetrics>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings, metrics: Option<BreakerMetrics>) -> Breaker {
        if let Some(m) = &metrics {
            m.state.set(0);
        }
        Breaker {
            settings,
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            window_start: AtomicU64::new(now_ns()),
            window_total: AtomicU32::new(0),
            window_failed: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            metrics,
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }

    fn set_state(&self, s: u8) {
        if let Some(m) = &self.metrics {
            m.state.set(i64::from(s));
        }
    }

    pub fn admit(&self) -> Admission {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Allowed,
            OPEN => {
                let cooldown = self.settings.cooldown.as_nanos() as u64;
                let since = now_ns().saturating_sub(self.opened_at.load(Ordering::Acquire));
                if since < cooldown {
                    if let Some(m) = &self.metrics {
                        m.rejected.inc();
                    }
                    return Admission::Rejected {
                        retry_in: Duration::from_nanos(cooldown - since),
                    };
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.probes.store(0, Ordering::Release);
                    self.set_state(HALF_OPEN);
                }
                self.admit_probe()
            }
            _ => self.admit_probe(),
        }
    }

    fn admit_probe(&self) -> Admission {
        let max = self.settings.half_open_probes.max(1);
        match self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < max).then_some(p + 1)
            }) {
            Ok(_) => Admission::Probe,
            Err(_) => {
                if let Some(m) = &self.metrics {
                    m.rejected.inc();
                }
                Admission::Rejected {
                    retry_in: Duration::from_millis(100),
                }
            }
        }
    }

    /// Records how an attempt to this endpoint went. `success` is false for connect
    /// failures, resets, timeouts and 5xx/529 answers.
    pub fn record(&self, admission: Admission, success: bool) {
        if admission == Admission::Probe || self.state.load(Ordering::Acquire) == HALF_OPEN {
            if admission == Admission::Probe {
                self.probes.fetch_sub(1, Ordering::AcqRel);
            }
            if success {
                if self
                    .state
                    .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.reset_counts();
                    self.set_state(CLOSED);
                }
            } else {
                self.open(HALF_OPEN);
            }
            return;
        }
        let now = now_ns();
        let start = self.window_start.load(Ordering::Acquire);
        if now.saturating_sub(start) > self.settings.window.as_nanos() as u64
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.window_total.store(0, Ordering::Release);
            self.window_failed.store(0, Ordering::Release);
        }
        let total = self.window_total.fetch_add(1, Ordering::AcqRel) + 1;
        if success {
            self.consecutive.store(0, Ordering::Release);
            return;
        }
        let failed = self.window_failed.fetch_add(1, Ordering::AcqRel) + 1;
        let consecutive = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let s = &self.settings;
        let by_count = s.consecutive_failures > 0 && consecutive >= s.consecutive_failures;
        let by_ratio = s.failure_ratio > 0.0
            && total >= s.min_requests.max(1)
            && f64::from(failed) / f64::from(total) >= s.failure_ratio;
        if by_count || by_ratio {
            self.open(CLOSED);
        }
    }

    fn open(&self, from: u8) {
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.opened_at.store(now_ns(), Ordering::Release);
            self.reset_counts();
            self.set_state(OPEN);
            if let Some(m) = &self.metrics {
                m.opened.inc();
            }
        }
    }

    fn reset_counts(&self) {
        self.consecutive.store(0, Ordering::Release);
        self.window_total.store(0, Ordering::Release);
        self.window_failed.store(0, Ordering::Release);
        self.window_start.store(now_ns(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerSettings {
                consecutive_failures: 3,
                failure_ratio: 0.0,
                cooldown: Duration::from_secs(10),
                ..Default::default()
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_sheds_half_opens_and_closes() {
        let b = breaker();
        for _ in 0..2 {
            b.record(b.admit(), false);
        }
        b.record(b.admit(), true); // a success resets the run
        for _ in 0..2 {
            b.record(b.admit(), false);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(b.admit(), false);
        assert_eq!(b.state(), State::Open);
        assert!(
            matches!(b.admit(), Admission::Rejected { retry_in } if retry_in == Duration::from_secs(10))
        );

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.admit();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(b.state(), State::HalfOpen);
        // One probe at a time.
        assert!(matches!(b.admit(), Admission::Rejected { .. }));
        b.record(probe, false);
        assert_eq!(b.state(), State::Open, "a failed probe opens it again");

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.admit();
        b.record(probe, true);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_a_failure_ratio() {
        let b = Breaker::new(
            BreakerSettings {
                consecutive_failures: 0,
                failure_ratio: 0.5,
                min_requests: 10,
                ..Default::default()
            },
            None,
        );
        for i in 0..9 {
            b.record(b.admit(), i % 2 == 0);
        }
        assert_eq!(b.state(), State::Closed, "below min_requests");
        b.record(b.admit(), false);
        assert_eq!(b.state(), State::Open);
    }
}

/// One breaker per provider endpoint, kept across config reloads (state survives a
/// reload unless the provider's breaker settings changed).
#[derive(Default)]
pub struct BreakerRegistry {
    entries: crate::config::kept::Kept<Breaker>,
}

impl BreakerRegistry {
    /// Config-load time only.
    pub fn get(
        &self,
        key: &str,
        settings: BreakerSettings,
        metrics: impl FnOnce() -> BreakerMetrics,
    ) -> std::sync::Arc<Breaker> {
        self.entries.get(
            key,
            |b| b.settings == settings,
            || Breaker::new(settings, Some(metrics())),
        )
    }
}
