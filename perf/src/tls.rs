//! TLS for `load` against `https://` targets: the client configuration (roots
//! from `--cacert`, or no verification with `--tls-skip-verify`), the blocking
//! handshake made when a connection opens, and the non-blocking record I/O the
//! event loop uses afterwards.
//!
//! The load loop stays as cheap per request as for plain HTTP: one `read` per
//! readiness report (rustls takes what the socket holds into its own buffer)
//! and one vectored `write` per batch of requests; no `epoll_ctl` unless the
//! socket buffer fills. The handshake is done before the measured part starts
//! and is not what `load` measures (`wrk`, or `perf/compare-tls`'s handshake
//! row, measures those).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// What a TLS target needs: the shared client configuration and the name sent
/// as SNI and checked against the certificate.
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl TlsClient {
    /// `host` is the URL's host (an IP literal or a DNS name); `cacert` a PEM
    /// file of the roots to trust. With neither `cacert` nor `skip_verify` the
    /// call fails: there is no system root store on a benchmark machine's
    /// loopback worth trusting by default.
    pub fn new(host: &str, cacert: Option<&Path>, skip_verify: bool) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client configuration: {e}"))?;
        let mut config = match (cacert, skip_verify) {
            (Some(path), false) => builder
                .with_root_certificates(roots(path)?)
                .with_no_client_auth(),
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth(),
            (Some(_), true) => {
                return Err("--cacert and --tls-skip-verify exclude each other".into())
            }
            (None, false) => {
                return Err("an https:// target needs --cacert FILE (the PEM roots to \
                            verify the server against) or --tls-skip-verify"
                    .into())
            }
        };
        // HTTP/1.1 only, as for plain targets; a server that insists on h2
        // refuses the handshake and the run stops with that reason.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }

    /// Handshakes on `stream` (still blocking; `timeout` bounds each read and
    /// write), then returns the connection for non-blocking use.
    pub fn handshake(
        &self,
        stream: &mut TcpStream,
        timeout: Duration,
    ) -> io::Result<ClientConnection> {
        let mut conn = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(io::Error::other)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        while conn.is_handshaking() {
            conn.complete_io(stream)?;
        }
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok(conn)
    }
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384": what a finished handshake agreed on.
pub fn describe(conn: &ClientConnection) -> String {
    let version = conn
        .protocol_version()
        .map_or_else(|| "unknown version".to_owned(), |v| format!("{v:?}"));
    let suite = conn.negotiated_cipher_suite().map_or_else(
        || "unknown suite".to_owned(),
        |s| format!("{:?}", s.suite()),
    );
    format!("{version} {suite}")
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--cacert {}: {e}", path.display()))?;
        store
            .add(cert)
            .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("--cacert {}: no certificate in it", path.display()));
    }
    Ok(store)
}

/// Result of taking bytes off a TLS connection's socket.
pub enum Received {
    /// New plaintext may be waiting in `conn.reader()`.
    Data,
    /// The socket had nothing (spurious report).
    Nothing,
    /// The peer closed (TCP EOF, or its `close_notify`).
    Closed,
}

/// One `read` of the socket into rustls, then decryption. A record the server
/// sends that is not application data (a TLS 1.3 session ticket, a key
/// update) is handled inside rustls; a reply it calls for is written by the
/// next [`flush`].
pub fn receive(conn: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<Received> {
    match conn.read_tls(stream) {
        Ok(0) => return Ok(Received::Closed),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Nothing),
        Err(e) => return Err(e),
    }
    let state = conn
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if state.peer_has_closed() && state.plaintext_bytes_to_read() == 0 {
        return Ok(Received::Closed);
    }
    Ok(Received::Data)
}

/// Plaintext the connection has decrypted, as a `Read` whose `WouldBlock`
/// means "nothing more until the socket has more".
pub fn plaintext(conn: &mut ClientConnection) -> impl Read + '_ {
    conn.reader()
}

/// Encrypts `bytes` into the connection's outgoing records (sent by
/// [`flush`]).
pub fn queue(conn: &mut ClientConnection, bytes: &[u8]) -> io::Result<()> {
    conn.writer().write_all(bytes)
}

/// Writes the pending records; `Ok(false)` when the socket buffer filled
/// before all were written (wait for writability and call again).
pub fn flush(conn: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `--tls-skip-verify`: accepts any certificate, but still checks the
/// handshake signatures (so the run still pays for, and measures, a real
/// handshake).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::run;
    use crate::load::tests::{config, spawn_server_over};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection, StreamOwned};
    use std::net::SocketAddr;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

    /// A CA, a `localhost`/127.0.0.1 leaf it signed, and the CA's PEM in a
    /// file (what `--cacert` takes).
    struct Pki {
        leaf: CertificateDer<'static>,
        leaf_key: PrivateKeyDer<'static>,
        ca_file: std::path::PathBuf,
    }

    fn pki(tag: &str) -> Pki {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("ca");
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("leaf");
        let ca_file = std::env::temp_dir().join(format!(
            "shardline-perf-tls-{tag}-{}.pem",
            std::process::id()
        ));
        std::fs::write(&ca_file, ca.pem()).expect("write ca");
        Pki {
            leaf: leaf.der().clone(),
            leaf_key: PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
            ca_file,
        }
    }

    /// A blocking rustls server answering each request head with [`RESPONSE`].
    fn spawn_tls_server(pki: &Pki) -> SocketAddr {
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![pki.leaf.clone()], pki.leaf_key.clone_key())
                .expect("server config");
        let config = Arc::new(config);
        spawn_server_over(RESPONSE, move |stream| {
            let conn = ServerConnection::new(Arc::clone(&config)).ok()?;
            Some(StreamOwned::new(conn, stream))
        })
    }

    fn tls_config(addr: SocketAddr, pipeline: usize, client: TlsClient) -> crate::load::LoadConfig {
        let mut cfg = config(addr, pipeline);
        cfg.target.tls = true;
        cfg.tls = Some(client);
        cfg
    }

    #[test]
    fn closed_loop_over_tls_verified_against_the_ca() {
        let pki = pki("ok");
        let addr = spawn_tls_server(&pki);
        for pipeline in [1, 8] {
            let client = TlsClient::new("localhost", Some(&pki.ca_file), false).expect("client");
            let report = run(&tls_config(addr, pipeline, client)).expect("run");
            assert!(report.counts.responses > 0);
            assert_eq!(report.counts.errors(), 0, "{report:?}");
            assert_eq!(report.counts.non_2xx, 0);
            let session = report
                .tls_session
                .expect("a TLS run says what it negotiated");
            assert!(session.starts_with("TLSv1_3 TLS13_"), "{session}");
        }
        // An IP literal is a valid server name too (the leaf lists 127.0.0.1).
        let client = TlsClient::new("127.0.0.1", Some(&pki.ca_file), false).expect("client");
        let report = run(&tls_config(addr, 1, client)).expect("run by IP");
        assert_eq!(report.counts.errors(), 0);
        let _ = std::fs::remove_file(&pki.ca_file);
    }

    #[test]
    fn a_server_the_roots_do_not_vouch_for_stops_the_run_with_the_reason() {
        let served = pki("served");
        let other = pki("other");
        let addr = spawn_tls_server(&served);
        let client = TlsClient::new("localhost", Some(&other.ca_file), false).expect("client");
        let err = run(&tls_config(addr, 1, client)).expect_err("wrong roots must fail");
        assert!(err.contains("TLS handshake with"), "{err}");
        assert!(err.contains("certificate"), "{err}");
        // The wrong name fails the same way, however good the roots.
        let client = TlsClient::new("example.invalid", Some(&served.ca_file), false).expect("c");
        let err = run(&tls_config(addr, 1, client)).expect_err("wrong name must fail");
        assert!(err.contains("TLS handshake with"), "{err}");
        // Skipping verification accepts it, and still runs over TLS.
        let client = TlsClient::new("localhost", None, true).expect("client");
        let report = run(&tls_config(addr, 1, client)).expect("skip-verify run");
        assert_eq!(report.counts.errors(), 0);
        assert!(report.tls_session.is_some());
        for f in [&served.ca_file, &other.ca_file] {
            let _ = std::fs::remove_file(f);
        }
    }

    #[test]
    fn client_options_are_checked() {
        let err = TlsClient::new("localhost", None, false).expect_err("needs roots or skip");
        assert!(err.contains("--cacert"), "{err}");
        let pki = pki("opts");
        let err = TlsClient::new("localhost", Some(&pki.ca_file), true).expect_err("both");
        assert!(err.contains("exclude"), "{err}");
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        assert!(TlsClient::new("localhost", Some(missing), false).is_err());
        let empty =
            std::env::temp_dir().join(format!("shardline-perf-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = TlsClient::new("localhost", Some(&empty), false).expect_err("no certs");
        assert!(err.contains("no certificate"), "{err}");
        let _ = std::fs::remove_file(&empty);
        let _ = std::fs::remove_file(&pki.ca_file);
    }
}
