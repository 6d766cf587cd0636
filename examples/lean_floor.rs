//! The floor without pingora-proxy: the same proxy as `examples/pingora_floor` (one fixed
//! upstream, pooled keep-alive, the credential replaced, one tenant header added), written
//! as a bare `HttpServerApp` on pingora-core's server session, connector and client
//! session. It is the prototype issue 18 asked for: how much of the ProxyHttp floor is
//! pingora-proxy's pipeline (its hooks, its duplex loop, its boxed session future), and so
//! how much a lean data path would save. `benches/load.sh` measures it next to the other
//! floor.
//!
//!     cargo run --release --example lean_floor -- LISTEN UPSTREAM
//!
//! What it leaves out, as the ProxyHttp floor does: retries, timeouts, HTTP/2 downstream,
//! request bodies larger than one read at a time are streamed, not replayed.
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::sync::Arc;

struct Lean {
    peer: HttpPeer,
    connector: Connector,
}

impl Lean {
    /// One request: its head rewritten, sent with its body, the answer streamed back.
    /// `Ok(true)`: both connections are clean and may be reused.
    async fn exchange(&self, session: &mut ServerSession) -> Result<bool> {
        let mut req = session.req_header().clone();
        req.insert_header("authorization", "Bearer sk-bench")?;
        req.insert_header("x-llm-sidecar-tenant", "bench")?;
        let path = req
            .uri
            .path()
            .strip_prefix("/openai")
            .unwrap_or("/")
            .to_owned();
        req.set_uri(
            path.parse()
                .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?,
        );
        let (mut up, _reused) = self.connector.get_http_session(&self.peer).await?;
        up.write_request_header(Box::new(req)).await?;
        while let Some(chunk) = session.read_request_body().await? {
            up.write_request_body(chunk, false).await?;
        }
        up.finish_request_body().await?;
        up.read_response_header().await?;
        let head: ResponseHeader = up
            .response_header()
            .cloned()
            .ok_or_else(|| Error::new(ErrorType::InvalidHTTPHeader))?;
        session.write_response_header(Box::new(head)).await?;
        while let Some(chunk) = up.read_response_body().await? {
            session.write_response_body(chunk, false).await?;
        }
        session.finish_body().await?;
        let clean = up.response_done();
        if clean {
            self.connector
                .release_http_session(up, &self.peer, None)
                .await;
        }
        Ok(clean)
    }
}

#[async_trait]
impl HttpServerApp for Lean {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        match self.exchange(&mut session).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if session.response_written().is_none() {
                    let _ = session.respond_error(502).await;
                }
                eprintln!("lean_floor: {e}");
                return None;
            }
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: lean_floor LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let Ok(upstream) = upstream.parse::<SocketAddr>() else {
        eprintln!("UPSTREAM must be an ip:port");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let connector = Connector::new(Some(
        pingora::connectors::ConnectorOptions::from_server_conf(&server.configuration),
    ));
    let app = Lean {
        peer: HttpPeer::new(upstream, false, String::new()),
        connector,
    };
    let mut svc = Service::new("lean floor".to_owned(), app);
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
