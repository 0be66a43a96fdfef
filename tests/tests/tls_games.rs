//! TLS clients that misbehave and certificate games: key formats, files
//! that are not what they say, chains out of order, SNI corner cases,
//! client certificates named in odd ways, reloads under open connections,
//! and clients that send garbage, tiny or huge records, alerts and
//! `close_notify` at odd moments. Expected everywhere: a refused handshake
//! is refused cleanly (an alert, then a close), a bad file at start or at
//! reload is a one-line error naming the key (and a reload keeps the old
//! certificates), and nothing hangs or panics.
//!
//! Certificates are generated per test (rcgen). The few keys rcgen cannot
//! make with ring (RSA, P-521, encrypted PEM) are fixed test keys below.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use shardline_tests::server::{config_from_toml, test_config, TestServer};
use shardline_tests::tls::{self, Ca, Leaf, ScratchDir, Versions};
use shardline_tests::{get, GUARD};

// ---------------------------------------------------------------------
// Fixed test keys (generated with openssl for these tests only).

/// RSA-2048, PKCS#8 ("PRIVATE KEY"); its PKCS#1 form is derived below.
const RSA_2048_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQChCvSUQmbY/E0T
BofUAtIkNlczOZeLOPUiurts1f/ihSEDJ1ZxuxMzD2eniQyesFBP5Pgx7tr/936u
KvIdKazTYdIiSI0puLXDd5MAA+YtJLXA+AIEzVDBsW5hb7mrOHecSyROt2ECiMJe
GubFkMl16LYSFYCKr9q/WhscXlo/R8L2G07/ukS8MDUY6vJSqeKCVxeFnXPN4+zd
k0khOAUsW82l8lCFw6aECwyz7Tmabmv4QEJG9mJXf9uOEoqwMWPuYLW3ezDT84VL
3kbtMGr1/7CjZ6ShRcenjUuAR8wBO8fEEx5H69TIMOQ3e9bG3DTgkqfidB/oHMgq
DAaIZpERAgMBAAECggEAAvMIqityJ0Ctp67Lr4gSsauWGr/QBPJ42Nc7JgHgUxV1
lpFynZgbwKhkUVbq9oALpH7wxbdWZvAxL37lWr/f5Koqt0qFXVF+8LLArDQmE8cT
lhJktRJOi5GUkC/D4n0hAamFo3Rr0ChRiPgsqEsfyWtG5Ftk9IVGeBEuJG2c8QI3
vsaYwPthOh8wp167BgRjqZCeGBtV5ZiwiM8fCniiBE82+P1ZeJeRHzoQmou+D9kB
yYNzuoZsBteAsQjiZF2luJWg61yF1iGkB8SvOsb/xFYYPY+Aw9P+pCzIB5/yDK1B
LOl+vAFy5Q2nAJyaiR0MsAvgW2Bw8qW++egX8hYKgQKBgQDWjF1g1wd1zAu4s/s+
1Of1+zYJhNcv07kuoHEtJWTc+SqVzR6DrkPgjuw88oIrdsaHzAASh0pRygUzUysO
lF/uAlm9vUm1V2YBprIWucjlabVicMqRjPo03Ka7DlMf1DlFHXixS+I7Utzd1Ucc
7nyHtK1Nzm+EouKVCQhtSYUk4QKBgQDAKDB1yz/auM/OBI3uTl9mRbJFQBU8J0JW
QsCPx6N9UIX+YBcnjixHQSvburt+197I0G6hwaqPgoqzNNzWAoj6KjumcyPzG9TF
hH5buEm0gbVp1r2jZ74QEEoSuznLV96Mo8tKfCG46wAVeIZ9psQSP/wWdwbv0hA1
cU1tlvjCMQKBgGvoWSbVv9jNca/KRjmJ18juOnV7LMfPUzpSU9oDDsHdSD/j1M8i
HN2axNK6niHCMYQnZHntNcIBO7Beyi8hDUamRACcbbAZbyKxdqzbcGGCU0pZtGiU
YVupBurZ/5Doqo1Kj2OM6RIxUQj5tjSk9llC1E9n3sr1KcUPr/9XlPHBAoGBAJSx
RLaR/appolwASDfkq4u/WPCfYw82Le4EH2/jAw7gdZ9eiexQ5tCIjMCuIZJIxxtL
tqAy9aGxWVTNDioIsigq8BegN2xS1/Wzzfd5hodIa7Inun0stPVHNZqDCHjiWNMp
mBDeN1YZeuoiZqfqmQSqQI69sj93pJVGRK0NyxaxAoGAT0pFbPeFpiDe2YJkD6cs
P7yow2x5DaTK5RbCjsLXXPt8F7tIRR0zrVhlhcsIc08MV9YNajHhfnOg07WciUd8
61N0cRogfVntz3kcfYtHVdg7cORP+mWklozixUlW5Gc1cl/FdyvFHTsRD4N+8T+R
wTOryrVFiGi8vV4aSxsDJYw=
-----END PRIVATE KEY-----
";

/// RSA-1024, PKCS#1: too small for ring to load.
const RSA_1024_PKCS1: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXAIBAAKBgQDtZ18Yx5DJY5iBav9Mb6OKswOV3ATzPkIyFDsW1u9qjiN90EX4
1amyCW9iBVvoZT8I4W3OuQ4GJj+FSQcgYz7Pxc0MpQy2ulJ7OYcdI+1OMtVlZTMu
N/nAs+lKtBM3BaTytDdkXYUjaRWcISDybV5YD8vywv7fV4DVEwtPVA35PQIDAQAB
AoGAHyCrrmMUT+OYLnfqC4qjxd7c/HxBxecG5OwUJ1V9RNpoOunhEtRpEKf+C7sq
JtmHn1F3hWBsP1Aqif5eSdfZd0IH+SEEBIIS5nW09fEjHdlKdjObHw5YNJXuk+CC
I3WJYyJ0Jgr9eAfwr0iOXN8okpToSmeDxgs8Jd5R0MMLP90CQQD+4+keGng+xuG5
yA9rRUQgp6B85Zp3kqhBrvE068FfdZMm4fXe7PXrOYQRiHMh+jutLxUsK99sDM1v
ESHBbvo7AkEA7m/4oJ9RdQne5UOMNsNMlW6FidqPvuAkJnZ5lGzJKjn1hzfNy0NU
kO9VL7EfSkaJFK52k0YRfx/8AgJeSU2q5wJAW2DLpx4oM6FLNTZSyMs5RFe0AnKx
8OIj7gBQuv82AQn+qjbh1XywIRcqkLqRRAIYuNqjRYWpAGyKjaHfryAhFwJBAN/p
5RmqJAv+NgUlVwKCi2P1g5B+4OkGgsxgDDL3qj5uaYYPQMK2uy7UozIDavgMn2T9
pbsOXRX+CmI0qSi7uFcCQHoehaBwHqqsy57atUY1F04bcwy9s6ZKuJ8IYbbBh6fA
/klNmtF8ogUPnH3SbvJoscNB3i//PIxsNkl2Z5rcr18=
-----END RSA PRIVATE KEY-----
";

/// P-521 in SEC1 form: a curve ring does not sign with.
const P521_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MIHcAgEBBEIAzyHoOVQTKxNfaOhhHSMX0B3ikeGUsOF9TfO75lgxuVg1/uw8p9/m
FpubO+EPndm8Z5Pp51NeUiRowpNNfUTiyj+gBwYFK4EEACOhgYkDgYYABADROCRv
Kyw0Gpm6w73zj5FD2jkj0mithlzkXfzHcxhf1iP102+EzaSnWlEsRMF6S8S+5j11
6aSV1MEkNbq4lDne6AAUKdaT6oKtKgZLxLQ/UUqztCCAnGZqoj70x6nQ8zsqgghs
HuamX9XQRwfKMsvMoy1Y9PLxQyDKl0CQM++qXwclHg==
-----END EC PRIVATE KEY-----
";

/// A P-256 key encrypted as PKCS#8 (`openssl pkcs8 -topk8 -v2`).
const ENCRYPTED_PKCS8: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAiVC374C1QSDgICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEAQIEEGMHbSU8o0/xXJVqZwkV+/kEgZBJ
+dLP9GLBoVdg21VAdGZ+rwMXnd/6ocYBplTw5SliZC/IimDfyURAk7XPW/XBpk7J
Aw6HqKPicwww5bz1To4xsIx7pr4S5LhqqzkF9HWVxRosBdDwi/GfJ+/ijB1FPYJN
3zb8i4+87S6cOVbE0hB8NVekWPJMinvlmm9fl1MX9TcjlXG1xSxUuINvujLB4UE=
-----END ENCRYPTED PRIVATE KEY-----
";

/// A P-256 key in legacy OpenSSL encrypted PEM (`Proc-Type` headers).
const ENCRYPTED_LEGACY_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
Proc-Type: 4,ENCRYPTED
DEK-Info: AES-128-CBC,7315713716F2387D794A0415EE10D0F0

51/xKuuV87gBZC9Gs7L/KGZP2Bstd5Z1aLXk5EiLNuItwnnKch7XHxGZr+eQ3/+b
t2FZahs7BFkMJxXL8R7LtBMvPyvO5BZlwTwFWcgev8PuxV9KbZ6RSuRScDQXZ3ik
Ti5ZGRhWE7LzUZQrxl9q0v8f0mSv2FZz8whcAjVacC0=
-----END EC PRIVATE KEY-----
";

// ---------------------------------------------------------------------
// Local helpers.

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_der(text: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(text.as_bytes())
        .unwrap()
        .secret_der()
        .to_vec()
}

/// One DER TLV at the start of `der`: (tag, contents, rest).
fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, hdr) = if der[1] < 0x80 {
        (usize::from(der[1]), 2)
    } else {
        let n = usize::from(der[1] & 0x7f);
        let mut len = 0usize;
        for b in &der[2..2 + n] {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    (tag, &der[hdr..hdr + len], &der[hdr + len..])
}

/// The algorithm-specific key inside a PKCS#8 `PrivateKeyInfo`: PKCS#1
/// `RSAPrivateKey` for RSA, SEC1 `ECPrivateKey` for EC.
fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
    let (_, seq, _) = tlv(pkcs8);
    let (_, _version, rest) = tlv(seq);
    let (_, _alg, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    key.to_vec()
}

/// A server certificate for localhost/127.0.0.1 whose subject key is `key`.
fn server_cert_for(ca: &Ca, key: &KeyPair) -> String {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.signed_by(key, &ca.cert, &ca.key).unwrap().pem()
}

fn tls_section(cert: &str, key: &str, extra: &str) -> String {
    format!("[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{extra}\n")
}

/// Starts `text`, expecting the start to be refused; returns the reason.
fn start_error(text: &str) -> String {
    match shardline::Server::new(test_config(config_from_toml(text))).start() {
        Ok(_) => panic!("started, but should have been refused:\n{text}"),
        Err(e) => e.0,
    }
}

/// Asserts a start/reload error is one line naming `key` (and `file`).
fn assert_names(e: &str, key: &str, file: &str) {
    assert!(!e.contains('\n'), "not one line: {e:?}");
    assert!(e.contains(key), "does not name {key}: {e}");
    assert!(e.contains(file), "does not name {file}: {e}");
}

/// A CA, a server certificate for localhost and 127.0.0.1, the files.
struct Pki {
    dir: ScratchDir,
    ca: Ca,
    leaf: Leaf,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = ScratchDir::new("tls-games");
        let ca = Ca::new("tls games CA");
        let leaf = ca.server(&["localhost", "127.0.0.1"]);
        let cert = dir.write("server.crt", &leaf.cert_pem);
        let key = dir.write("server.key", &leaf.key_pem);
        Pki {
            dir,
            ca,
            leaf,
            cert,
            key,
        }
    }

    fn section(&self, extra: &str) -> String {
        tls_section(&self.cert, &self.key, extra)
    }

    fn start(&self, extra: &str) -> TestServer {
        TestServer::start_toml(&self.section(extra))
    }

    fn client(&self, versions: Versions) -> Arc<rustls::ClientConfig> {
        tls::client_config(&self.ca, None, versions)
    }

    /// A handshaken connection to `addr` as "localhost", without a client
    /// certificate.
    fn connect(&self, addr: SocketAddr, versions: Versions) -> tls::TlsStream {
        tls::connect(addr, &self.client(versions), "localhost").unwrap()
    }

    /// The leaf certificate a fresh client gets for `sni`.
    fn leaf_for(&self, addr: SocketAddr, sni: &str) -> CertificateDer<'static> {
        served_leaf(addr, &self.client(Versions::Both), sni)
    }

    /// Writes this CA to `clients-ca.crt`; returns the path for TOML.
    fn clients_ca_file(&self) -> String {
        self.dir.write("clients-ca.crt", &self.ca.pem())
    }

    /// Writes `leaf` to `{name}.crt` and `{name}.key` and returns an inline
    /// `sni` table for them; `extra` goes after the key (", names = [...]").
    fn sni_entry(&self, name: &str, leaf: &Leaf, extra: &str) -> String {
        let cert = self.dir.write(&format!("{name}.crt"), &leaf.cert_pem);
        let key = self.dir.write(&format!("{name}.key"), &leaf.key_pem);
        format!("{{ cert = \"{cert}\", key = \"{key}\"{extra} }}")
    }
}

/// The leaf certificate a fresh connection with `cfg` gets for `sni`.
fn served_leaf(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> CertificateDer<'static> {
    let s = tls::connect(addr, cfg, sni).unwrap();
    s.conn.peer_certificates().unwrap()[0].clone()
}

/// `client_auth` requiring a certificate from the CAs in `ca_file`.
fn client_auth(ca_file: &str) -> String {
    format!("client_auth = {{ ca = \"{ca_file}\" }}")
}

/// `client_auth` verifying, but not requiring, a client certificate.
fn optional_client_auth(ca_file: &str) -> String {
    format!("client_auth = {{ ca = \"{ca_file}\", required = false }}")
}

/// `base` with its ALPN list replaced by `protocols`.
fn with_alpn(
    base: &Arc<rustls::ClientConfig>,
    protocols: Vec<Vec<u8>>,
) -> Arc<rustls::ClientConfig> {
    let mut cfg = (**base).clone();
    cfg.alpn_protocols = protocols;
    Arc::new(cfg)
}

/// A client config trusting `ca` that presents `chain` with `key` as it
/// is (no intermediates added or checked on the client's side).
fn chain_client(
    ca: &Ca,
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The body of `/whoami` for a fresh connection with `cfg`.
fn whoami(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> String {
    tls::try_request(addr, cfg, "/whoami").unwrap().text()
}

/// Why a fresh connection with `cfg` got no answer to `/whoami`.
fn whoami_refused(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> String {
    tls::try_request(addr, cfg, "/whoami").unwrap_err()
}

const WHOAMI_ROUTES: &str = r#"
[[routes]]
name = "whoami"
method = "GET"
path = "/whoami"
handler = "whoami"
"#;

/// A server whose `/whoami` answers the TLS client identity (or "-").
fn start_whoami(tls_section: &str) -> TestServer {
    let text = format!("{tls_section}{WHOAMI_ROUTES}");
    let server =
        shardline::Server::new(test_config(config_from_toml(&text))).handler("whoami", |_shard| {
            |req: &shardline::Request<'_>, res: &mut shardline::Response<'_, '_>| {
                let who = match (req.is_tls(), req.tls_client_identity()) {
                    (false, _) => "plain".to_string(),
                    (true, Some(id)) => format!("id={id}"),
                    (true, None) => "-".to_string(),
                };
                res.send(200, "text/plain", who.as_bytes())
            }
        });
    TestServer::from_builder(server)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads a raw socket until the server closes it (EOF or reset); `Err`
/// if it is still open after the guard. Returns what arrived.
fn wait_closed(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {
                return Err(format!("still open after {GUARD:?} ({} bytes)", got.len()))
            }
            Err(_) => return Ok(got),
        }
    }
}

/// Reads a TLS stream until it ends; `Ok(true)` for a clean end
/// (close_notify), `Ok(false)` for a TCP close or reset without it or a
/// TLS alert, `Err` if it is still open after the guard.
fn tls_wait_closed(s: &mut tls::TlsStream) -> Result<bool, String> {
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Err(format!("still open after {GUARD:?}")),
            Err(_) => return Ok(false),
        }
    }
}

fn still_serves(pki: &Pki, addr: SocketAddr) {
    let r = tls::try_request(addr, &pki.client(Versions::Both), "/plaintext").unwrap();
    assert_eq!(r.status, 200);
}

/// Asserts `GET /plaintext` on `s` is answered 200.
fn assert_plaintext_ok(s: &mut tls::TlsStream) {
    assert_eq!(tls::get(s, "/plaintext").unwrap().status, 200);
}

/// Writes `bytes`, then `close_notify`, and flushes both.
fn send_then_close_notify(s: &mut tls::TlsStream, bytes: &[u8]) {
    s.write_all(bytes).unwrap();
    s.conn.send_close_notify();
    s.flush().unwrap();
}

/// Reads a TLS stream until it ends (cleanly or not); panics if it is
/// still open after the guard. Returns what arrived.
fn tls_read_until_closed(s: &mut tls::TlsStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => panic!("still open after the guard"),
            Err(_) => break,
        }
    }
    got
}

/// Asserts a start error is one line naming `key` (without a file).
fn assert_one_line_naming(e: &str, key: &str) {
    assert!(!e.contains('\n'), "{e:?}");
    assert!(e.contains(key), "{e}");
}

// ---------------------------------------------------------------------
// Key and certificate files.

#[test]
fn rsa_pkcs1_pkcs8_and_ec_sec1_pkcs8_keys_all_serve() {
    let pki = Pki::new();
    let rsa = KeyPair::from_pem(RSA_2048_PKCS8).unwrap();
    let rsa_pkcs8 = pem_der(RSA_2048_PKCS8);
    let ec = KeyPair::generate().unwrap();
    let ec_pkcs8 = ec.serialize_der();
    let cases = [
        (
            "rsa-pkcs1",
            &rsa,
            pem("RSA PRIVATE KEY", &pkcs8_inner(&rsa_pkcs8)),
        ),
        ("rsa-pkcs8", &rsa, RSA_2048_PKCS8.to_string()),
        (
            "ec-sec1",
            &ec,
            pem("EC PRIVATE KEY", &pkcs8_inner(&ec_pkcs8)),
        ),
        ("ec-pkcs8", &ec, ec.serialize_pem()),
    ];
    for (name, keypair, key_pem) in cases {
        let cert = pki
            .dir
            .write(&format!("{name}.crt"), &server_cert_for(&pki.ca, keypair));
        let key = pki.dir.write(&format!("{name}.key"), &key_pem);
        let server = TestServer::start_toml(&tls_section(&cert, &key, ""));
        for versions in [Versions::Only12, Versions::Only13] {
            let r = tls::try_request(server.tls_addr(), &pki.client(versions), "/plaintext")
                .unwrap_or_else(|e| panic!("{name} {versions:?}: {e}"));
            assert_eq!(r.status, 200, "{name}");
        }
    }
}

#[test]
fn a_key_that_does_not_fit_the_certificate_stops_the_start() {
    let pki = Pki::new();
    let other = pki
        .dir
        .write("other.key", &pki.ca.server(&["localhost"]).key_pem);
    let e = start_error(&tls_section(&pki.cert, &other, ""));
    assert_names(&e, "server.tls.key", "other.key");
    // The same for an SNI entry.
    let api = pki.ca.server(&["api.example.test"]);
    let api_cert = pki.dir.write("api.crt", &api.cert_pem);
    let e = start_error(&pki.section(&format!(
        "sni = [ {{ cert = \"{api_cert}\", key = \"{other}\" }} ]"
    )));
    assert_names(&e, "server.tls.sni[0].key", "other.key");
}

#[test]
fn a_certificate_file_without_a_certificate_stops_the_start() {
    let pki = Pki::new();
    // Only a key; empty; cert and key swapped.
    let only_key = pki.dir.write("only-key.crt", &pki.leaf.key_pem);
    let e = start_error(&tls_section(&only_key, &pki.key, ""));
    assert_names(&e, "server.tls.cert", "only-key.crt");
    let empty = pki.dir.write("empty.crt", "");
    let e = start_error(&tls_section(&empty, &pki.key, ""));
    assert_names(&e, "server.tls.cert", "empty.crt");
    let e = start_error(&tls_section(&pki.key, &pki.cert, ""));
    assert_one_line_naming(&e, "server.tls.cert");
    // A key file holding only a certificate.
    let e = start_error(&tls_section(&pki.cert, &pki.cert, ""));
    assert_one_line_naming(&e, "server.tls.key");
    // A PEM block whose body is not a certificate.
    let junk = pki
        .dir
        .write("junk.crt", &pem("CERTIFICATE", b"this is not DER at all"));
    let e = start_error(&tls_section(&junk, &pki.key, ""));
    assert_one_line_naming(&e, "server.tls");
}

#[test]
fn encrypted_and_unsupported_keys_stop_the_start_naming_the_key() {
    let pki = Pki::new();
    for (name, text) in [
        ("enc-pkcs8.key", ENCRYPTED_PKCS8),
        ("enc-legacy.key", ENCRYPTED_LEGACY_SEC1),
        ("rsa1024.key", RSA_1024_PKCS1),
        ("p521.key", P521_SEC1),
    ] {
        let key = pki.dir.write(name, text);
        let e = start_error(&tls_section(&pki.cert, &key, ""));
        assert_names(&e, "server.tls.key", name);
    }
}

#[test]
fn an_encrypted_key_is_reported_as_encrypted() {
    let pki = Pki::new();
    for (name, text) in [
        ("enc-pkcs8.key", ENCRYPTED_PKCS8),
        ("enc-legacy.key", ENCRYPTED_LEGACY_SEC1),
    ] {
        let key = pki.dir.write(name, text);
        let e = start_error(&tls_section(&pki.cert, &key, ""));
        assert!(e.to_lowercase().contains("encrypted"), "{name}: {e}");
    }
}

#[test]
fn an_unsupported_key_is_not_reported_as_a_mismatch() {
    let pki = Pki::new();
    for (name, text) in [("rsa1024.key", RSA_1024_PKCS1), ("p521.key", P521_SEC1)] {
        let key = pki.dir.write(name, text);
        let e = start_error(&tls_section(&pki.cert, &key, ""));
        assert!(!e.contains("does not fit"), "{name}: {e}");
    }
}

#[test]
fn a_chain_in_the_wrong_order_stops_the_start() {
    let dir = ScratchDir::new("tls-games-order");
    let root = Ca::new("root");
    let inter = root.intermediate("intermediate");
    let leaf = inter.server(&["localhost"]);
    let key = dir.write("leaf.key", &leaf.key_pem);
    let wrong = dir.write(
        "wrong-order.crt",
        &format!("{}{}", inter.pem(), leaf.cert_pem),
    );
    let e = start_error(&tls_section(&wrong, &key, ""));
    assert_names(&e, "server.tls.key", "wrong-order.crt");
    // Leaf first is served with the intermediate behind it.
    let right = dir.write("chain.crt", &format!("{}{}", leaf.cert_pem, inter.pem()));
    let server = TestServer::start_toml(&tls_section(&right, &key, ""));
    let cfg = tls::client_config(&root, None, Versions::Both);
    let mut s = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    assert_eq!(s.conn.peer_certificates().unwrap().len(), 2);
    assert_plaintext_ok(&mut s);
}

#[test]
fn an_expired_server_certificate_is_served_and_clients_refuse_it() {
    // As nginx does: the server starts with it (the clock may be what is
    // wrong); verifying clients refuse it with a clear reason.
    let pki = Pki::new();
    let expired = pki.ca.server_valid(&["localhost"], Some((2001, 2002)));
    let cert_file = pki.dir.write("expired.crt", &expired.cert_pem);
    let key_file = pki.dir.write("expired.key", &expired.key_pem);
    let server = TestServer::start_toml(&tls_section(&cert_file, &key_file, ""));
    let e = tls::connect(server.tls_addr(), &pki.client(Versions::Both), "localhost")
        .map(|_| ())
        .unwrap_err();
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn every_bad_file_at_reload_keeps_the_old_certificate() {
    let pki = Pki::new();
    let ca_file = pki.clients_ca_file();
    let server = pki.start(&optional_client_auth(&ca_file));
    let addr = server.tls_addr();
    let good_cert = pki.leaf.cert_pem.clone();
    let good_key = pki.leaf.key_pem.clone();
    let inter = pki.ca.intermediate("inter");
    let via_inter = inter.server(&["localhost"]);
    let other_key = pki.ca.server(&["localhost"]).key_pem;
    // (what goes in cert, key, CA; the key the error must name)
    let cases: Vec<(&str, String, String, String, &str)> = vec![
        (
            "key mismatch",
            good_cert.clone(),
            other_key,
            pki.ca.pem(),
            "server.tls.key",
        ),
        (
            "empty cert",
            String::new(),
            good_key.clone(),
            pki.ca.pem(),
            "server.tls.cert",
        ),
        (
            "key as cert",
            good_key.clone(),
            good_key.clone(),
            pki.ca.pem(),
            "server.tls.cert",
        ),
        (
            "encrypted key",
            good_cert.clone(),
            ENCRYPTED_PKCS8.into(),
            pki.ca.pem(),
            "server.tls.key",
        ),
        (
            "legacy encrypted key",
            good_cert.clone(),
            ENCRYPTED_LEGACY_SEC1.into(),
            pki.ca.pem(),
            "server.tls.key",
        ),
        (
            "wrong chain order",
            format!("{}{}", inter.pem(), via_inter.cert_pem),
            via_inter.key_pem.clone(),
            pki.ca.pem(),
            "server.tls.key",
        ),
        (
            "CA file with a key only",
            good_cert.clone(),
            good_key.clone(),
            good_key.clone(),
            "server.tls.client_auth.ca",
        ),
        (
            "empty CA file",
            good_cert.clone(),
            good_key.clone(),
            String::new(),
            "server.tls.client_auth.ca",
        ),
        (
            "CA not DER",
            good_cert.clone(),
            good_key.clone(),
            pem("CERTIFICATE", b"garbage, not a certificate"),
            "server.tls.client_auth.ca",
        ),
    ];
    for (what, cert, key, ca, key_name) in cases {
        std::fs::write(&pki.cert, cert).unwrap();
        std::fs::write(&pki.key, key).unwrap();
        std::fs::write(&ca_file, ca).unwrap();
        let e = server.reload_tls().expect_err(what);
        assert!(!e.contains('\n'), "{what}: not one line: {e:?}");
        assert!(e.contains(key_name), "{what}: {e}");
        assert_eq!(pki.leaf_for(addr, "localhost"), pki.leaf.der, "{what}");
    }
    // Mended: the next reload goes through.
    std::fs::write(&pki.cert, &good_cert).unwrap();
    std::fs::write(&pki.key, &good_key).unwrap();
    std::fs::write(&ca_file, pki.ca.pem()).unwrap();
    assert_eq!(server.reload_tls(), Ok(true));
    still_serves(&pki, addr);
}

// ---------------------------------------------------------------------
// SNI.

#[test]
fn sni_wildcards_match_exactly_one_label_and_names_ignore_case() {
    let pki = Pki::new();
    let wild = pki.ca.server(&["wild-by-config"]);
    let api = pki.ca.server(&["api.example.test"]);
    let extra = format!(
        "sni = [ {}, {} ]",
        pki.sni_entry("wild", &wild, ", names = [\"*.Example.test\"]"),
        pki.sni_entry("api", &api, ""),
    );
    let server = pki.start(&extra);
    let addr = server.tls_addr();
    let cfg = pki.client(Versions::Both);
    let leaf_for = |sni: &str| {
        // The client does not verify the name here: only which
        // certificate comes back matters.
        served_leaf(addr, &no_verify_client(&cfg), sni)
    };
    // Exact beats wildcard; any case.
    assert_eq!(leaf_for("api.example.test"), api.der);
    assert_eq!(leaf_for("API.Example.TEST"), api.der);
    // One label under the wildcard.
    assert_eq!(leaf_for("x.example.test"), wild.der);
    assert_eq!(leaf_for("X.EXAMPLE.test"), wild.der);
    // Not two labels, not the apex, not a suffix trick.
    assert_eq!(leaf_for("a.b.example.test"), pki.leaf.der);
    assert_eq!(leaf_for("example.test"), pki.leaf.der);
    assert_eq!(leaf_for("xexample.test"), pki.leaf.der);
    assert_eq!(leaf_for("x.example.test.evil"), pki.leaf.der);
    // Unknown and IP literal (no SNI sent): the default.
    assert_eq!(leaf_for("unknown.test"), pki.leaf.der);
    assert_eq!(leaf_for("127.0.0.1"), pki.leaf.der);
}

/// A client that accepts any server certificate (to look at which one
/// the server picked for a name it is not valid for).
fn no_verify_client(base: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let mut cfg = (**base).clone();
    cfg.dangerous()
        .set_certificate_verifier(Arc::new(AnyCert(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))));
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

#[test]
fn duplicate_sni_names_are_a_config_error() {
    let pki = Pki::new();
    let a = pki.ca.server(&["api.example.test"]);
    let b = pki.ca.server(&["api.example.test"]);
    let extra = format!(
        "sni = [ {}, {} ]",
        pki.sni_entry("a", &a, ""),
        pki.sni_entry("b", &b, "")
    );
    let e = start_error(&pki.section(&extra));
    assert!(
        e.contains("server.tls.sni[1]") && e.contains("api.example.test"),
        "{e}"
    );
    // Nor may an SNI entry claim the default certificate's own name.
    let c = pki.ca.server(&["localhost"]);
    let extra = format!("sni = [ {} ]", pki.sni_entry("c", &c, ""));
    let e = start_error(&pki.section(&extra));
    assert!(
        e.contains("server.tls.sni[0]") && e.contains("localhost"),
        "{e}"
    );
}

// ---------------------------------------------------------------------
// Handshake refusals, ALPN, 0-RTT.

#[test]
fn alpn_with_http11_among_others_and_no_alpn_are_served() {
    let pki = Pki::new();
    let server = pki.start("");
    let addr = server.tls_addr();
    let base = pki.client(Versions::Both);
    let cfg = with_alpn(&base, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let mut s = tls::connect(addr, &cfg, "localhost").unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_plaintext_ok(&mut s);
    let mut s = tls::connect(addr, &with_alpn(&base, Vec::new()), "localhost").unwrap();
    assert_eq!(s.conn.alpn_protocol(), None);
    assert_plaintext_ok(&mut s);
}

#[test]
fn refused_handshakes_end_with_an_alert_not_a_silent_close() {
    let pki = Pki::new();
    let ca_file = pki.clients_ca_file();
    let server =
        start_whoami(&pki.section(&format!("min_version = \"1.3\"\n{}", client_auth(&ca_file))));
    let addr = server.tls_addr();
    let alice = pki.ca.client("alice");
    // TLS 1.2 against min_version 1.3.
    let cfg = tls::client_config(&pki.ca, Some(&alice), Versions::Only12);
    let e = whoami_refused(addr, &cfg);
    assert!(e.contains("alert"), "{e}");
    // ALPN without http/1.1.
    let cfg = tls::client_config(&pki.ca, Some(&alice), Versions::Only13);
    let e = whoami_refused(addr, &with_alpn(&cfg, vec![b"h2".to_vec()]));
    assert!(e.contains("alert"), "{e}");
    // No client certificate.
    let cfg = tls::client_config(&pki.ca, None, Versions::Only13);
    let e = whoami_refused(addr, &cfg);
    assert!(e.contains("alert"), "{e}");
    // The right client is served after all of it.
    let cfg = tls::client_config(&pki.ca, Some(&alice), Versions::Only13);
    assert_eq!(whoami(addr, &cfg), "id=alice");
}

#[test]
fn no_early_data_is_ever_offered_to_resuming_clients() {
    let pki = Pki::new();
    let server = pki.start("");
    let addr = server.tls_addr();
    let mut cfg = (*pki.client(Versions::Only13)).clone();
    cfg.enable_early_data = true;
    let cfg = Arc::new(cfg);
    let mut first = tls::connect(addr, &cfg, "localhost").unwrap();
    assert_plaintext_ok(&mut first);
    drop(first);
    // The ticket from the first connection must not allow 0-RTT.
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(GUARD)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::clone(&cfg), name).unwrap();
    assert!(
        conn.early_data().is_none(),
        "the server's ticket offered 0-RTT early data"
    );
    let mut s = rustls::StreamOwned::new(conn, sock);
    assert_plaintext_ok(&mut s);
    assert_eq!(
        s.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert!(!s.conn.is_early_data_accepted());
}

#[test]
fn a_large_legal_client_hello_is_served() {
    // ~60 KB of ALPN names: one ClientHello over four TLS records.
    let pki = Pki::new();
    let server = pki.start("");
    let mut alpn: Vec<Vec<u8>> = (0..240u32)
        .map(|i| format!("x-{i:03}-{}", "p".repeat(240)).into_bytes())
        .collect();
    alpn.push(b"http/1.1".to_vec());
    let cfg = with_alpn(&pki.client(Versions::Both), alpn);
    let mut s = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_plaintext_ok(&mut s);
}

#[test]
fn malformed_or_oversized_client_hellos_are_closed_at_once() {
    let pki = Pki::new();
    // A long handshake timeout: a close before the guard is the server's
    // own refusal, not the timeout sweep.
    let server = pki.start("handshake_timeout = \"60s\"");
    let addr = server.tls_addr();
    let mut huge_claim = vec![0x16, 0x03, 0x01, 0x00, 0x04];
    huge_claim.extend_from_slice(&[0x01, 0xff, 0xff, 0xff]); // 16 MB ClientHello
    let mut oversized_record = vec![0x16, 0x03, 0x01, 0xff, 0xff]; // 64 KB record
    oversized_record.extend(std::iter::repeat(0x41).take(0xffff));
    let mut not_hello = vec![0x16, 0x03, 0x01, 0x00, 0x04];
    not_hello.extend_from_slice(&[0x02, 0x00, 0x00, 0x00]); // a ServerHello
    let ssl2_hello = vec![
        0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    let alert_first = vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
    let app_data_first = vec![0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5];
    let binary = vec![0u8; 64];
    for (what, bytes) in [
        ("16 MB ClientHello claim", huge_claim),
        ("64 KB record", oversized_record),
        ("a ServerHello", not_hello),
        ("SSLv2 hello", ssl2_hello),
        ("alert first", alert_first),
        ("application data first", app_data_first),
        ("zero bytes", binary),
    ] {
        let mut raw = TcpStream::connect(addr).unwrap();
        let _ = raw.write_all(&bytes);
        wait_closed(&mut raw).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    still_serves(&pki, addr);
}

// ---------------------------------------------------------------------
// Clients misbehaving after the handshake.

#[test]
fn a_request_in_one_byte_records_is_served() {
    let pki = Pki::new();
    let server = pki.start("");
    let mut s = pki.connect(server.tls_addr(), Versions::Both);
    for round in 0..2 {
        let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        for b in req.iter() {
            // One write, one flush: one TLS record per byte.
            s.write_all(std::slice::from_ref(b)).unwrap();
            s.flush().unwrap();
        }
        let r = tls::read_response(&mut s).unwrap();
        assert_eq!(r.status, 200, "round {round}");
        assert_eq!(r.body, b"hello");
    }
}

#[test]
fn garbage_and_oversized_records_after_the_handshake_close_the_connection() {
    let pki = Pki::new();
    let server = pki.start("");
    let addr = server.tls_addr();
    let cfg = pki.client(Versions::Both);
    let mut oversized = vec![0x17, 0x03, 0x03, 0x48, 0x01]; // > 2^14 + 2048
    oversized.extend(std::iter::repeat(0).take(0x4801));
    let plain_http = get("/plaintext", &[]);
    let mut zero_records = Vec::new();
    for _ in 0..100 {
        // Unprotected empty application-data records.
        zero_records.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x00]);
    }
    for (what, bytes) in [
        (
            "random bytes",
            (0..200u8).map(|i| i.wrapping_mul(37)).collect::<Vec<u8>>(),
        ),
        ("oversized record", oversized),
        ("plain HTTP inside the TLS session", plain_http),
        ("empty records", zero_records),
        (
            "a bare ClientHello header",
            vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x01, 0, 0, 0],
        ),
    ] {
        let mut s = tls::connect(addr, &cfg, "localhost").unwrap();
        assert_plaintext_ok(&mut s);
        let _ = s.sock.write_all(&bytes);
        tls_wait_closed(&mut s).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    still_serves(&pki, addr);
}

#[test]
fn close_notify_mid_request_ends_the_connection_without_an_answer() {
    let pki = Pki::new();
    let server = pki.start("");
    let mut s = pki.connect(server.tls_addr(), Versions::Both);
    send_then_close_notify(&mut s, b"GET /plaintext HTTP/1.1\r\nHo");
    let got = tls_read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("Hello, World!"), "{text}");
    still_serves(&pki, server.tls_addr());
}

#[test]
fn a_request_then_close_notify_is_answered_like_a_request_then_fin() {
    let pki = Pki::new();
    let server = pki.start("");
    // Plain: request, then FIN (half-close).
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.write_all(&get("/plaintext", &[])).unwrap();
    plain.shutdown(std::net::Shutdown::Write).unwrap();
    let plain_got = wait_closed(&mut plain).unwrap();
    let plain_answered = String::from_utf8_lossy(&plain_got).contains("Hello, World!");
    // TLS: request, then close_notify (the TLS half-close).
    let mut s = pki.connect(server.tls_addr(), Versions::Both);
    send_then_close_notify(&mut s, &get("/plaintext", &[]));
    let got = tls_read_until_closed(&mut s);
    let tls_answered = String::from_utf8_lossy(&got).contains("Hello, World!");
    assert_eq!(
        tls_answered, plain_answered,
        "plain half-close answered: {plain_answered}; TLS close_notify answered: {tls_answered}"
    );
}

#[test]
fn the_server_ends_its_side_with_close_notify() {
    let pki = Pki::new();
    let server = pki.start("");
    let mut s = pki.connect(server.tls_addr(), Versions::Both);
    s.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    let r = tls::read_response(&mut s).unwrap();
    assert_eq!(r.status, 200);
    // A clean TLS end, not a truncation.
    assert_eq!(tls_wait_closed(&mut s), Ok(true));
}

// ---------------------------------------------------------------------
// Client certificates.

#[test]
fn a_ca_bundle_trusts_clients_of_each_of_its_cas() {
    let pki = Pki::new();
    let second = Ca::new("second client CA");
    let root = Ca::new("third root");
    let inter = root.intermediate("third intermediate");
    // Bundle: this PKI's CA, a second root, and an intermediate (trusted
    // directly, without its root).
    let bundle = format!("{}{}{}", pki.ca.pem(), second.pem(), inter.pem());
    let ca_file = pki.dir.write("bundle.crt", &bundle);
    let server = start_whoami(&pki.section(&client_auth(&ca_file)));
    let addr = server.tls_addr();
    for (ca, who) in [(&pki.ca, "one"), (&second, "two"), (&inter, "three")] {
        let leaf = ca.client(who);
        let cfg = tls::client_config(&pki.ca, Some(&leaf), Versions::Both);
        assert_eq!(whoami(addr, &cfg), format!("id={who}"));
    }
    // A leaf of the intermediate's root (not itself in the bundle) is
    // refused.
    let stranger = root.client("four");
    let cfg = tls::client_config(&pki.ca, Some(&stranger), Versions::Both);
    whoami_refused(addr, &cfg);
}

#[test]
fn a_client_signed_by_an_intermediate_needs_to_send_it() {
    let pki = Pki::new();
    let inter = pki.ca.intermediate("client intermediate");
    let ca_file = pki.clients_ca_file();
    let server = start_whoami(&pki.section(&client_auth(&ca_file)));
    let addr = server.tls_addr();
    let alice = inter.client("alice");
    // Leaf + intermediate: verified.
    let chain = vec![alice.der.clone(), inter.cert.der().clone()];
    let cfg = chain_client(&pki.ca, chain, alice.key_der());
    assert_eq!(whoami(addr, &cfg), "id=alice");
    // Leaf alone: the server cannot build the chain.
    let cfg = chain_client(&pki.ca, vec![alice.der.clone()], alice.key_der());
    whoami_refused(addr, &cfg);
    // The intermediate itself (a CA certificate, with its own key) as the
    // client certificate: refused.
    let cfg = chain_client(
        &pki.ca,
        vec![inter.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(inter.key.serialize_der().into()),
    );
    whoami_refused(addr, &cfg);
}

/// A client certificate with no subject at all and these SANs.
fn client_with_sans(ca: &Ca, sans: Vec<SanType>, cn: Option<&str>) -> Leaf {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

#[test]
fn client_identities_from_sans_and_non_ascii_common_names() {
    let pki = Pki::new();
    let ca_file = pki.clients_ca_file();
    let server = start_whoami(&pki.section(&optional_client_auth(&ca_file)));
    let addr = server.tls_addr();
    let email = SanType::Rfc822Name("svc@example.test".try_into().unwrap());
    let uri = SanType::URI("spiffe://example.test/billing".try_into().unwrap());
    let ip = SanType::IpAddress("10.0.0.1".parse().unwrap());
    let cases: Vec<(Leaf, &str)> = vec![
        (
            client_with_sans(&pki.ca, vec![email.clone()], None),
            "id=svc@example.test",
        ),
        (
            client_with_sans(&pki.ca, vec![uri.clone()], None),
            "id=spiffe://example.test/billing",
        ),
        // The first usable SAN, after an IP address that is not one.
        (
            client_with_sans(&pki.ca, vec![ip.clone(), uri, email], None),
            "id=spiffe://example.test/billing",
        ),
        // A common name wins over SANs.
        (
            client_with_sans(
                &pki.ca,
                vec![SanType::DnsName("dns.example.test".try_into().unwrap())],
                Some("the-cn"),
            ),
            "id=the-cn",
        ),
        // UTF-8 common names are kept as they are.
        (pki.ca.client("Zoë Ångström 東京"), "id=Zoë Ångström 東京"),
        // Nothing usable: verified, but no identity.
        (client_with_sans(&pki.ca, vec![ip], None), "-"),
    ];
    for (leaf, want) in cases {
        for versions in [Versions::Only12, Versions::Only13] {
            let cfg = tls::client_config(&pki.ca, Some(&leaf), versions);
            let r = tls::try_request(addr, &cfg, "/whoami")
                .unwrap_or_else(|e| panic!("{want} {versions:?}: {e}"));
            assert_eq!(r.text(), want, "{versions:?}");
        }
    }
}

#[test]
fn reloading_the_client_ca_keeps_open_connections_and_judges_new_ones() {
    let pki = Pki::new();
    let ca_file = pki.clients_ca_file();
    let server = start_whoami(&pki.section(&client_auth(&ca_file)));
    let addr = server.tls_addr();
    let alice = pki.ca.client("alice");
    let alice_cfg = tls::client_config(&pki.ca, Some(&alice), Versions::Both);
    let mut open = tls::connect(addr, &alice_cfg, "localhost").unwrap();
    assert_eq!(tls::get(&mut open, "/whoami").unwrap().text(), "id=alice");

    let new_ca = Ca::new("new client CA");
    std::fs::write(&ca_file, new_ca.pem()).unwrap();
    assert_eq!(server.reload_tls(), Ok(true));

    // The open connection keeps its verified session (documented).
    for _ in 0..2 {
        assert_eq!(tls::get(&mut open, "/whoami").unwrap().text(), "id=alice");
    }
    // New connections: alice (fresh config, no ticket) is refused, bob of
    // the new CA is served.
    let fresh = tls::client_config(&pki.ca, Some(&alice), Versions::Both);
    whoami_refused(addr, &fresh);
    let bob = new_ca.client("bob");
    let cfg = tls::client_config(&pki.ca, Some(&bob), Versions::Both);
    assert_eq!(whoami(addr, &cfg), "id=bob");

    // A broken CA file: refused, the new CA stays.
    std::fs::write(&ca_file, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    let e = server.reload_tls().unwrap_err();
    assert_names(&e, "server.tls.client_auth.ca", "clients-ca.crt");
    assert_eq!(whoami(addr, &cfg), "id=bob");
    assert_eq!(tls::get(&mut open, "/whoami").unwrap().text(), "id=alice");
}

#[test]
fn a_bad_client_ca_file_stops_the_start_naming_the_key() {
    let pki = Pki::new();
    for (name, text) in [
        ("key-only-ca.crt", pki.leaf.key_pem.clone()),
        ("empty-ca.crt", String::new()),
        ("junk-ca.crt", pem("CERTIFICATE", b"not DER")),
        (
            "truncated-ca.crt",
            "-----BEGIN CERTIFICATE-----\nMIIB\n".to_string(),
        ),
    ] {
        let ca_file = pki.dir.write(name, &text);
        let e = start_error(&pki.section(&client_auth(&ca_file)));
        assert_names(&e, "server.tls.client_auth.ca", name);
    }
}

#[test]
fn plain_http_variants_on_the_tls_port_never_reach_a_route() {
    let pki = Pki::new();
    let server = pki.start("");
    for bytes in [
        &b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &b"G"[..],
        &b"get /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"\r\nGET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let mut raw = TcpStream::connect(server.tls_addr()).unwrap();
        raw.write_all(bytes).unwrap();
        if bytes.len() == 1 {
            raw.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let got = wait_closed(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("Hello, World!"), "{text}");
    }
    still_serves(&pki, server.tls_addr());
}

#[test]
fn the_server_answers_close_notify_with_close_notify() {
    let pki = Pki::new();
    let server = pki.start("");
    for versions in [Versions::Only12, Versions::Only13] {
        // Mid-request, and after a whole request (answered first).
        for sent in [
            &b"GET /plaintext HTTP/1.1\r\nHo"[..],
            &get("/plaintext", &[])[..],
        ] {
            let mut s = pki.connect(server.tls_addr(), versions);
            send_then_close_notify(&mut s, sent);
            assert_eq!(
                tls_wait_closed(&mut s),
                Ok(true),
                "{versions:?}: {:?}",
                String::from_utf8_lossy(sent)
            );
        }
    }
}

#[test]
fn an_idle_timeout_close_sends_close_notify() {
    let pki = Pki::new();
    let server = TestServer::start_toml(&format!(
        "[server]\nidle_timeout = \"300ms\"\n\n{}",
        pki.section("")
    ));
    let mut s = pki.connect(server.tls_addr(), Versions::Both);
    assert_plaintext_ok(&mut s);
    // Idle now: the server closes it after the idle timeout.
    assert_eq!(tls_wait_closed(&mut s), Ok(true));
}

#[test]
fn sni_names_with_a_trailing_dot_match_or_are_refused() {
    let pki = Pki::new();
    let api = pki.ca.server(&["api.example.test"]);
    let extra = format!(
        "sni = [ {} ]",
        pki.sni_entry("api", &api, ", names = [\"api.example.test.\"]")
    );
    let text = pki.section(&extra);
    match shardline::Server::new(test_config(config_from_toml(&text))).start() {
        // Refused, naming the key: fine.
        Err(e) => assert!(e.0.contains("server.tls.sni[0].names"), "{}", e.0),
        // Accepted: then it must serve the name.
        Ok(running) => {
            let addr = running.tls_addr().unwrap();
            let cfg = no_verify_client(&pki.client(Versions::Both));
            let leaf = served_leaf(addr, &cfg, "api.example.test");
            running.shutdown();
            let _ = running.wait();
            assert!(leaf == api.der, "the trailing-dot name never matched");
        }
    }
}

/// A minimal TLS 1.2 ClientHello (ECDHE-ECDSA/RSA AES-128-GCM, X25519,
/// no SNI), with or without the extended_master_secret extension.
fn tls12_client_hello(ems: bool) -> Vec<u8> {
    let mut ext: Vec<u8> = Vec::new();
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]); // groups: x25519
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // point formats
    ext.extend_from_slice(&[
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]); // signature algorithms
    ext.extend_from_slice(&[0xff, 0x01, 0x00, 0x01, 0x00]); // renegotiation_info
    if ems {
        ext.extend_from_slice(&[0x00, 0x17, 0x00, 0x00]);
    }
    let mut body = vec![0x03, 0x03];
    body.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression only
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// The content type of the server's first record for `hello` (0x16: a
/// ServerHello, 0x15: an alert).
fn first_record_type(addr: SocketAddr, hello: &[u8]) -> u8 {
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(GUARD)).unwrap();
    raw.write_all(hello).unwrap();
    let mut b = [0u8; 1];
    raw.read_exact(&mut b).unwrap();
    b[0]
}

/// Whether a TLS 1.2 ClientHello with and without the extended master
/// secret gets a ServerHello (0x16) or an alert (0x15) from a server
/// started with `extra`.
fn ems_answers(pki: &Pki, extra: &str) -> [u8; 2] {
    let server = pki.start(extra);
    [true, false].map(|ems| first_record_type(server.tls_addr(), &tls12_client_hello(ems)))
}

#[test]
fn tls12_without_extended_master_secret_is_refused() {
    // With EMS it is answered: that checks the hand-made ClientHello.
    assert_eq!(ems_answers(&Pki::new(), ""), [0x16, 0x15]);
}

#[test]
fn require_ems_false_lets_legacy_tls12_clients_in() {
    // OpenSSL 1.0.2 and LibreSSL 2.x never send the extension; the knob
    // serves them a ServerHello, and is refused beside client_auth.
    let pki = Pki::new();
    assert_eq!(ems_answers(&pki, "require_ems = false"), [0x16, 0x16]);
    let ca_file = pki.clients_ca_file();
    let e = shardline::Config::from_toml_str(
        &pki.section(&format!("require_ems = false\n{}", client_auth(&ca_file))),
    )
    .expect_err("require_ems = false beside client_auth")
    .0;
    assert!(e.starts_with("server.tls.require_ems"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}
