//! The retry policy as one function: what follows an attempt, from how it ended and
//! where the attempts on its target stand.
//!
//! [`next_step`] is the only place a retry, a resend, a fallback or the end of a target
//! is decided. The exchange calls it at most once per attempt: when the response header
//! arrives (to hold an answer back only when another attempt is certain), or when the
//! attempt failed before any byte of an answer. Its only effects are the retry budget
//! (a retry withdraws from it) and the backoff's jitter.

use super::retry::{self, RetryPolicy, Wait};
use crate::auth::keys::Others;
use crate::proxy::errors::Cause;
use std::time::Duration;
use tokio::time::Instant;

/// Stale pooled connections are resent at most this many times per target.
pub const MAX_STALE_RESENDS: u32 = 2;

/// How one attempt ended, as far as the retry policy cares. Nothing of it has reached
/// the client.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The provider's response header arrived.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        /// What the rest of the key pool can do, and how long the refused key rests,
        /// when the attempt signed with a key of a pool.
        key: Option<(Others, Duration)>,
    },
    /// No answer: the attempt failed before the first byte of one.
    Failed {
        cause: Cause,
        /// It failed on a reused pooled connection that the provider had closed, before
        /// the request could have reached it.
        stale_connection: bool,
    },
}

/// Where the attempts on one target stand.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    /// Attempts made on this target, the one that just ended included (resends are not
    /// counted).
    pub attempts: u32,
    /// Stale connections resent so far on this target.
    pub stale_resends: u32,
    /// The attempt signed with an access token that has not been replayed yet: a 401 is
    /// the token's, refreshed and sent again once.
    pub fresh_token: bool,
    /// A 401/403 may be retried with another key of the pool.
    pub other_keys: bool,
    /// A later target of the route (a fallback) is ready.
    pub fallback_left: bool,
    /// The exchange's total deadline.
    pub deadline: Instant,
}

/// Why a request is sent again at once, outside the retry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// The pooled connection was stale: the provider never saw the request.
    StaleConnection,
    /// The access token was refused: refreshed, sent again.
    RefreshedToken,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No other attempt on this target: the answer goes to the client as the provider
    /// sent it (or the failure goes to the next target, if any).
    Forward,
    /// The same target again at once; not a retry.
    Resend(Resend),
    /// A retry on this target after `wait`; `reason` labels `llm_sidecar_retries_total`.
    Retry {
        wait: Duration,
        reason: &'static str,
    },
    /// The next target of the route.
    Fallback,
}

impl Step {
    /// Another attempt follows (then an answer is held back, not forwarded).
    pub fn holds_back(self) -> bool {
        self != Step::Forward
    }
}

/// The retry policy: what follows `outcome`, given `gate` and the route's `policy`.
///
/// - A stale pooled connection is resent at once, up to [`MAX_STALE_RESENDS`] times.
/// - A 401 on a token that was not replayed yet: refreshed and resent.
/// - A retryable status (429, 5xx, 529; 401/403 when another key of the pool can take
///   it) or a retryable failure (connect, DNS, reset) is retried while attempts are
///   left, the wait ends before the deadline, a `Retry-After` is under the cap, and the
///   retry budget has one; a refused key is replaced at once when another is free.
/// - Otherwise a retryable answer moves on to the fallback, if one is ready; an answer
///   that is not retryable is forwarded, whatever is left.
pub fn next_step(outcome: &Outcome, gate: &Gate, policy: &RetryPolicy) -> Step {
    match *outcome {
        Outcome::Answered {
            status,
            retry_after,
            key,
        } => {
            if status == 401 && gate.fresh_token {
                return Step::Resend(Resend::RefreshedToken);
            }
            let retryable =
                retry::retryable_status(status) || (gate.other_keys && matches!(status, 401 | 403));
            if !retryable {
                return Step::Forward;
            }
            let (others, cooldown) = match key {
                Some((o, c)) => (Some(o), c),
                None => (None, Duration::ZERO),
            };
            let wait = retry::wait_after(status, retry_after, others, cooldown)
                .and_then(|w| retry_wait(w, gate, policy));
            match wait {
                Some(wait) => Step::Retry {
                    wait,
                    reason: retry::reason_for_status(status),
                },
                None if gate.fallback_left => Step::Fallback,
                None => Step::Forward,
            }
        }
        Outcome::Failed {
            cause,
            stale_connection,
        } => {
            if stale_connection && gate.stale_resends < MAX_STALE_RESENDS {
                return Step::Resend(Resend::StaleConnection);
            }
            if retry::retryable_cause(cause) {
                if let Some(wait) = retry_wait(Wait::Backoff, gate, policy) {
                    return Step::Retry {
                        wait,
                        reason: retry::reason_for_cause(cause),
                    };
                }
            }
            if gate.fallback_left {
                Step::Fallback
            } else {
                Step::Forward
            }
        }
    }
}

/// The wait before a retry, if one is allowed now: attempts left, `Retry-After` within
/// the cap, the wait over before the deadline, and the retry budget (withdrawn from).
fn retry_wait(w: Wait, gate: &Gate, policy: &RetryPolicy) -> Option<Duration> {
    if gate.attempts >= policy.max_attempts {
        return None;
    }
    let wait = match w {
        Wait::Now => Duration::ZERO,
        Wait::AtLeast(r) if r > policy.retry_after_max => return None,
        Wait::AtLeast(r) => policy.backoff(gate.attempts, Some(r)),
        Wait::Backoff => policy.backoff(gate.attempts, None),
    };
    if Instant::now() + wait >= gate.deadline || !policy.budget.withdraw() {
        return None;
    }
    Some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::RetryBudget;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy(max_attempts: u32) -> RetryPolicy {
        let p = RetryPolicy {
            max_attempts,
            backoff_base: MS(100),
            backoff_max: MS(400),
            retry_after_max: S(10),
            budget: RetryBudget::new(1.0, 0),
        };
        for _ in 0..50 {
            p.budget.deposit();
        }
        p
    }

    fn gate() -> Gate {
        Gate {
            attempts: 1,
            stale_resends: 0,
            fresh_token: false,
            other_keys: false,
            fallback_left: false,
            deadline: Instant::now() + S(60),
        }
    }

    fn answered(status: u16) -> Outcome {
        Outcome::Answered {
            status,
            retry_after: None,
            key: None,
        }
    }

    fn failed(cause: Cause) -> Outcome {
        Outcome::Failed {
            cause,
            stale_connection: false,
        }
    }

    fn retry_wait_of(s: Step) -> Duration {
        match s {
            Step::Retry { wait, .. } => wait,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_status_is_retried_while_attempts_are_left_then_falls_back_or_forwards() {
        let p = policy(3);
        for status in [429, 500, 502, 503, 504, 529] {
            let s = next_step(&answered(status), &gate(), &p);
            assert!(
                matches!(s, Step::Retry { wait, reason } if wait <= MS(100) && reason == retry::reason_for_status(status)),
                "{status}: {s:?}"
            );
        }
        // the second retry's backoff cap doubles
        let g = Gate {
            attempts: 2,
            ..gate()
        };
        assert!(retry_wait_of(next_step(&answered(503), &g, &p)) <= MS(200));
        // the last attempt: fallback if one is ready, else the answer goes to the client
        let last = Gate {
            attempts: 3,
            ..gate()
        };
        assert_eq!(next_step(&answered(503), &last, &p), Step::Forward);
        let last_fb = Gate {
            fallback_left: true,
            ..last
        };
        assert_eq!(next_step(&answered(503), &last_fb, &p), Step::Fallback);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_the_requests_fault_is_forwarded_whatever_is_left() {
        let p = policy(5);
        let g = Gate {
            fallback_left: true,
            ..gate()
        };
        for status in [200, 201, 400, 401, 403, 404, 413, 422] {
            let s = next_step(&answered(status), &g, &p);
            assert_eq!(s, Step::Forward, "{status}");
            assert!(!s.holds_back());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_for_up_to_the_cap_and_past_it_the_answer_moves_on() {
        let p = policy(3);
        let ra = |r| Outcome::Answered {
            status: 429,
            retry_after: Some(r),
            key: None,
        };
        assert_eq!(retry_wait_of(next_step(&ra(S(2)), &gate(), &p)), S(2));
        assert_eq!(retry_wait_of(next_step(&ra(S(10)), &gate(), &p)), S(10));
        assert_eq!(next_step(&ra(S(11)), &gate(), &p), Step::Forward);
        let fb = Gate {
            fallback_left: true,
            ..gate()
        };
        assert_eq!(next_step(&ra(S(11)), &fb, &p), Step::Fallback);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_whose_wait_would_end_past_the_deadline() {
        let p = policy(3);
        let g = Gate {
            deadline: Instant::now() + S(5),
            ..gate()
        };
        let ra = |r| Outcome::Answered {
            status: 503,
            retry_after: Some(r),
            key: None,
        };
        assert_eq!(retry_wait_of(next_step(&ra(S(4)), &g, &p)), S(4));
        assert_eq!(next_step(&ra(S(5)), &g, &p), Step::Forward);
        // time passes: what fitted no longer does
        tokio::time::advance(S(2)).await;
        assert_eq!(next_step(&ra(S(4)), &g, &p), Step::Forward);
        assert_eq!(retry_wait_of(next_step(&ra(MS(2999)), &g, &p)), MS(2999));
        // at the deadline, not even an immediate retry
        tokio::time::advance(S(3)).await;
        let key = Outcome::Answered {
            status: 429,
            retry_after: None,
            key: Some((Others::Free, S(30))),
        };
        assert_eq!(next_step(&key, &g, &p), Step::Forward);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_retry_budget_stops_retries_and_a_retry_withdraws_from_it() {
        let p = RetryPolicy {
            budget: RetryBudget::new(1.0, 0),
            ..policy(5)
        };
        p.budget.deposit();
        p.budget.deposit();
        assert!(matches!(
            next_step(&answered(503), &gate(), &p),
            Step::Retry { .. }
        ));
        assert!(matches!(
            next_step(&failed(Cause::UpstreamConnect), &gate(), &p),
            Step::Retry { .. }
        ));
        assert_eq!(next_step(&answered(503), &gate(), &p), Step::Forward);
        // a decision that is not a retry costs nothing
        p.budget.deposit();
        assert_eq!(next_step(&answered(400), &gate(), &p), Step::Forward);
        assert!(matches!(
            next_step(&answered(503), &gate(), &p),
            Step::Retry { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_key_is_replaced_at_once_when_the_pool_has_a_free_one() {
        let p = policy(3);
        let g = Gate {
            other_keys: true,
            ..gate()
        };
        let key = |status, others| Outcome::Answered {
            status,
            retry_after: Some(S(3600)),
            key: Some((others, S(30))),
        };
        for status in [429, 401, 403] {
            assert_eq!(
                next_step(&key(status, Others::Free), &g, &p),
                Step::Retry {
                    wait: Duration::ZERO,
                    reason: retry::reason_for_status(status)
                },
                "{status}"
            );
        }
        // every other key cooling: wait for the first one back, if under the deadline
        let cooling = Outcome::Answered {
            status: 403,
            retry_after: None,
            key: Some((Others::CoolingFor(S(4)), S(30))),
        };
        assert_eq!(retry_wait_of(next_step(&cooling, &g, &p)), S(4));
        // 401 with no other key in the pool: forwarded
        let alone = Gate {
            other_keys: false,
            ..g
        };
        assert_eq!(
            next_step(&key(401, Others::None), &alone, &p),
            Step::Forward
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_refreshed_and_resent_once() {
        let p = policy(1);
        let g = Gate {
            fresh_token: true,
            ..gate()
        };
        assert_eq!(
            next_step(&answered(401), &g, &p),
            Step::Resend(Resend::RefreshedToken)
        );
        assert_eq!(next_step(&answered(403), &g, &p), Step::Forward);
        let replayed = Gate {
            fresh_token: false,
            ..g
        };
        assert_eq!(next_step(&answered(401), &replayed, &p), Step::Forward);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_connection_is_resent_at_once_twice_then_counts_as_a_failure() {
        let p = policy(2);
        let stale = Outcome::Failed {
            cause: Cause::UpstreamReset,
            stale_connection: true,
        };
        for n in 0..MAX_STALE_RESENDS {
            let g = Gate {
                stale_resends: n,
                attempts: 2, // no retry left: a resend is not a retry
                ..gate()
            };
            assert_eq!(
                next_step(&stale, &g, &p),
                Step::Resend(Resend::StaleConnection)
            );
        }
        let spent = Gate {
            stale_resends: MAX_STALE_RESENDS,
            ..gate()
        };
        assert!(matches!(
            next_step(&stale, &spent, &p),
            Step::Retry {
                reason: "reset",
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_before_an_answer_are_retried_only_when_another_try_may_fix_them() {
        let p = policy(3);
        for (cause, reason) in [
            (Cause::UpstreamConnect, "connect"),
            (Cause::ConnectTimeout, "connect_timeout"),
            (Cause::UpstreamReset, "reset"),
            (Cause::UpstreamDns, "dns"),
        ] {
            let s = next_step(&failed(cause), &gate(), &p);
            assert!(
                matches!(s, Step::Retry { reason: r, wait } if r == reason && wait <= MS(100)),
                "{cause:?}: {s:?}"
            );
        }
        let fb = Gate {
            fallback_left: true,
            ..gate()
        };
        for cause in [
            Cause::FirstByteTimeout,
            Cause::UpstreamTls,
            Cause::UpstreamProtocol,
        ] {
            assert_eq!(next_step(&failed(cause), &gate(), &p), Step::Forward);
            assert_eq!(next_step(&failed(cause), &fb, &p), Step::Fallback);
        }
        let last = Gate { attempts: 3, ..fb };
        assert_eq!(
            next_step(&failed(Cause::UpstreamConnect), &last, &p),
            Step::Fallback
        );
    }
}
