//! The local certificate authority for interception, and the leaf certificates it mints.
//!
//! ```text
//!  ca.pem            root, 10 years        what apps trust (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, ...)
//!   └ intermediate.pem  1 year, pathlen 0  name-constrained to the intercepted domains, no IPs
//!      └ leaf        leaf_validity (24h)   minted per host on first CONNECT, cached
//! ```
//!
//! `llm-sidecar ca init` writes the four files; the sidecar reads only the intermediate,
//! its key and the root (to check the chain at load). `root.key` is needed again only to
//! issue a new intermediate (for more domains, or when it expires): keep it offline.
//!
//! The name constraint is what makes trusting this CA safe: even if the intermediate's key
//! leaked, certificates it signs for any other domain fail verification by clients that
//! enforce RFC 5280 §4.2.1.10 (the tests check OpenSSL and webpki).

use parking_lot::RwLock;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ROOT_CERT: &str = "ca.pem";
pub const ROOT_KEY: &str = "root.key";
pub const INTERMEDIATE_CERT: &str = "intermediate.pem";
pub const INTERMEDIATE_KEY: &str = "intermediate.key";

/// Leaves are backdated this much so a client whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// At most this many hosts' certificates are cached (wildcard routes make the set open).
const CACHE_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn rcgen_err(what: &str, e: rcgen::Error) -> CaError {
    CaError::Invalid(format!("{what}: {e}"))
}

/// The files of a CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    pub root: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            root: dir.join(ROOT_CERT),
            cert: dir.join(INTERMEDIATE_CERT),
            key: dir.join(INTERMEDIATE_KEY),
        }
    }

    /// The files `forward.ca` names: those in `dir`, each overridable by its `*_file`
    /// key; None when neither names all three.
    pub fn from_config(c: &crate::config::schema::ForwardCa) -> Option<CaFiles> {
        let d = c.dir.as_deref().map(CaFiles::in_dir);
        Some(CaFiles {
            root: c.root_file.clone().or(d.as_ref().map(|d| d.root.clone()))?,
            cert: c.cert_file.clone().or(d.as_ref().map(|d| d.cert.clone()))?,
            key: c.key_file.clone().or(d.map(|d| d.key))?,
        })
    }

    /// All three files are there.
    pub fn exist(&self) -> bool {
        self.root.exists() && self.cert.exists() && self.key.exists()
    }
}

/// What `llm-sidecar run` does about a CA that is not there yet (`forward.ca.create_if_missing`).
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// Nothing to create: the files exist, some of them do (half a CA is an error for
    /// the load to report, never overwritten), the CA is named file by file, or
    /// creating is turned off.
    No,
    /// `dir` holds none of the files: create them there.
    Create(PathBuf),
}

impl Missing {
    pub fn of(c: &crate::config::schema::ForwardCa) -> Missing {
        let Some(dir) = &c.dir else {
            return Missing::No;
        };
        let by_file = c.cert_file.is_some() || c.key_file.is_some() || c.root_file.is_some();
        let f = CaFiles::in_dir(dir);
        let none = !f.root.exists() && !f.cert.exists() && !f.key.exists();
        if c.create_if_missing && !by_file && none {
            Missing::Create(dir.clone())
        } else {
            Missing::No
        }
    }
}

/// What `ca init` did.
#[derive(Debug)]
pub struct InitReport {
    pub root: PathBuf,
    /// The root existed and was kept (clients need not trust anything new).
    pub reused_root: bool,
    pub permitted: Vec<String>,
}

/// The DNS subtree a host pattern needs: `*.example.com` → `example.com` (a dNSName
/// constraint permits the name and everything below it).
pub fn permitted_subtree(pattern: &str) -> Result<String, String> {
    let p = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    let base = p.strip_prefix("*.").unwrap_or(&p);
    if base.is_empty()
        || base.contains('*')
        || base.parse::<std::net::IpAddr>().is_ok()
        || !base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "\"{pattern}\" is not a domain name (IP addresses are never intercepted)"
        ));
    }
    Ok(base.to_string())
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    // A failed getrandom leaves zeros; the subject key identifier still differs, and
    // this runs only on `ca init` / leaf minting.
    let _ = getrandom::fill(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "llm-sidecar");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn at(offset_from_now: Duration, forward: bool) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    let d = time::Duration::try_from(offset_from_now).unwrap_or(time::Duration::ZERO);
    if forward {
        now + d
    } else {
        now - d
    }
}

/// Writes `contents` to `path`, readable by the owner only when `secret`.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    opts.mode(if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(&tmp).map_err(|e| file_err(&tmp, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// Writes a public file (a certificate or a trust bundle) atomically, mode 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(contents).map_err(|_| "not UTF-8 text".to_string())?;
    write_file(path, text, false).map_err(|e| e.to_string())
}

/// Mozilla's public roots (the set the sidecar trusts upstream), as PEM, followed by
/// `root_pem`. Runtimes whose CA variable replaces the default store (`SSL_CERT_FILE`,
/// `REQUESTS_CA_BUNDLE`) then still reach every public host, plus intercepted ones.
pub fn trust_bundle(root_pem: &str) -> String {
    use base64::Engine;
    let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
    let mut out = String::with_capacity(roots.len() * 2048 + root_pem.len());
    out.push_str(
        "# Mozilla's public roots (webpki-root-certs) and the llm-sidecar interception CA\n",
    );
    for der in roots {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.push_str("# llm-sidecar interception CA\n");
    out.push_str(root_pem.trim_end());
    out.push('\n');
    out
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (create the CA with `llm-sidecar ca init --dir DIR`)"
        } else {
            ""
        };
        file_err(path, format!("cannot read: {}{hint}", e.kind()))
    })
}

/// Options of `ca init`.
pub struct InitOptions<'a> {
    pub dir: &'a Path,
    /// Domain patterns the intermediate may sign for (`api.openai.com`, `*.azure.com`).
    pub domains: &'a [String],
    pub intermediate_validity: Duration,
    /// Make a new root even if one exists (clients must trust the new one).
    pub new_root: bool,
}

/// `init` with the defaults of `llm-sidecar ca init`: keeps an existing root, the
/// intermediate valid for a year.
pub fn init_dir(dir: &Path, domains: &[&str]) -> Result<InitReport, CaError> {
    let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    init(&InitOptions {
        dir,
        domains: &domains,
        intermediate_validity: Duration::from_secs(365 * 86400),
        new_root: false,
    })
}

/// Creates the root (unless one exists and `new_root` is false) and a new signing
/// intermediate name-constrained to `domains`.
pub fn init(o: &InitOptions<'_>) -> Result<InitReport, CaError> {
    let mut permitted: Vec<String> = Vec::new();
    for d in o.domains {
        let s = permitted_subtree(d).map_err(CaError::Invalid)?;
        if !permitted.contains(&s) {
            permitted.push(s);
        }
    }
    if permitted.is_empty() {
        return Err(CaError::Invalid(
            "no domains to intercept: pass --domain, or a config whose routes match hosts".into(),
        ));
    }
    std::fs::create_dir_all(o.dir).map_err(|e| file_err(o.dir, e))?;
    let root_cert_path = o.dir.join(ROOT_CERT);
    let root_key_path = o.dir.join(ROOT_KEY);

    let reuse = !o.new_root && root_cert_path.exists() && root_key_path.exists();
    let (root_pem, root_key) = if reuse {
        let pem = read(&root_cert_path)?;
        let key = KeyPair::from_pem(&read(&root_key_path)?)
            .map_err(|e| file_err(&root_key_path, format!("not a private key: {e}")))?;
        (pem, key)
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| rcgen_err("root key", e))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn("llm-sidecar local root CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.serial_number = Some(random_serial());
        p.not_before = at(BACKDATE, false);
        p.not_after = at(Duration::from_secs(10 * 365 * 86400), true);
        let cert = p.self_signed(&key).map_err(|e| rcgen_err("root", e))?;
        write_file(&root_key_path, &key.serialize_pem(), true)?;
        write_file(&root_cert_path, &cert.pem(), false)?;
        (cert.pem(), key)
    };
    let root_issuer = Issuer::from_ca_cert_pem(&root_pem, &root_key)
        .map_err(|e| file_err(&root_cert_path, format!("not a CA certificate: {e}")))?;

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| rcgen_err("intermediate key", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn("llm-sidecar interception CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted
            .iter()
            .map(|d| GeneralSubtree::DnsName(d.clone()))
            .collect(),
        // Certificates for IP addresses are never minted; forbid them outright.
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    p.not_before = at(BACKDATE, false);
    p.not_after = at(o.intermediate_validity, true);
    let cert = p
        .signed_by(&key, &root_issuer)
        .map_err(|e| rcgen_err("intermediate", e))?;
    write_file(&o.dir.join(INTERMEDIATE_KEY), &key.serialize_pem(), true)?;
    write_file(&o.dir.join(INTERMEDIATE_CERT), &cert.pem(), false)?;
    Ok(InitReport {
        root: root_cert_path,
        reused_root: reuse,
        permitted,
    })
}

struct CachedLeaf {
    config: Arc<ServerConfig>,
    refresh_at: Instant,
}

/// Reads a signing key in any of the PEM forms CA tools write: PKCS#8 (`PRIVATE KEY`,
/// what `ca init` writes), SEC1 (`EC PRIVATE KEY`: Helm's `genPrivateKey "ecdsa"`,
/// OpenSSL's `ecparam`) or PKCS#1 (`RSA PRIVATE KEY`: Helm's `genCA`). The signer takes
/// PKCS#8 only, so the other two are wrapped in a PKCS#8 envelope first.
fn signing_key(path: &Path, pem: &str) -> Result<KeyPair, CaError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let bad = |why: String| file_err(path, format!("not a usable private key: {why}"));
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        bad(format!(
            "{e} (expected a PEM PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block)"
        ))
    })?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => pkcs8::wrap_rsa(k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => pkcs8::wrap_ec(k.secret_sec1_der())
            .ok_or_else(|| bad("an EC key on a curve other than P-256 or P-384".into()))?,
        _ => return Err(bad("an unsupported key type".into())),
    };
    KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8)).map_err(|e| {
        bad(format!(
            "{e} (RSA, ECDSA P-256/P-384 and Ed25519 keys are supported)"
        ))
    })
}

/// Just enough DER to put a PKCS#1 or SEC1 key into a PKCS#8 `PrivateKeyInfo`.
mod pkcs8 {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    fn info(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, 0x01, 0x00]; // version 0
        body.extend(tlv(0x30, algorithm));
        body.extend(tlv(0x04, key));
        tlv(0x30, &body)
    }

    /// rsaEncryption, NULL parameters.
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    /// id-ecPublicKey.
    const EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

    pub fn wrap_rsa(pkcs1: &[u8]) -> Vec<u8> {
        info(RSA, pkcs1)
    }

    /// The curve is named in the SEC1 key's parameters; Helm and OpenSSL write them.
    pub fn wrap_ec(sec1: &[u8]) -> Option<Vec<u8>> {
        let has = |oid: &[u8]| sec1.windows(oid.len()).any(|w| w == oid);
        let curve = [P256, P384].into_iter().find(|c| has(c))?;
        Some(info(&[EC, curve].concat(), sec1))
    }
}

/// A loaded signing intermediate plus the per-host TLS configs made from it.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    intermediate: CertificateDer<'static>,
    root: CertificateDer<'static>,
    leaf_validity: Duration,
    cache: RwLock<HashMap<Box<str>, CachedLeaf>>,
    metrics: Option<crate::observability::metrics::ForwardMetrics>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn first_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, CaError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .find_map(Result::ok)
        .ok_or_else(|| file_err(path, "no PEM certificate in the file"))
}

impl Authority {
    /// Reads the intermediate, its key and the root, and checks that they belong together.
    pub fn load(files: &CaFiles, leaf_validity: Duration) -> Result<Authority, CaError> {
        let cert_pem = read(&files.cert)?;
        let key = signing_key(&files.key, &read(&files.key)?)?;
        let root_pem = read(&files.root)?;
        let intermediate = first_cert(&files.cert, &cert_pem)?;
        let root = first_cert(&files.root, &root_pem)?;
        let issuer = Issuer::from_ca_cert_der(&intermediate, key)
            .map_err(|e| file_err(&files.cert, format!("not a CA certificate: {e}")))?;
        let a = Authority {
            issuer,
            intermediate,
            root,
            leaf_validity,
            cache: RwLock::new(HashMap::new()),
            metrics: None,
        };
        // The intermediate's key must match its certificate and the root must have signed
        // it: a leaf from this pair must verify against the root for some name.
        a.verify_name("llm-sidecar-self-check.invalid")
            .or_else(|e| match e {
                VerifyError::NotPermitted => Ok(()),
                other => Err(other),
            })
            .map_err(|e| {
                CaError::Invalid(format!(
                    "{} and {} do not form a valid chain under {}: {e}",
                    files.cert.display(),
                    files.key.display(),
                    files.root.display()
                ))
            })?;
        Ok(a)
    }

    pub fn with_metrics(mut self, m: crate::observability::metrics::ForwardMetrics) -> Self {
        self.metrics = Some(m);
        self
    }

    /// A fresh leaf certificate and key for `host`.
    pub fn mint(
        &self,
        host: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| rcgen_err("leaf key", e))?;
        let mut p = CertificateParams::new(vec![host.to_string()])
            .map_err(|e| rcgen_err(&format!("leaf for {host}"), e))?;
        p.distinguished_name = {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, host);
            dn
        };
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(random_serial());
        p.not_before = at(BACKDATE, false);
        p.not_after = at(self.leaf_validity, true);
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(|e| rcgen_err(&format!("leaf for {host}"), e))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }

    /// Checks that clients trusting the root would accept a leaf for `name`.
    pub fn verify_name(&self, name: &str) -> Result<(), VerifyError> {
        let (leaf, _) = self
            .mint(name)
            .map_err(|e| VerifyError::Other(e.to_string()))?;
        verify_leaf(&self.root, &self.intermediate, &leaf, name)
    }

    /// The TLS config for an intercepted host: cached, minted on first use and again
    /// when half its lifetime is gone.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let now = Instant::now();
        if let Some(c) = self.cache.read().get(host) {
            if c.refresh_at > now {
                if let Some(m) = &self.metrics {
                    m.leaf(true);
                }
                return Ok(c.config.clone());
            }
        }
        if let Some(m) = &self.metrics {
            m.leaf(false);
        }
        let (leaf, key) = self.mint(host)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| CaError::Invalid(format!("TLS config: {e}")))?
                .with_no_client_auth()
                .with_single_cert(vec![leaf, self.intermediate.clone()], key)
                .map_err(|e| CaError::Invalid(format!("TLS config for {host}: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, c| c.refresh_at > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(
            Box::from(host),
            CachedLeaf {
                config: config.clone(),
                refresh_at: now + self.leaf_validity / 2,
            },
        );
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the intermediate's name constraints do not permit this name")]
    NotPermitted,
    #[error("{0}")]
    Other(String),
}

/// Verifies `leaf` for `name` the way a rustls client trusting only `root` would.
fn verify_leaf(
    root: &CertificateDer<'static>,
    intermediate: &CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
    name: &str,
) -> Result<(), VerifyError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(root.clone())
        .map_err(|e| VerifyError::Other(format!("root certificate: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| VerifyError::Other(e.to_string()))?;
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| VerifyError::Other(e.to_string()))?;
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(
            leaf,
            std::slice::from_ref(intermediate),
            &server_name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(ref ce)
                if format!("{ce:?}").contains("NameConstraint") =>
            {
                VerifyError::NotPermitted
            }
            other => VerifyError::Other(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(domains: &[&str]) -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), domains).unwrap();
        let a = Authority::load(&CaFiles::in_dir(dir.path()), Duration::from_secs(3600)).unwrap();
        (dir, a)
    }

    /// A self-signed CA made by OpenSSL with its key in `form` (the shapes Helm's
    /// `genCA`/`genPrivateKey` and older tools write), used directly as the signer.
    fn openssl_root(dir: &Path, keygen: &[&str]) {
        let key = dir.join(INTERMEDIATE_KEY);
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let pem = run(keygen);
        std::fs::write(&key, &pem).unwrap();
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-days",
            "30",
            "-subj",
            "/CN=test root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,digitalSignature",
            "-out",
            dir.join(ROOT_CERT).to_str().unwrap(),
        ]);
        std::fs::copy(dir.join(ROOT_CERT), dir.join(INTERMEDIATE_CERT)).unwrap();
    }

    #[test]
    fn a_root_with_a_sec1_or_pkcs1_key_signs_leaves_directly() {
        for (form, keygen, header) in [
            (
                "sec1",
                &["ecparam", "-genkey", "-name", "prime256v1", "-noout"][..],
                "EC PRIVATE KEY",
            ),
            (
                "pkcs1",
                &["genrsa", "-traditional", "2048"][..],
                "RSA PRIVATE KEY",
            ),
            (
                "pkcs8-p384",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ][..],
                "BEGIN PRIVATE KEY",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            openssl_root(dir.path(), keygen);
            let key = std::fs::read_to_string(dir.path().join(INTERMEDIATE_KEY)).unwrap();
            assert!(key.contains(header), "{form}: {key}");
            let a = Authority::load(&CaFiles::in_dir(dir.path()), Duration::from_secs(3600))
                .unwrap_or_else(|e| panic!("{form}: {e}"));
            // No name constraint on such a root: any name verifies.
            a.verify_name("api.openai.com")
                .unwrap_or_else(|e| panic!("{form}: {e:?}"));
            a.server_config("api.openai.com").unwrap();
        }
    }

    #[test]
    fn a_key_that_cannot_sign_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = signing_key(&p, garbage).unwrap_err().to_string();
        assert!(
            e.contains("k.pem") && e.contains("expected a PEM PRIVATE KEY"),
            "{e}"
        );
        // SEC1 on a curve the signer lacks (secp256k1).
        let out = std::process::Command::new("openssl")
            .args(["ecparam", "-genkey", "-name", "secp256k1", "-noout"])
            .output()
            .unwrap();
        let e = signing_key(&p, std::str::from_utf8(&out.stdout).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("other than P-256 or P-384"), "{e}");
    }

    #[test]
    fn leaves_verify_only_inside_the_name_constraint() {
        let (_dir, a) = ca(&["api.openai.com", "*.example.com"]);
        a.verify_name("api.openai.com").unwrap();
        a.verify_name("x.example.com").unwrap();
        a.verify_name("deep.x.example.com").unwrap();
        assert!(matches!(
            a.verify_name("api.anthropic.com"),
            Err(VerifyError::NotPermitted)
        ));
        assert!(matches!(
            a.verify_name("openai.com"),
            Err(VerifyError::NotPermitted)
        ));
    }

    #[test]
    fn keys_are_owner_only_and_root_is_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = vec!["api.openai.com".to_string()];
        let o = InitOptions {
            dir: dir.path(),
            domains: &d,
            intermediate_validity: Duration::from_secs(86400),
            new_root: false,
        };
        let first = init(&o).unwrap();
        assert!(!first.reused_root);
        for f in [ROOT_KEY, INTERMEDIATE_KEY] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let root = std::fs::read(dir.path().join(ROOT_CERT)).unwrap();
        let inter = std::fs::read(dir.path().join(INTERMEDIATE_CERT)).unwrap();
        let second = init(&o).unwrap();
        assert!(second.reused_root);
        assert_eq!(std::fs::read(dir.path().join(ROOT_CERT)).unwrap(), root);
        assert_ne!(
            std::fs::read(dir.path().join(INTERMEDIATE_CERT)).unwrap(),
            inter
        );
        Authority::load(&CaFiles::in_dir(dir.path()), Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn a_mismatched_key_is_refused_at_load() {
        let (dir, _) = ca(&["api.openai.com"]);
        let other = tempfile::tempdir().unwrap();
        init_dir(other.path(), &["api.openai.com"]).unwrap();
        let files = CaFiles {
            key: other.path().join(INTERMEDIATE_KEY),
            ..CaFiles::in_dir(dir.path())
        };
        let e = Authority::load(&files, Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("do not form a valid chain"), "{e}");
        let e = Authority::load(
            &CaFiles::in_dir(Path::new("/nonexistent")),
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ca init"), "{e}");
    }

    #[test]
    fn configs_are_cached_per_host() {
        let (_dir, a) = ca(&["example.com"]);
        let c1 = a.server_config("a.example.com").unwrap();
        let c2 = a.server_config("a.example.com").unwrap();
        let c3 = a.server_config("b.example.com").unwrap();
        assert!(Arc::ptr_eq(&c1, &c2));
        assert!(!Arc::ptr_eq(&c1, &c3));
        assert_eq!(
            c1.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn ip_addresses_and_junk_are_not_domains() {
        assert!(permitted_subtree("10.0.0.1").is_err());
        assert!(permitted_subtree("*").is_err());
        assert_eq!(permitted_subtree("*.Example.com.").unwrap(), "example.com");
    }
}
