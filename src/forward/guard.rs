//! The address guard: which destinations a pass-through tunnel may reach.
//!
//! A forward proxy that dials whatever it is asked to is an SSRF hole: one `CONNECT
//! 169.254.169.254:80` reads the cloud metadata service. The guard refuses, unless
//! `forward.allow_private` opens them: loopback, private (RFC 1918, ULA `fc00::/7`, which
//! includes AWS's `fd00:ec2::254`), carrier-grade NAT, link-local (`169.254.0.0/16`,
//! `fe80::/10`), unspecified, multicast, broadcast and reserved addresses, and the same
//! addresses wrapped in IPv6 (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible, NAT64
//! `64:ff9b::/96`).
//!
//! The check runs on the addresses actually dialled, after DNS: the tunnel connects to
//! the checked `SocketAddr`, never to the name again, so DNS rebinding cannot swap in an
//! internal address between the check and the connect.

use crate::routing::HostPattern;
use crate::tenant::Cidr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    Loopback,
    Private,
    LinkLocal,
    Unspecified,
    Multicast,
    Reserved,
}

impl Blocked {
    pub fn as_str(self) -> &'static str {
        match self {
            Blocked::Loopback => "loopback",
            Blocked::Private => "private",
            Blocked::LinkLocal => "link-local",
            Blocked::Unspecified => "unspecified",
            Blocked::Multicast => "multicast",
            Blocked::Reserved => "reserved",
        }
    }
}

/// The class that keeps `ip` from being dialled, if any.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some(Blocked::Unspecified)
    } else if ip.is_loopback() {
        Some(Blocked::Loopback)
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        // RFC 1918 and RFC 6598 shared address space (carrier-grade NAT)
        Some(Blocked::Private)
    } else if ip.is_link_local() {
        Some(Blocked::LinkLocal)
    } else if ip.is_multicast() {
        Some(Blocked::Multicast)
    } else if ip.is_broadcast() || o[0] >= 240 || (o[0] == 192 && o[1] == 0 && o[2] == 0) {
        // 240.0.0.0/4 reserved; 192.0.0.0/24 IETF protocol assignments
        Some(Blocked::Reserved)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        Some(Blocked::Unspecified)
    } else if ip.is_loopback() {
        Some(Blocked::Loopback)
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some(Blocked::Private)
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some(Blocked::LinkLocal)
    } else if ip.is_multicast() {
        Some(Blocked::Multicast)
    } else if (s[0] & 0xffc0) == 0xfec0 || s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        // deprecated site-local; discard-only 100::/64
        Some(Blocked::Reserved)
    } else {
        None
    }
}

/// An IPv4 address carried inside an IPv6 one: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`, deprecated but still routed by some stacks) or NAT64 (`64:ff9b::/96`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(tail);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(tail);
    }
    None
}

/// `forward.allow_private`: names, addresses and networks the guard lets through.
#[derive(Debug, Default)]
pub struct AllowList {
    names: Vec<HostPattern>,
    nets: Vec<Cidr>,
}

impl AllowList {
    pub fn parse(entries: &[String]) -> (AllowList, Vec<(usize, String)>) {
        let mut list = AllowList::default();
        let mut errs = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let t = e.trim();
            let looks_ip = t.contains('/')
                || t.parse::<IpAddr>().is_ok()
                || t.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<Ipv6Addr>()
                    .is_ok();
            if looks_ip {
                match Cidr::parse(t.trim_start_matches('[').trim_end_matches(']')) {
                    Ok(c) => list.nets.push(c),
                    Err(m) => errs.push((i, m)),
                }
            } else {
                match HostPattern::parse(t) {
                    Ok(h) => list.names.push(h),
                    Err(m) => errs.push((i, m)),
                }
            }
        }
        (list, errs)
    }

    pub fn allows_name(&self, host: &str) -> bool {
        self.names.iter().any(|p| p.matches(host))
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|c| c.contains(ip))
    }

    /// Whether `ip` may be dialled for `host` (the name asked for).
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Blocked> {
        match classify(ip) {
            None => Ok(()),
            Some(_) if self.allows_name(host) || self.allows_ip(ip) => Ok(()),
            Some(b) => Err(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Option<Blocked> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_blocked() {
        use Blocked::*;
        for (a, want) in [
            ("127.0.0.1", Loopback),
            ("127.8.9.10", Loopback),
            ("::1", Loopback),
            ("10.0.0.1", Private),
            ("172.16.5.4", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", Private),
            ("fd00:ec2::254", Private),
            ("fc00::1", Private),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Reserved),
            ("240.0.0.1", Reserved),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.1.2.3", Private),
            ("::10.1.2.3", Private),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
        ] {
            assert_eq!(c(a), Some(want), "{a}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "1.1.1.1",
            "104.18.7.192",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::6810:1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(c(a), None, "{a}");
        }
    }

    #[test]
    fn allow_entries_open_specific_destinations() {
        let (allow, errs) = AllowList::parse(&[
            "internal.corp.example".into(),
            "10.20.0.0/16".into(),
            "fd12::7".into(),
        ]);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(allow
            .check("internal.corp.example", "10.0.0.1".parse().unwrap())
            .is_ok());
        assert!(allow.check("other", "10.20.3.4".parse().unwrap()).is_ok());
        assert!(allow.check("other", "fd12::7".parse().unwrap()).is_ok());
        assert_eq!(
            allow.check("other", "10.21.0.1".parse().unwrap()),
            Err(Blocked::Private)
        );
        assert_eq!(
            allow.check("other", "::ffff:127.0.0.1".parse().unwrap()),
            Err(Blocked::Loopback)
        );
        let (_, errs) = AllowList::parse(&["10.0.0.0/33".into(), "bad host!".into()]);
        assert_eq!(errs.len(), 2);
    }
}
