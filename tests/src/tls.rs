//! TLS test helpers: certificates generated per test (rcgen), written to a
//! scratch directory, and a blocking rustls client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::GUARD;

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardline-test-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` in the directory; returns the path as a
    /// string for TOML.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        toml_path(&p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "/")
}

/// A certificate authority that signs leaf certificates.
pub struct Ca {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

/// A leaf certificate and its key, as PEM and DER.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for `cn` with only the serverAuth key usage (not
    /// fit for client authentication).
    pub fn server_only_usage(&self, cn: &str) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A server certificate for `names` (DNS names; "127.0.0.1" becomes an
    /// IP SAN).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.server_valid(names, None)
    }

    /// A server certificate valid from January 1st of `from` to January
    /// 1st of `to` (years), when given.
    pub fn server_valid(&self, names: &[&str], years: Option<(i32, i32)>) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some((from, to)) = years {
            p.not_before = rcgen::date_time_ymd(from, 1, 1);
            p.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        for n in names {
            match n.parse::<std::net::IpAddr>() {
                Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => p
                    .subject_alt_names
                    .push(SanType::DnsName((*n).try_into().unwrap())),
            }
        }
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A client certificate with subject CN `cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        self.client_valid(cn, None)
    }

    /// A client certificate valid only from `from` to `to` (years), for
    /// expired ones.
    pub fn client_valid(&self, cn: &str, years: Option<(i32, i32)>) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some((from, to)) = years {
            p.not_before = rcgen::date_time_ymd(from, 1, 1);
            p.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        self.sign(p)
    }

    /// A client certificate whose common name has this encoding
    /// (BMPString, UniversalString, ...).
    pub fn client_cn_value(&self, cn: rcgen::DnValue) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    /// A client certificate without a common name, named by a DNS SAN.
    pub fn client_san(&self, dns: &str) -> Leaf {
        let mut p = CertificateParams::new(vec![dns.to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Which TLS versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Both,
    Only12,
    Only13,
}

/// A client config trusting `ca`, presenting `client_cert` if given.
pub fn client_config(ca: &Ca, client_cert: Option<&Leaf>, versions: Versions) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v: &[&'static rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Only12 => &[&rustls::version::TLS12],
        Versions::Only13 => &[&rustls::version::TLS13],
    };
    let b = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(v)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client_cert {
        Some(leaf) => b
            .with_client_auth_cert(vec![leaf.der.clone()], leaf.key_der())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake; `Err` carries rustls's or the
/// socket's reason.
pub fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    server_name: &str,
) -> Result<TlsStream, String> {
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(GUARD)).unwrap();
    sock.set_write_timeout(Some(GUARD)).unwrap();
    sock.set_nodelay(true).unwrap();
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(s)
}

/// A response read from a TLS stream.
#[derive(Debug)]
pub struct TlsResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl TlsResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `GET path` and reads the response (Content-Length framed, as
/// shardline frames its own answers). `Err` when the connection fails or
/// closes before a whole response.
pub fn get(s: &mut TlsStream, path: &str) -> Result<TlsResponse, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    s.flush().map_err(|e| format!("flush: {e}"))?;
    read_response(s)
}

pub fn read_response(s: &mut TlsStream) -> Result<TlsResponse, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = crate::client::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before a response head ({} bytes)",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no content-length: {head}"))?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed mid-body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(TlsResponse { status, head, body })
}

/// Connects, handshakes and sends one request; `Ok` only when a response
/// came back. With TLS 1.3 a client finishes its side of the handshake
/// before the server has checked the client's certificate, so a refused
/// client certificate shows as a failed first request.
pub fn try_request(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    path: &str,
) -> Result<TlsResponse, String> {
    let mut s = connect(addr, config, "localhost")?;
    get(&mut s, path)
}
