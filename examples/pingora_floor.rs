//! The framework's floor: the smallest Pingora reverse proxy that does what the
//! sidecar's pass-through does on the wire (one fixed upstream, pooled keep-alive,
//! the credential replaced, one tenant header added). `benches/load.sh` measures it
//! next to the sidecar so that the report separates Pingora's own cost from ours.
//!
//!     cargo run --release --example pingora_floor -- LISTEN UPSTREAM
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

struct Floor(SocketAddr);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
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
        Ok(())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora_floor LISTEN UPSTREAM");
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
    let mut svc = http_proxy_service(&server.configuration, Floor(upstream));
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
