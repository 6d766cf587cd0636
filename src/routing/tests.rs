use super::*;
use crate::observability::metrics::Metrics;

fn route(m: &Metrics, name: &str, host: Option<&str>, prefix: Option<&str>, mount: &str) -> Route {
    Route::new(
        Arc::from(name),
        0,
        host.map(|h| HostPattern::parse(h).unwrap()),
        prefix.and_then(|p| normalize_prefix(p).unwrap()),
        mount.to_string(),
        m.route(name, "p"),
        (),
    )
}

#[test]
fn prefix_matches_at_segment_boundaries() {
    let m = Metrics::new();
    let t = RouteTable::new(vec![route(&m, "a", None, Some("/openai/"), "/v1")]);
    assert!(t.find(None, "/openai").is_some());
    assert!(t.find(None, "/openai/v1/chat").is_some());
    assert!(t.find(None, "/openaix").is_none());
    assert!(t.find(None, "/").is_none());
}

#[test]
fn first_match_wins_and_host_matching() {
    let m = Metrics::new();
    let t = RouteTable::new(vec![
        route(&m, "exact", Some("API.openai.com"), None, ""),
        route(&m, "wild", Some("*.example.com"), Some("/v1"), ""),
        route(&m, "any", None, Some("/"), ""),
    ]);
    assert_eq!(
        &*t.find(Some("api.openai.com"), "/x").unwrap().name,
        "exact"
    );
    assert_eq!(
        &*t.find(Some("Api.OpenAI.com"), "/x").unwrap().name,
        "exact"
    );
    assert_eq!(
        &*t.find(Some("a.example.com"), "/v1/x").unwrap().name,
        "wild"
    );
    // the bare domain is not a subdomain
    assert_eq!(&*t.find(Some("example.com"), "/v1/x").unwrap().name, "any");
    assert_eq!(&*t.find(None, "/v1").unwrap().name, "any");
}

#[test]
fn upstream_paths() {
    let m = Metrics::new();
    let r = route(&m, "a", None, Some("/openai/v1"), &join_mount("/v1", ""));
    assert_eq!(
        r.upstream_path("/openai/v1/chat/completions", Some("x=1")),
        "/v1/chat/completions?x=1"
    );
    assert_eq!(r.upstream_path("/openai/v1", None), "/v1");
    let r = route(&m, "b", None, Some("/anthropic"), &join_mount("", ""));
    assert_eq!(
        r.upstream_path("/anthropic/v1/messages", None),
        "/v1/messages"
    );
    assert_eq!(r.upstream_path("/anthropic", None), "/");
    let r = route(&m, "c", None, Some("/x"), &join_mount("/base/", "/v2/"));
    assert_eq!(r.upstream_path("/x/a/b", None), "/base/v2/a/b");
    let r = route(
        &m,
        "host-only",
        Some("api.openai.com"),
        None,
        &join_mount("", ""),
    );
    assert_eq!(r.upstream_path("/v1/models", None), "/v1/models");
}

#[test]
fn shadowing() {
    let m = Metrics::new();
    let broad = route(&m, "broad", None, Some("/openai"), "");
    let narrow = route(&m, "narrow", None, Some("/openai/v1"), "");
    let hosty = route(&m, "host", Some("a.example.com"), Some("/openai/v1"), "");
    let wild = route(&m, "wild", Some("*.example.com"), None, "");
    assert!(broad.shadows(&narrow));
    assert!(!narrow.shadows(&broad));
    assert!(broad.shadows(&hosty));
    assert!(wild.shadows(&hosty));
    assert!(!hosty.shadows(&wild));
}

#[test]
fn host_patterns_and_request_host() {
    assert!(HostPattern::parse("a.*.com").is_err());
    assert!(HostPattern::parse("api.openai.com:443").is_err());
    assert_eq!(strip_port("api.openai.com:443"), "api.openai.com");
    assert_eq!(strip_port("[::1]:8080"), "[::1]");
    assert_eq!(strip_port("example.com."), "example.com");
    let mut req = pingora::http::RequestHeader::build("GET", b"/x", None).unwrap();
    req.insert_header("host", "Api.OpenAI.com:8443").unwrap();
    assert_eq!(request_host(&req), Some("Api.OpenAI.com"));
}

#[test]
fn dot_segments_plain_and_encoded() {
    for bad in [
        "/a/../b",
        "/a/./b",
        "/..",
        "/a/%2e%2e/b",
        "/a/%2E./b",
        "/a/.%2e",
        "/%2e/x",
        // once decoded, the encoded slash makes a segment of the dots
        "/openai/v1/..%2f..%2fx",
        "/openai/v1/..%2F..%2Fx",
        "/openai/v1/%2e%2e%2fx",
        "/openai/v1/%2E%2e%2Fx",
        "/openai/v1/..%5c..%5cx",
        "/openai/v1/..\\x",
        "/openai/v1/x%2f.%2fy",
        // encoded twice (a gateway that decodes twice), and three times
        "/openai/v1/%252e%252e%252fx",
        "/openai/v1/..%252fx",
        "/openai/v1/%25252e%25252e%25252fx",
        // nested deeper than any real path
        "/a/%2525252525252e",
    ] {
        assert!(has_dot_segment(bad), "{bad}");
    }
    for good in [
        "/a/b",
        "/v1.2/x",
        "/a/...",
        "/a/..b",
        "/a/%2ex",
        "/%2",
        "/",
        // Bedrock model ARNs: encoded `:` and `/` are fine
        "/bedrock/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        "/a/%25/b",
        "/a/100%25",
        "/a/%2F%2Fb",
        "/a/x..%2fy",
    ] {
        assert!(!has_dot_segment(good), "{good}");
    }
}
