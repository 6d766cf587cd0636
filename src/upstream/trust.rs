//! The certificates an upstream's TLS certificate must chain to.
//!
//! Every TLS provider gets an explicit trust list handed to Pingora (`PeerOptions::ca`):
//! Mozilla's roots from `webpki-root-certs` (unless `tls.public_roots: false`) plus the
//! provider's `tls.ca_file`. Pingora then verifies the chain and the host name with
//! rustls; there is deliberately no switch to turn verification off.

use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub type TrustList = Arc<[WrappedX509]>;

fn wrap(der: &[u8]) -> WrappedX509 {
    WrappedX509::new(der.to_vec(), parse_x509)
}

/// Mozilla's roots, built once per process and shared by every provider that needs no
/// extra CA.
pub fn public_roots() -> TrustList {
    static ROOTS: OnceLock<TrustList> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| wrap(c.as_ref()))
                .collect::<Vec<_>>()
                .into()
        })
        .clone()
}

/// Reads a PEM file of CA certificates, checking each parses as a trust anchor.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&data) {
        let cert = item.map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
        certs.push(cert.into_owned());
    }
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", path.display()));
    }
    // rustls/webpki is the stricter parser: if it accepts a certificate as an anchor, the
    // DER is sound for Pingora's wrapper too.
    let mut store = RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{}: certificate #{} is not a usable CA: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// The trust list for one provider.
pub fn trust_list(extra: &[CertificateDer<'static>], public: bool) -> TrustList {
    if extra.is_empty() && public {
        return public_roots();
    }
    let mut list: Vec<WrappedX509> = Vec::new();
    if public {
        list.extend(
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| wrap(c.as_ref())),
        );
    }
    list.extend(extra.iter().map(|c| wrap(c.as_ref())));
    list.into()
}
