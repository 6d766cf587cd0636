//! An OAuth2 token endpoint for tests: counts calls, issues `tok-1`, `tok-2`, ..., can be
//! told to fail or to be slow, checks client credentials, and verifies service-account JWT
//! assertions with an RSA public key.

use super::upstreams::accept_for;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Default)]
pub struct Behaviour {
    pub expires_in: u64,
    pub fail: bool,
    pub delay: Duration,
    /// client_credentials: the expected id and secret (HTTP Basic).
    pub client: Option<(String, String)>,
    /// jwt-bearer: PKCS#1 DER RSA public key that must verify the assertion.
    pub jwt_key: Option<Vec<u8>>,
    /// Claims of the last verified assertion.
    pub last_claims: Option<serde_json::Value>,
    /// Form of the last request.
    pub last_form: HashMap<String, String>,
}

pub struct TokenServer {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub behaviour: Arc<Mutex<Behaviour>>,
}

impl TokenServer {
    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn set<F: FnOnce(&mut Behaviour)>(&self, f: F) {
        f(&mut self.behaviour.lock().unwrap());
    }
}

fn json(status: u16, v: serde_json::Value) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn verify_jwt(jwt: &str, key_der: &[u8]) -> Result<serde_json::Value, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jwt.split('.');
    let (h, c, s) = (
        parts.next().ok_or("no header")?,
        parts.next().ok_or("no claims")?,
        parts.next().ok_or("no signature")?,
    );
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(h).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let sig = b64.decode(s).map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key_der)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "bad signature".to_string())?;
    serde_json::from_slice(&b64.decode(c).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

pub async fn start(expires_in: u64) -> TokenServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let behaviour = Arc::new(Mutex::new(Behaviour {
        expires_in,
        ..Default::default()
    }));
    let (c, b) = (calls.clone(), behaviour.clone());
    accept_for(listener, Duration::from_secs(120), move |tcp| {
        let (c, b) = (c.clone(), b.clone());
        async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let (c, b) = (c.clone(), b.clone());
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let form: HashMap<String, String> =
                        form_urlencoded::parse(&body).into_owned().collect();
                    let (delay, fail, expires_in, client, jwt_key) = {
                        let mut g = b.lock().unwrap();
                        g.last_form = form.clone();
                        (
                            g.delay,
                            g.fail,
                            g.expires_in,
                            g.client.clone(),
                            g.jwt_key.clone(),
                        )
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if fail {
                        return Ok::<_, Infallible>(json(
                            503,
                            serde_json::json!({"error": "temporarily_unavailable"}),
                        ));
                    }
                    match form.get("grant_type").map(String::as_str) {
                        Some("client_credentials") => {
                            if let Some((id, secret)) = client {
                                let want = format!(
                                    "Basic {}",
                                    base64::engine::general_purpose::STANDARD
                                        .encode(format!("{id}:{secret}"))
                                );
                                if auth.as_deref() != Some(want.as_str()) {
                                    return Ok(json(
                                        401,
                                        serde_json::json!({"error": "invalid_client"}),
                                    ));
                                }
                            }
                        }
                        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                            let key = jwt_key.unwrap_or_default();
                            match verify_jwt(form.get("assertion").map_or("", String::as_str), &key)
                            {
                                Ok(claims) => b.lock().unwrap().last_claims = Some(claims),
                                Err(e) => {
                                    return Ok(json(
                                        400,
                                        serde_json::json!({"error": "invalid_grant", "error_description": e}),
                                    ));
                                }
                            }
                        }
                        _ => {
                            return Ok(json(
                                400,
                                serde_json::json!({"error": "unsupported_grant_type"}),
                            ))
                        }
                    }
                    Ok(json(
                        200,
                        serde_json::json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in}),
                    ))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    });
    TokenServer {
        addr,
        calls,
        behaviour,
    }
}
