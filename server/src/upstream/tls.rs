//! Upstream TLS: `https://` targets. One stream type for the upstream side
//! ([`UpstreamStream`]: plain TCP or rustls client over it), and the
//! rustls client config built once per upstream from `[upstreams.tls]`.
//!
//! Verification is the default: the target's certificate must chain to the
//! configured CA file and be valid for the SNI name (the target's host, or
//! `tls.server_name`). `insecure_skip_verify_for_tests` turns every check
//! off; it exists for test rigs with throwaway certificates, is named so
//! that nobody sets it by accident, and the server says so when it starts.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use shardline_shard::readiness::{watch_local, Watch};
use shardline_shard::tls::TlsStream;

/// What a TLS target connects with.
#[derive(Debug, Clone)]
pub struct TargetTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The client config for an upstream's `https://` targets.
pub(crate) fn client_config(
    key: &str,
    ca: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("{key}: {e}"))?;
    let mut cfg = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let Some(ca) = ca else {
            return Err(format!(
                "{key}.ca: missing (https:// targets are verified against a CA file: give the PEM bundle that signs their certificates)"
            ));
        };
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{key}.ca: cannot read {}: {e:?}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("{key}.ca: {}: no PEM certificate", ca.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{key}.ca: {}: {e}", ca.display()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any certificate (`insecure_skip_verify_for_tests`); signatures
/// are still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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

/// A connection to an upstream target.
pub(crate) enum UpstreamStream {
    /// With a `Watch`, reads wait on the shard's epoll instance
    /// (`readiness = "epoll"`), without one on glommio's ring.
    Plain(TcpStream, Option<Watch>),
    Tls(Box<TlsStream<ClientConnection>>),
}

impl UpstreamStream {
    /// The socket of a plain (not TLS) connection.
    pub(crate) fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        self.plain_socket().map(|(fd, _)| fd)
    }

    /// The socket of a plain connection and its epoll watch.
    pub(crate) fn plain_socket(&self) -> Option<(std::os::fd::RawFd, Option<&Watch>)> {
        match self {
            UpstreamStream::Plain(s, w) => Some((std::os::fd::AsRawFd::as_raw_fd(s), w.as_ref())),
            UpstreamStream::Tls(_) => None,
        }
    }

    /// Whether the connection can go back to the pool: always for plain
    /// TCP (the pool's checks look at the socket), for TLS only when rustls
    /// holds nothing unread and the upstream has not closed its side.
    pub(crate) fn is_reusable(&mut self) -> bool {
        match self {
            UpstreamStream::Plain(..) => true,
            UpstreamStream::Tls(t) => t.is_reusable(),
        }
    }

    /// Whether the shard's epoll instance says this connection has been
    /// quiet (nothing to read, not closed) since its last response was
    /// read; false when it cannot say (TLS, or no watch).
    pub(crate) fn known_quiet(&self) -> bool {
        matches!(self, UpstreamStream::Plain(_, Some(w)) if w.known_drained())
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(s, _) => s,
            UpstreamStream::Tls(t) => t.tcp(),
        }
    }

    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(t).map_err(io::Error::from)
    }

    /// A plain connection, registered with the shard's epoll instance.
    pub(crate) fn plain(tcp: TcpStream) -> UpstreamStream {
        let watch = watch_local(tcp.as_raw_fd());
        UpstreamStream::Plain(tcp, watch)
    }

    /// Runs the client handshake over a fresh TCP connection.
    pub(crate) async fn tls(tcp: TcpStream, tls: &TargetTls) -> io::Result<UpstreamStream> {
        let conn = ClientConnection::new(Arc::clone(&tls.config), tls.server_name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let watch = watch_local(tcp.as_raw_fd());
        let mut s = TlsStream::client(tcp, conn).with_watch(watch);
        s.handshake().await?;
        Ok(UpstreamStream::Tls(Box::new(s)))
    }
}

impl AsRawFd for UpstreamStream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(_, Some(w)) => w.poll_recv(cx, buf),
            UpstreamStream::Plain(s, None) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_close(cx),
            UpstreamStream::Tls(t) => Pin::new(&mut **t).poll_close(cx),
        }
    }
}
