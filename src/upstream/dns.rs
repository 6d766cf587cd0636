//! Asynchronous DNS with a lock-free cache.
//!
//! Pingora's `HttpPeer::new` resolves names with blocking `getaddrinfo` and panics on
//! failure, so the sidecar resolves provider hosts itself and hands Pingora a socket
//! address (SNI and `Host` stay the configured names).
//!
//! Each provider host has one [`HostEntry`], shared across config reloads so the cache
//! survives them. A request reads the current answer with one atomic load. An expired
//! answer is still served while one background task refreshes it (stale-while-
//! revalidate); only the very first lookup of a host, or one after a failure expired, makes
//! a request wait. Answers live for their DNS TTL clamped to `dns.min_ttl..dns.max_ttl`;
//! failures are remembered for `dns.negative_ttl`.
//!
//! The resolver is hickory with the system's `/etc/resolv.conf` and `/etc/hosts`; where
//! there is no resolv.conf (a scratch container) it falls back to the libc resolver on
//! Tokio's blocking pool.

use arc_swap::ArcSwapOption;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct DnsError {
    pub host: String,
    pub reason: String,
}

enum Backend {
    Hickory(Box<TokioResolver>),
    System,
    Fixed(HashMap<String, Vec<IpAddr>>),
}

/// The process-wide resolver.
pub struct Resolver {
    backend: Backend,
}

impl Resolver {
    /// Reads the system resolver configuration. Call inside a Tokio runtime.
    pub fn from_system() -> Arc<Resolver> {
        let backend = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Backend::Hickory(Box::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "no usable /etc/resolv.conf; resolving with the libc resolver instead");
                Backend::System
            }
        };
        Arc::new(Resolver { backend })
    }

    /// The libc resolver only (used by tests that must not depend on resolv.conf).
    pub fn system() -> Arc<Resolver> {
        Arc::new(Resolver {
            backend: Backend::System,
        })
    }

    /// Fixed answers, for tests that need a name with several addresses. Other names do
    /// not resolve.
    pub fn fixed(answers: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Arc<Resolver> {
        let map = answers
            .into_iter()
            .map(|(h, a)| (h.to_ascii_lowercase(), a))
            .collect();
        Arc::new(Resolver {
            backend: Backend::Fixed(map),
        })
    }

    /// Every address of `host` (for pass-through tunnels, which do not share the
    /// provider cache; hickory caches answers itself).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        self.lookup(host, port)
            .await
            .map(|(a, _)| a)
            .map_err(|reason| DnsError {
                host: host.to_string(),
                reason,
            })
    }

    async fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Option<Duration>), String> {
        match &self.backend {
            Backend::Hickory(r) => {
                let answer = r.lookup_ip(host).await.map_err(|e| e.to_string())?;
                let ttl = answer
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                let addrs: Vec<SocketAddr> =
                    answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                Ok((addrs, Some(ttl)))
            }
            Backend::System => {
                let addrs = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| e.to_string())?
                    .collect();
                Ok((addrs, None))
            }
            Backend::Fixed(map) => match map.get(host) {
                Some(ips) => Ok((
                    ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
                    None,
                )),
                None => Err("no such host".into()),
            },
        }
    }
}

struct Answer {
    result: Result<Arc<[SocketAddr]>, String>,
    expires: Instant,
}

/// One upstream host:port and its cached addresses.
pub struct HostEntry {
    host: String,
    port: u16,
    literal: Option<Arc<[SocketAddr]>>,
    answer: ArcSwapOption<Answer>,
    refreshing: AtomicBool,
    /// Spreads requests over the addresses of a multi-address answer.
    next: AtomicUsize,
    cold: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HostEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostEntry({}:{})", self.host, self.port)
    }
}

/// Addresses to try for one request, starting at a rotating offset.
#[derive(Clone, Debug)]
pub struct Candidates {
    addrs: Arc<[SocketAddr]>,
    start: usize,
}

impl Candidates {
    /// The address for the `n`th connection try of this request.
    pub fn get(&self, n: usize) -> Option<SocketAddr> {
        if n >= self.addrs.len() {
            return None;
        }
        Some(self.addrs[(self.start + n) % self.addrs.len()])
    }
    pub fn len(&self) -> usize {
        self.addrs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

impl HostEntry {
    fn new(host: &str, port: u16) -> HostEntry {
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| Arc::from(vec![SocketAddr::new(ip, port)]));
        HostEntry {
            host: host.to_string(),
            port,
            literal,
            answer: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            cold: tokio::sync::Mutex::new(()),
        }
    }

    /// An entry that always answers `addr` (`dns.overrides`); not shared or cached.
    pub fn fixed(host: &str, port: u16, addr: SocketAddr) -> HostEntry {
        HostEntry {
            literal: Some(Arc::from(vec![addr])),
            ..HostEntry::new(host, port)
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Addresses for a request. Waits only when nothing usable is cached.
    pub async fn candidates(
        self: &Arc<Self>,
        resolver: &Arc<Resolver>,
        settings: DnsSettings,
    ) -> Result<Candidates, DnsError> {
        if let Some(lit) = &self.literal {
            return Ok(Candidates {
                addrs: lit.clone(),
                start: 0,
            });
        }
        let now = Instant::now();
        if let Some(a) = self.answer.load_full() {
            match &a.result {
                Ok(addrs) => {
                    if a.expires <= now {
                        self.refresh_in_background(resolver, settings);
                    }
                    return Ok(self.rotate(addrs));
                }
                Err(reason) if a.expires > now => {
                    return Err(DnsError {
                        host: self.host.clone(),
                        reason: reason.clone(),
                    });
                }
                Err(_) => {}
            }
        }
        // Cold path: one lookup at a time per host; late arrivals reuse its answer.
        let _guard = self.cold.lock().await;
        if let Some(a) = self.answer.load_full() {
            if a.expires > Instant::now() {
                return match &a.result {
                    Ok(addrs) => Ok(self.rotate(addrs)),
                    Err(reason) => Err(DnsError {
                        host: self.host.clone(),
                        reason: reason.clone(),
                    }),
                };
            }
        }
        let answer = self.resolve(resolver, settings).await;
        match &answer.result {
            Ok(addrs) => Ok(self.rotate(addrs)),
            Err(reason) => Err(DnsError {
                host: self.host.clone(),
                reason: reason.clone(),
            }),
        }
    }

    fn rotate(&self, addrs: &Arc<[SocketAddr]>) -> Candidates {
        let start = if addrs.len() > 1 {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        Candidates {
            addrs: addrs.clone(),
            start,
        }
    }

    async fn resolve(&self, resolver: &Resolver, settings: DnsSettings) -> Arc<Answer> {
        let now = Instant::now();
        let answer = match resolver.lookup(&self.host, self.port).await {
            Ok((addrs, _)) if addrs.is_empty() => Answer {
                result: Err("no addresses".into()),
                expires: now + settings.negative_ttl,
            },
            Ok((addrs, ttl)) => {
                let ttl = ttl
                    .unwrap_or(settings.min_ttl)
                    .clamp(settings.min_ttl, settings.max_ttl.max(settings.min_ttl));
                Answer {
                    result: Ok(addrs.into()),
                    expires: now + ttl,
                }
            }
            Err(reason) => {
                tracing::warn!(host = %self.host, %reason, "DNS lookup failed");
                // Keep serving a previous good answer rather than failing requests.
                if let Some(prev) = self.answer.load_full() {
                    if let Ok(addrs) = &prev.result {
                        Answer {
                            result: Ok(addrs.clone()),
                            expires: now + settings.negative_ttl,
                        }
                    } else {
                        Answer {
                            result: Err(reason),
                            expires: now + settings.negative_ttl,
                        }
                    }
                } else {
                    Answer {
                        result: Err(reason),
                        expires: now + settings.negative_ttl,
                    }
                }
            }
        };
        let answer = Arc::new(answer);
        self.answer.store(Some(answer.clone()));
        answer
    }

    fn refresh_in_background(self: &Arc<Self>, resolver: &Arc<Resolver>, settings: DnsSettings) {
        if self
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let me = self.clone();
        let resolver = resolver.clone();
        tokio::spawn(async move {
            me.resolve(&resolver, settings).await;
            me.refreshing.store(false, Ordering::Release);
        });
    }
}

/// `dns.overrides`: fixed addresses for names, used instead of DNS for providers and
/// pass-through tunnels alike.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// (host, port or None for any port) → (address, port or None to keep the port).
    map: HashMap<(String, Option<u16>), (IpAddr, Option<u16>)>,
}

impl Overrides {
    /// Parses one entry: key `host` or `host:port`, value `ip`, `ip:port` or `[v6]:port`.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), String> {
        let key = key.trim().trim_end_matches('.').to_ascii_lowercase();
        let (host, port) = match key.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let p = p
                    .parse::<u16>()
                    .map_err(|_| format!("\"{key}\": invalid port"))?;
                (h.to_string(), Some(p))
            }
            _ => (key.clone(), None),
        };
        if host.is_empty() {
            return Err("empty host name".into());
        }
        let v = value.trim();
        let target = if let Ok(sa) = v.parse::<SocketAddr>() {
            (sa.ip(), Some(sa.port()))
        } else if let Ok(ip) = v
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            (ip, None)
        } else {
            return Err(format!(
                "\"{v}\" is not an IP address or IP:port (e.g. 127.0.0.1:8443)"
            ));
        };
        self.map.insert((host, port), target);
        Ok(())
    }

    /// The fixed address for `host:port`, if an override covers it.
    pub fn lookup(&self, host: &str, port: u16) -> Option<SocketAddr> {
        if self.map.is_empty() {
            return None;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let (ip, p) = self
            .map
            .get(&(host.clone(), Some(port)))
            .or_else(|| self.map.get(&(host, None)))?;
        Some(SocketAddr::new(*ip, p.unwrap_or(port)))
    }
}

/// Hands out one shared [`HostEntry`] per host:port across config loads.
#[derive(Default)]
pub struct DnsRegistry {
    entries: crate::config::kept::Kept<HostEntry>,
}

impl DnsRegistry {
    /// Config-load time only; never called per request.
    pub fn entry(&self, host: &str, port: u16) -> Arc<HostEntry> {
        let host = host.to_ascii_lowercase();
        self.entries.get(
            &format!("{host}:{port}"),
            |_| true,
            || HostEntry::new(&host, port),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_skip_dns() {
        let reg = DnsRegistry::default();
        let e = reg.entry("127.0.0.1", 8080);
        let c = e
            .candidates(&Resolver::system(), DnsSettings::default())
            .await
            .unwrap();
        assert_eq!(c.get(0), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.get(1), None);
        let e6 = reg.entry("[::1]", 443);
        let c = e6
            .candidates(&Resolver::system(), DnsSettings::default())
            .await
            .unwrap();
        assert_eq!(c.get(0), Some("[::1]:443".parse().unwrap()));
    }

    #[tokio::test]
    async fn registry_shares_entries_and_caches_answers() {
        let reg = DnsRegistry::default();
        let a = reg.entry("localhost", 80);
        let b = reg.entry("LOCALHOST", 80);
        assert!(Arc::ptr_eq(&a, &b));
        let r = Resolver::system();
        let c = a.candidates(&r, DnsSettings::default()).await.unwrap();
        assert!(!c.is_empty());
        assert!(c.get(0).unwrap().ip().is_loopback());
        // The second call is served from the cache without waiting on the cold lock.
        let guard = a.cold.try_lock().unwrap();
        let c2 = a.candidates(&r, DnsSettings::default()).await.unwrap();
        drop(guard);
        assert_eq!(c2.len(), c.len());
    }

    #[test]
    fn overrides_match_host_and_optional_port() {
        let mut o = Overrides::default();
        o.insert("API.openai.com", "127.0.0.1:8443").unwrap();
        o.insert("internal.example:443", "10.0.0.1").unwrap();
        o.insert("v6.example", "[::1]:9000").unwrap();
        assert_eq!(
            o.lookup("api.openai.com", 443),
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(
            o.lookup("api.openai.com.", 80),
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(
            o.lookup("internal.example", 443),
            Some("10.0.0.1:443".parse().unwrap())
        );
        assert_eq!(o.lookup("internal.example", 80), None);
        assert_eq!(
            o.lookup("v6.example", 1),
            Some("[::1]:9000".parse().unwrap())
        );
        assert!(o.insert("x", "not-an-ip").is_err());
        assert!(o.insert("x:http", "1.2.3.4").is_err());
    }

    #[tokio::test]
    async fn failures_are_cached_negatively() {
        let reg = DnsRegistry::default();
        let e = reg.entry("no-such-host.invalid", 443);
        let r = Resolver::system();
        let s = DnsSettings {
            negative_ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let err = e.candidates(&r, s).await.unwrap_err();
        assert_eq!(err.host, "no-such-host.invalid");
        // Cached: answered without a lookup even while the cold lock is held.
        let guard = e.cold.try_lock().unwrap();
        assert!(e.candidates(&r, s).await.is_err());
        drop(guard);
    }
}
