//! Limits shared through a real `redis-server` by two sidecar processes.

use crate::support::redis::RedisServer;
use crate::support::*;
use std::time::Duration;

/// 40 requests an hour per tenant, shared; each sidecar leases 4 at a time.
fn config(mock: &str, redis: &str, policy: &str) -> String {
    with_listeners(&format!(
        r#"log: {{ format: json }}
tenant: {{ source: header, header: x-llm-tenant }}
tenants: {{ sharing: {{}}, outage: {{}}, resumed: {{}}, probe: {{}} }}
limits:
  backend: {redis}
  lease: 0.1
  on_backend_failure: {policy}
  backend_timeout: 300ms
  rules:
    - {{ name: per-tenant, scope: [tenant], requests: {{ rate: 40/h, burst: 40 }} }}
{}"#,
        openai_to(mock, "sk-shared")
    ))
}

struct Replica {
    _child: ChildGuard,
    reverse: String,
    admin: String,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Replica {
    fn start(dir: &std::path::Path, name: &str, yaml: &str) -> Replica {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let (child, reverse, admin, logs) = spawn_binary(&path);
        Replica {
            _child: child,
            reverse,
            admin,
            logs,
        }
    }

    async fn send(&self, c: &reqwest::Client, tenant: &str) -> reqwest::Response {
        c.post(format!(
            "http://{}/openai/v1/chat/completions",
            self.reverse
        ))
        .header("x-llm-tenant", tenant)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
    }

    async fn metric(&self, c: &reqwest::Client, name: &str) -> f64 {
        metric_value(&metrics_at(c, &self.admin).await, name)
    }

    /// Polls this replica's `/metrics` until the series has `expected`.
    async fn assert_metric(&self, c: &reqwest::Client, name: &str, expected: f64) {
        series(name)
            .assert_in(|| metrics_at(c, &self.admin), expected)
            .await
    }
}

/// Sends `n` requests for `tenant`, alternating replicas; returns the 200s each admitted.
/// Every refusal must be the shared limit's 429.
async fn alternate(c: &reqwest::Client, rs: [&Replica; 2], tenant: &str, n: usize) -> [usize; 2] {
    let mut ok = [0, 0];
    for i in 0..n {
        let r = rs[i % 2].send(c, tenant).await;
        match r.status().as_u16() {
            200 => ok[i % 2] += 1,
            429 => assert_eq!(r.headers()["x-llm-sidecar-error"], "rate_limited"),
            other => panic!("{tenant}: unexpected {other}: {:?}", r.text().await),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_budget_survive_a_redis_outage_and_resume() {
    let m = default_mock().await;
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = Replica::start(dir.path(), "a", &config(&m.url(), &redis.url(), "allow"));
    let b = Replica::start(dir.path(), "b", &config(&m.url(), &redis.url(), "deny"));
    let c = http_client();

    // Sharing: 60 requests against one budget of 40. Apart, the two would admit all 60.
    let ok = alternate(&c, [&a, &b], "sharing", 60).await;
    let total = ok[0] + ok[1];
    assert!(
        (32..=40).contains(&total),
        "together within 40, less at most one unused lease (4) each: {ok:?}"
    );
    assert!(ok[0] > 0 && ok[1] > 0, "both served: {ok:?}");
    assert!(redis.dbsize() >= 1, "the budget lives in Redis");
    assert_eq!(m.request_count() as usize, total);

    // Each replica leases 4 for `outage` (and spends 1), then Redis dies.
    assert_eq!(a.send(&c, "outage").await.status(), 200);
    assert_eq!(b.send(&c, "outage").await.status(), 200);
    redis.kill();
    let mut a_ok = 0;
    let mut b_codes = Vec::new();
    for _ in 0..10 {
        if a.send(&c, "outage").await.status() == 200 {
            a_ok += 1;
        }
        let r = b.send(&c, "outage").await;
        b_codes.push(match r.status().as_u16() {
            200 => "ok".to_string(),
            s => format!(
                "{s} {}",
                r.headers()
                    .get("x-llm-sidecar-error")
                    .map_or("", |v| v.to_str().unwrap())
            ),
        });
    }
    assert_eq!(a_ok, 10, "allow: A keeps admitting");
    let served = b_codes.iter().take_while(|c| *c == "ok").count();
    assert_eq!(
        served, 3,
        "deny: B spends what its lease holds, then refuses: {b_codes:?}"
    );
    assert!(
        b_codes[served..]
            .iter()
            .all(|c| c == "503 limits_backend_unavailable"),
        "{b_codes:?}"
    );
    a.assert_metric(&c, "llm_sidecar_limits_backend_up", 0.0)
        .await;
    b.assert_metric(&c, "llm_sidecar_limits_backend_up", 0.0)
        .await;
    assert!(a.metric(&c, "llm_sidecar_limits_failed_open_total").await >= 7.0);
    b.assert_metric(
        &c,
        r#"llm_sidecar_limited_total{kind="backend_down",rule="per-tenant"}"#,
        7.0,
    )
    .await;

    // Redis comes back (empty). Each replica holds calls back for a pause after a failure,
    // then reconnects on the next call: probe with a tenant of its own until both are up.
    redis.restart();
    assert_eq!(redis.dbsize(), 0);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut up = 0.0;
        for r in [&a, &b] {
            r.send(&c, "probe").await;
            up += r.metric(&c, "llm_sidecar_limits_backend_up").await;
        }
        if up == 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never came back for both"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = alternate(&c, [&a, &b], "resumed", 60).await;
    let total = ok[0] + ok[1];
    assert!(
        (32..=40).contains(&total),
        "sharing resumed: within 40 again: {ok:?}"
    );
    assert!(redis.dbsize() >= 1);
    a.assert_metric(&c, "llm_sidecar_limits_backend_up", 1.0)
        .await;
    b.assert_metric(&c, "llm_sidecar_limits_backend_up", 1.0)
        .await;
    // the outage is logged once each way
    let lines: Vec<String> = b.logs.try_iter().collect();
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("limits backend unreachable"), 1, "{lines:#?}");
    assert_eq!(count("limits backend reachable again"), 1, "{lines:#?}");
}

/// Two sidecars (separate registries, as two replicas) send 50 concurrent streams at one
/// shared 10k-token budget: leases are taken before tokens are spent, so together they
/// stay within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reserve_tokens_from_one_shared_budget() {
    let redis = RedisServer::start();
    let m = mock(llm_sidecar::mock::MockOptions {
        chunks: 400,
        interval: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let yaml = format!(
        r#"limits:
  backend: {}
  rules:
    - {{ name: budget, tokens: {{ limit: 10000, per: 1h }} }}
{}"#,
        redis.url(),
        openai_to(&m.url(), "sk-shared")
    );
    let replicas = [
        TestSidecar::start(&yaml).await,
        TestSidecar::start(&yaml).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = &replicas[i % 2];
        let (client, url) = (s.client.clone(), s.url("/openai/v1/chat/completions"));
        tasks.push(tokio::spawn(long_stream(client, url)));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Usage is counted when each exchange ends: wait until all 50 are (an under-count
    // would make "within the shared budget" easier to pass).
    let mut spent = 0.0;
    let mut counted = 0.0;
    for s in &replicas {
        counted += s
            .wait_metric(r#"llm_sidecar_requests_total{route="mock"}"#, "25", |v| {
                v == 25.0
            })
            .await;
        let metrics = s.metrics().await;
        for ty in ["input", "output"] {
            spent += metric_value(
                &metrics,
                &format!(
                    "llm_sidecar_tokens_total{{provider=\"mock\",route=\"mock\",type=\"{ty}\"}}"
                ),
            );
        }
    }
    assert_eq!(counted, 50.0);
    println!("shared: {spent} tokens spent by {admitted} admitted requests");
    assert!(
        spent <= 10_000.0,
        "the replicas overshot the shared budget: {spent}"
    );
    // each reserves ~430; at most one unused lease (1000) per replica sits idle
    assert!(admitted >= 15, "only {admitted} admitted");
    assert!(admitted < 50, "the budget did not hold anything back");
}

/// The Redis password lives in the backend URL: it must never show in logs, metrics,
/// errors or `/config`, whether Redis accepts it or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_never_leaks() {
    let logs = capture_logs();
    let canary = format!("redis-canary-{}", std::process::id());
    let redis = RedisServer::start_with_password(&canary);
    let m = default_mock().await;
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("redis-password");
    std::fs::write(&file, &canary).unwrap();
    let yaml = |password: &str, policy: &str| {
        format!(
            r#"limits:
  backend: "redis://:{password}@127.0.0.1:{port}/0"
  on_backend_failure: {policy}
  rules:
    - {{ name: shared, requests: {{ rate: 100/m }} }}
{}"#,
            openai_to(&m.url(), "sk-shared"),
            port = redis.port
        )
    };
    let good = TestSidecar::start(&yaml(&format!("${{file:{}}}", file.display()), "deny")).await;
    let wrong = format!("{canary}-wrong");
    let bad = TestSidecar::start(&yaml(&wrong, "deny")).await;

    let r = good.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 200, "the right password leases from Redis");
    assert!(redis.dbsize() >= 1);
    let r = bad.chat("/openai/v1/chat/completions", false).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers()["x-llm-sidecar-error"],
        "limits_backend_unavailable"
    );
    let headers = format!("{:?}", r.headers());
    let mut seen = format!("{headers} {}", r.text().await.unwrap());
    for s in [&good, &bad] {
        seen.push_str(&s.get_text(&s.admin("/config")).await);
        seen.push_str(&s.metrics().await);
    }
    good.shutdown().await;
    bad.shutdown().await;
    let log_text = logs.text();
    assert!(
        log_text.contains("limits backend unreachable"),
        "the capture has the failure"
    );
    assert!(log_text.contains(&format!("127.0.0.1:{}", redis.port)));
    for (what, text) in [("responses", &seen), ("logs", &log_text)] {
        assert!(
            !text.contains(&canary),
            "the Redis password is in the {what}"
        );
    }
}

/// The lease mechanics, on the library API against a real Redis: concurrent requests
/// on an empty slice share one refill; a slice grown past two leases returns the
/// excess; a dropped lease (its rule changed or went away) returns what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_share_one_refill_and_give_back_what_they_do_not_need() {
    use llm_sidecar::config::schema::BackendFailure;
    use llm_sidecar::limits::shared::{Backend, BackendMetrics, BackendSpec, Lease, Refused};
    use std::sync::Arc;
    let redis = RedisServer::start();
    let metrics = BackendMetrics {
        up: prometheus::IntGauge::new("up", "-").unwrap(),
        errors: prometheus::IntCounter::new("errors", "-").unwrap(),
        leases: prometheus::IntCounter::new("leases", "-").unwrap(),
        failed_open: prometheus::IntCounter::new("failed_open", "-").unwrap(),
    };
    let backend = Arc::new(
        Backend::new(
            &BackendSpec {
                url: redis.url(),
                policy: BackendFailure::Deny,
                timeout: Duration::from_secs(1),
                prefix: "t:".into(),
            },
            Some(metrics.clone()),
        )
        .unwrap(),
    );
    let hour = Duration::from_secs(3600);
    let lease = |share: f64| {
        Arc::new(Lease::new(
            backend.clone(),
            "t:budget".into(),
            100,
            hour,
            share,
        ))
    };

    // 20 concurrent takes on an empty slice of 10: one refill serves them all
    // (10 units leased once, then 10 more once the first 10 are spent)
    let a = lease(0.1);
    let takes: Vec<_> = (0..20)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.take(1).await })
        })
        .collect();
    for t in takes {
        t.await.unwrap().unwrap();
    }
    assert!(
        metrics.leases.get() <= 3,
        "{} refills for 20 units in leases of 10",
        metrics.leases.get()
    );
    // a big reservation, then most of it refunded: the slice keeps one lease and
    // returns the rest, which another lease can then take
    // The take empties the slice, and a background top-up leases 10 more: wait for it.
    a.take(50).await.unwrap();
    eventually("the top-up lands", WAIT, || async { a.slice() == 10 }).await;
    a.refund(45);
    assert_eq!(a.slice(), 10, "keeps one lease");
    // The give-back is async: `a` holds what it spent (20 + 50 - 45) and its slice (10),
    // so the other 65 become free once it lands. A refused take grants nothing.
    let b = lease(1.0);
    takes_within(&b, 100 - 35, "the returned units").await;
    assert!(matches!(b.take(1).await, Err(Refused::Wait(_))));

    // dropping `a` returns its 10
    drop(a);
    takes_within(&b, 10, "the dropped lease's units").await;
    assert!(matches!(b.take(1).await, Err(Refused::Wait(_))));
}

/// Retries `n` units on `lease` until they are granted (an async give-back landed) or
/// the bound passes.
async fn takes_within(
    lease: &std::sync::Arc<llm_sidecar::limits::shared::Lease>,
    n: u64,
    what: &str,
) {
    use llm_sidecar::limits::shared::Refused;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match lease.take(n).await {
            Ok(()) => return,
            Err(Refused::Wait(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{what}: {n} units never became free ({e:?})"),
        }
    }
}
