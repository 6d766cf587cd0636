use super::guard::AllowList;
use super::*;
use crate::routing::HostPattern;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

fn settings() -> ForwardSettings {
    let (allow, errs) = AllowList::parse(&["internal.example".into()]);
    assert!(errs.is_empty());
    ForwardSettings {
        intercept: vec![
            HostPattern::parse("api.openai.com").unwrap(),
            HostPattern::parse("*.openai.azure.com").unwrap(),
        ],
        passthrough: vec![
            PassRule::parse("*.github.com").unwrap(),
            PassRule::parse("pypi.org:8443").unwrap(),
            PassRule::parse("internal.example").unwrap(),
            PassRule::parse("10.9.9.9").unwrap(),
        ],
        allow_private: allow,
        ..ForwardSettings::default()
    }
}

#[test]
fn decisions_by_host_and_port() {
    let s = settings();
    use Decision::*;
    assert_eq!(s.decide("api.openai.com", 443), Ok(Intercept));
    assert_eq!(s.decide("res.openai.azure.com", 443), Ok(Intercept));
    assert_eq!(
        s.decide("api.openai.com", 8443),
        Err(Refusal::PortNotAllowed)
    );
    assert_eq!(s.decide("api.github.com", 443), Ok(Passthrough));
    assert_eq!(s.decide("github.com", 443), Err(Refusal::HostNotAllowed));
    assert_eq!(s.decide("pypi.org", 8443), Ok(Passthrough));
    assert_eq!(s.decide("pypi.org", 443), Err(Refusal::PortNotAllowed));
    assert_eq!(s.decide("example.com", 443), Err(Refusal::HostNotAllowed));
    // IP literals: blocked classes first, whatever the lists say
    assert_eq!(
        s.decide("169.254.169.254", 80),
        Err(Refusal::BlockedAddress(guard::Blocked::LinkLocal))
    );
    assert_eq!(
        s.decide("127.0.0.1", 22),
        Err(Refusal::BlockedAddress(guard::Blocked::Loopback))
    );
    assert_eq!(
        s.decide("10.9.9.9", 443),
        Err(Refusal::BlockedAddress(guard::Blocked::Private))
    );
    assert_eq!(
        s.decide("::ffff:169.254.169.254", 443),
        Err(Refusal::BlockedAddress(guard::Blocked::LinkLocal))
    );
    assert_eq!(s.decide("8.8.8.8", 443), Err(Refusal::HostNotAllowed));
    // a name on the allow list passes the name check; its addresses are checked at dial
    assert_eq!(s.decide("internal.example", 443), Ok(Passthrough));
}

#[test]
fn pass_rules_parse_hosts_and_ports() {
    let r = PassRule::parse("Example.com:8443").unwrap();
    assert_eq!(r.port, Some(8443));
    assert!(r.host.matches("example.com"));
    assert!(PassRule::parse("*.example.com").unwrap().port.is_none());
    assert!(PassRule::parse("example.com:0").is_err());
    assert!(PassRule::parse("exa mple.com").is_err());
    assert!(PassRule::parse("example.com:443:1").is_err());
}

#[test]
fn proxy_users_map_to_tenants() {
    use base64::Engine;
    let mut s = settings();
    let digest: [u8; 32] = Sha256::digest(b"app-a:s3cret").into();
    let mut auth = ProxyAuth {
        required: true,
        users: HashMap::new(),
    };
    auth.users.insert(
        digest,
        ProxyUser {
            name: Arc::from("app-a"),
            tenant: Arc::from("team-a"),
        },
    );
    s.proxy_auth = Some(auth);
    let b64 = |v: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    };
    let good = b64("app-a:s3cret");
    let user = s.authenticate(Some(good.as_bytes())).unwrap().unwrap();
    assert_eq!(&*user.tenant, "team-a");
    for bad in [
        b64("app-a:wrong"),
        b64("app-b:s3cret"),
        "Bearer x".into(),
        "Basic %%%".into(),
    ] {
        assert_eq!(
            s.authenticate(Some(bad.as_bytes())).unwrap_err(),
            Refusal::ProxyAuth,
            "{bad}"
        );
    }
    assert_eq!(s.authenticate(None).unwrap_err(), Refusal::ProxyAuth);
    s.proxy_auth.as_mut().unwrap().required = false;
    assert!(s.authenticate(None).unwrap().is_none());
    assert!(s.authenticate(Some(b64("x:y").as_bytes())).is_err());
}
