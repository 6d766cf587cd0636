//! Hot reload: file watcher (write in place, rename over, Kubernetes symlink swap), secret
//! rotation, rejected edits, and one snapshot per request.

use crate::support::*;
use llm_sidecar::config::{self, ReloadOutcome};
use std::time::Duration;

fn cfg(mock: &str, tenant: &str) -> String {
    format!(
        "server: {{ reload_debounce: 50ms }}\ntenant: {{ id: {tenant}, headers: {{ x-tenant: \"{{tenant}}\" }} }}\n{}",
        openai_to(mock, "k")
    )
}

async fn tenant_seen(s: &TestSidecar, m: &llm_sidecar::mock::MockServer) -> Option<String> {
    let r = s.client.get(s.url("/openai/v1/models")).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    m.recorded().last()?.header("x-tenant").map(str::to_string)
}

async fn wait_for_tenant(s: &TestSidecar, m: &llm_sidecar::mock::MockServer, want: &str) {
    eventually(
        &format!("requests carry tenant {want}"),
        Duration::from_secs(10),
        || async { tenant_seen(s, m).await.as_deref() == Some(want) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_on_write_in_place_and_rename() {
    let m = default_mock().await;
    let s = TestSidecar::start(&cfg(&m.url(), "one")).await;
    assert_eq!(tenant_seen(&s, &m).await.as_deref(), Some("one"));

    s.write_in_place(&cfg(&m.url(), "two"));
    wait_for_tenant(&s, &m, "two").await;

    s.rename_replace(&cfg(&m.url(), "three"));
    wait_for_tenant(&s, &m, "three").await;

    let text = s.metrics().await;
    assert!(
        metric_value(
            &text,
            r#"llm_sidecar_config_reloads_total{result="success"}"#
        ) >= 2.0,
        "{text}"
    );
}

/// Kubernetes mounts a ConfigMap as `dir/sidecar.yaml -> ..data/sidecar.yaml` and
/// `..data -> ..2024_xx`, and updates it by pointing `..data` at a new directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_on_configmap_symlink_swap() {
    let m = default_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write_version = |name: &str, tenant: &str| {
        let d = root.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("sidecar.yaml"),
            with_listeners(&cfg(&m.url(), tenant)),
        )
        .unwrap();
    };
    write_version("..2026_11_21_00_00_00.1", "first");
    std::os::unix::fs::symlink("..2026_11_21_00_00_00.1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/sidecar.yaml", root.join("sidecar.yaml")).unwrap();
    let path = root.join("sidecar.yaml");
    let s = TestSidecar::start_at(dir, path, config::process_env()).await;
    assert_eq!(tenant_seen(&s, &m).await.as_deref(), Some("first"));

    // The atomic writer's swap: new dir, temp symlink, rename over ..data.
    let root = s.dir.path();
    let d = root.join("..2026_11_21_00_01_00.2");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(
        d.join("sidecar.yaml"),
        with_listeners(&cfg(&m.url(), "second")),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_21_00_01_00.2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_11_21_00_00_00.1")).unwrap();
    wait_for_tenant(&s, &m, "second").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_file_is_picked_up() {
    let m = default_mock().await;
    let secrets = tempfile::tempdir().unwrap();
    let key = secrets.path().join("openai-key");
    std::fs::write(&key, "sk-old\n").unwrap();
    let yaml = format!(
        "server: {{ reload_debounce: 50ms }}\n{}",
        openai_to(&m.url(), &format!("${{file:{}}}", key.display()))
    );
    let s = TestSidecar::start(&yaml).await;
    let auth = || async {
        s.get("/openai/v1/models").await;
        m.recorded()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_string))
    };
    assert_eq!(auth().await.as_deref(), Some("Bearer sk-old"));
    let tmp = secrets.path().join(".new");
    std::fs::write(&tmp, "sk-new\n").unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    eventually("the new key is used", Duration::from_secs(10), || async {
        auth().await.as_deref() == Some("Bearer sk-new")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_is_rejected_while_traffic_keeps_flowing() {
    let m = default_mock().await;
    let s = TestSidecar::start(&cfg(&m.url(), "good")).await;
    let hash_before = s.sidecar().store().load().hash.clone();

    // Traffic runs the whole time; every request must succeed.
    let client = s.client.clone();
    let url = s.url("/openai/v1/models");
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut bad) = (0u32, 0u32);
            while !stop.is_cancelled() {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => bad += 1,
                }
            }
            (ok, bad)
        })
    };

    s.write_in_place("providers: [this is: not valid\n");
    s.wait_metric(
        r#"llm_sidecar_config_reloads_total{result="failure"}"#,
        ">= 1.0",
        |v| v >= 1.0,
    )
    .await;
    s.write_in_place(&cfg(&m.url(), "good").replace("provider: mock", "provider: mokc"));
    let outcome = s.reload().await;
    let ReloadOutcome::Rejected(errs) = outcome else {
        panic!("expected a rejection, got {outcome:?}")
    };
    assert!(
        errs.to_string()
            .contains("routes[0].provider: unknown provider \"mokc\"; did you mean \"mock\"?"),
        "{errs}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (ok, bad) = traffic.await.unwrap();
    assert!(ok > 10, "traffic flowed ({ok} requests)");
    assert_eq!(bad, 0, "no request failed during rejected reloads");
    assert_eq!(
        s.sidecar().store().load().hash,
        hash_before,
        "the old config still serves"
    );
    assert_eq!(tenant_seen(&s, &m).await.as_deref(), Some("good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_reload_finishes_on_its_snapshot() {
    let m = default_mock().await;
    let s = TestSidecar::start(&cfg(&m.url(), "before")).await;

    // Send the headers now and the body only after the reload: everything the sidecar
    // does for this request after the reload must still follow the old config.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body_stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let req = s
        .client
        .post(s.url("/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body_stream))
        .send();
    let in_flight = tokio::spawn(req);
    s.assert_metric("llm_sidecar_requests_in_flight", 1.0).await;

    s.write_in_place(&cfg(&m.url(), "after"));
    assert!(matches!(s.reload().await, ReloadOutcome::Applied { .. }));
    assert_eq!(
        tenant_seen(&s, &m).await.as_deref(),
        Some("after"),
        "new requests use the new config"
    );

    tx.send(Ok(serde_json::to_vec(&chat_body(false)).unwrap()))
        .await
        .unwrap();
    drop(tx);
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let rec = m.recorded();
    let chat = rec
        .iter()
        .find(|r| r.path.ends_with("/chat/completions"))
        .unwrap();
    assert_eq!(
        chat.header("x-tenant"),
        Some("before"),
        "the in-flight request kept its snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_file_is_a_no_op() {
    let m = default_mock().await;
    let s = TestSidecar::start(&cfg(&m.url(), "same")).await;
    assert!(matches!(s.reload().await, ReloadOutcome::Unchanged));
    assert_eq!(
        s.metric(r#"llm_sidecar_config_reloads_total{result="unchanged"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_change_waits_for_a_restart_while_the_rest_applies() {
    let m = default_mock().await;
    let s = TestSidecar::start(&cfg(&m.url(), "one")).await;
    let before = s.sidecar().reverse_addr();
    let elsewhere = crate::support::upstreams::closed_port();
    std::fs::write(
        &s.config_path,
        format!(
            "version: 1\nlisteners: {{ reverse: \"{elsewhere}\", admin: \"127.0.0.1:0\" }}\n{}",
            cfg(&m.url(), "two")
        ),
    )
    .unwrap();
    assert!(matches!(s.reload().await, ReloadOutcome::Applied { .. }));
    assert_eq!(s.sidecar().reverse_addr(), before);
    assert_eq!(
        tenant_seen(&s, &m).await.as_deref(),
        Some("two"),
        "the rest of the change applied"
    );
    assert!(
        tokio::net::TcpStream::connect(elsewhere).await.is_err(),
        "nothing listens on the new address"
    );
    assert_eq!(
        s.sidecar().store().applied_startup().reverse.port(),
        0,
        "the running listener is what was applied at start"
    );
}
