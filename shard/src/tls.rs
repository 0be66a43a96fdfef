//! TLS termination inside the shard: rustls driven over the shard's own
//! socket, no thread hop.
//!
//! - [`TlsAcceptor`] is what a listener is configured with: the current
//!   `rustls::ServerConfig` (swapped whole on reload) and the handshake
//!   timeout. It is shared by every shard.
//! - `LocalTls` is a shard's view of it: the config it hands to new
//!   connections, refreshed only when the acceptor's generation changed.
//!   Checking costs one atomic load per accepted connection; the mutex is
//!   taken once per shard per reload, never per request.
//! - `TlsStream` is one connection: a `rustls::ServerConnection` fed from
//!   and flushed to the `TcpStream` with non-blocking reads and writes (an
//!   adapter turns "would wait" into `WouldBlock` for rustls and back into
//!   `Poll::Pending` for the caller, with glommio's waker registered).

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::{ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

use crate::readiness::Watch;

/// A listener's TLS settings, shared by every shard. Replacing the config
/// affects handshakes that start afterwards; connections already set up
/// keep the config (and certificate) they were accepted with.
pub struct TlsAcceptor {
    config: Mutex<Arc<ServerConfig>>,
    /// Bumped by every [`TlsAcceptor::replace`]; shards compare it with the
    /// generation they hold before taking the mutex.
    generation: AtomicU64,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl TlsAcceptor {
    /// `handshake_timeout` bounds the whole handshake, from accept to the
    /// first application byte the server may read.
    pub fn new(config: Arc<ServerConfig>, handshake_timeout: Duration) -> Self {
        TlsAcceptor {
            config: Mutex::new(config),
            generation: AtomicU64::new(0),
            handshake_timeout,
        }
    }

    /// New handshakes use `config` from now on (each shard picks it up at
    /// its next accept).
    pub fn replace(&self, config: Arc<ServerConfig>) {
        let mut cur = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cur = config;
        // Bumped under the lock so a shard that sees the new generation
        // also finds the new config.
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn snapshot(&self) -> (u64, Arc<ServerConfig>) {
        let cur = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (self.generation.load(Ordering::Acquire), Arc::clone(&cur))
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

/// One shard's cached copy of a listener's TLS config.
pub(crate) struct LocalTls {
    acceptor: Arc<TlsAcceptor>,
    generation: Cell<u64>,
    config: RefCell<Arc<ServerConfig>>,
}

impl LocalTls {
    pub(crate) fn new(acceptor: Arc<TlsAcceptor>) -> Self {
        let (generation, config) = acceptor.snapshot();
        LocalTls {
            acceptor,
            generation: Cell::new(generation),
            config: RefCell::new(config),
        }
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.acceptor.handshake_timeout
    }

    /// The config for a new connection: the cached one unless a reload
    /// happened since it was cached.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        if self.acceptor.generation.load(Ordering::Acquire) != self.generation.get() {
            let (generation, config) = self.acceptor.snapshot();
            self.generation.set(generation);
            *self.config.borrow_mut() = config;
        }
        Arc::clone(&self.config.borrow())
    }
}

/// One TLS connection over a TCP stream: the server side of a client
/// connection (`ServerConnection`), or, for upstream TLS, the client side
/// (`ClientConnection`).
pub struct TlsStream<C = ServerConnection> {
    pub(crate) tcp: TcpStream,
    /// Reads wait on the shard's epoll instance instead of glommio's ring
    /// (`readiness = "epoll"`); `None` for upstream TLS and `"io_uring"`.
    watch: Option<Watch>,
    conn: C,
    /// The TCP peer sent FIN.
    eof: bool,
    close_notify_queued: bool,
    /// A server connection's first bytes are still to be looked at: a
    /// client speaking plain HTTP to the TLS port gets a readable 400
    /// instead of a TLS alert it cannot show.
    sniff_plain: bool,
    /// The first bytes were a plain HTTP request, not a TLS record.
    plain_http: bool,
    /// A close without `close_notify` reads as an error, not as EOF: set
    /// for upstream connections, where a close-delimited response body is
    /// complete only with the alert (RFC 9112 §9.8); a client's request is
    /// framed by HTTP, so the listener side reads it as a plain EOF.
    strict_eof: bool,
    /// A write failed (the peer stopped reading, or reset): reads no
    /// longer try to flush what rustls queued first, so an answer the
    /// peer sent before it stopped can still be read.
    write_failed: bool,
}

/// How many first bytes decide "plain HTTP": a TLS record starts with its
/// content type (22 for a handshake), an HTTP request with a method token.
const SNIFF_BYTES: usize = 5;

/// `io::Read` over a glommio stream for rustls: `Pending` becomes
/// `WouldBlock` (glommio, or the shard's epoll watch, has registered the
/// waker by then).
struct ReadAdapter<'a, 'b> {
    tcp: &'a mut TcpStream,
    watch: Option<&'a Watch>,
    cx: &'a mut Context<'b>,
}

impl Read for ReadAdapter<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let polled = match self.watch {
            Some(w) => w.poll_recv(self.cx, buf),
            None => Pin::new(&mut *self.tcp).poll_read(self.cx, buf),
        };
        match polled {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

struct WriteAdapter<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for WriteAdapter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream<ServerConnection> {
    pub(crate) fn new(
        tcp: TcpStream,
        watch: Option<Watch>,
        config: Arc<ServerConfig>,
    ) -> io::Result<Self> {
        let conn = ServerConnection::new(config).map_err(tls_error)?;
        let mut s = TlsStream::wrap(tcp, conn);
        s.watch = watch;
        s.sniff_plain = true;
        Ok(s)
    }

    /// The handshake failed because the client sent plain HTTP.
    pub(crate) fn sent_plain_http(&self) -> bool {
        self.plain_http
    }
}

impl TlsStream<ClientConnection> {
    /// The client side of a TLS connection over `tcp` (upstream TLS); run
    /// [`TlsStream::handshake`] before use.
    pub fn client(tcp: TcpStream, conn: ClientConnection) -> Self {
        let mut s = TlsStream::wrap(tcp, conn);
        s.strict_eof = true;
        s
    }

    /// Whether this connection can carry another request: no plaintext
    /// rustls holds unread (bytes nobody asked for, which would answer the
    /// next request), no `close_notify` from the upstream, no FIN, no
    /// failed write. A socket peek cannot see the first two: rustls may
    /// already have read them along with the response.
    pub fn is_reusable(&mut self) -> bool {
        if self.eof || self.write_failed || self.close_notify_queued {
            return false;
        }
        match self.conn.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed(),
            Err(_) => false,
        }
    }

    /// Reads wait on `watch` (the shard's epoll instance) instead of
    /// glommio's ring.
    pub fn with_watch(mut self, watch: Option<Watch>) -> Self {
        self.watch = watch;
        self
    }
}

impl<C, D> TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
{
    fn wrap(tcp: TcpStream, conn: C) -> Self {
        TlsStream {
            tcp,
            watch: None,
            conn,
            eof: false,
            close_notify_queued: false,
            sniff_plain: false,
            plain_http: false,
            strict_eof: false,
            write_failed: false,
        }
    }

    pub fn connection(&self) -> &C {
        &self.conn
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Completes the handshake (no deadline: the caller bounds it).
    pub async fn handshake(&mut self) -> io::Result<()> {
        let _ring = crate::readiness::RingWrite::begin();
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    /// Writes every queued TLS record to the socket.
    pub(crate) fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut w = WriteAdapter {
                tcp: &mut self.tcp,
                cx,
            };
            match self.conn.write_tls(&mut w) {
                Ok(0) => {
                    self.write_failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => {
                    self.write_failed = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads records from the socket and processes them. `Ok(false)` when
    /// the socket is at EOF.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut r = ReadAdapter {
            tcp: &mut self.tcp,
            watch: self.watch.as_ref(),
            cx,
        };
        let read = if self.sniff_plain {
            // The first bytes go through a small buffer of our own, so they
            // can be looked at before rustls answers them with an alert.
            let mut first = [0u8; SNIFF_BYTES];
            match r.read(&mut first) {
                Ok(n) => {
                    self.sniff_plain = false;
                    if first[..n].first().is_some_and(u8::is_ascii_uppercase) {
                        self.plain_http = true;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "plain HTTP sent to the TLS port",
                        )));
                    }
                    self.conn.read_tls(&mut &first[..n])
                }
                Err(e) => Err(e),
            }
        } else {
            self.conn.read_tls(&mut r)
        };
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n == 0 {
            self.eof = true;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert saying why; try to send it.
            let _ = self.poll_flush_tls(cx);
            return Poll::Ready(Err(tls_error(e)));
        }
        Poll::Ready(Ok(n > 0))
    }

    /// Drives the handshake to its end (including the server's final
    /// flight and TLS 1.3 session tickets).
    pub(crate) fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match self.poll_read_tls(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection during the TLS handshake",
                    )))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads decrypted bytes. A peer that closes without `close_notify`
    /// reads as a plain EOF: HTTP/1.1 framing, not the TLS close, tells
    /// whether a request was complete.
    pub(crate) fn poll_read_plain(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(self.unclean_eof());
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.eof {
                return Poll::Ready(self.unclean_eof());
            }
            // Anything rustls wants to say first (an alert, a key update
            // reply) goes out; if the socket is full it goes with the next
            // write. A failed flush does not stop the read: the peer may
            // have answered before it stopped reading (an upstream that
            // refuses an upload).
            if self.conn.wants_write() && !self.write_failed {
                // A failure marks `write_failed` (in `poll_flush_tls`).
                let _ = self.poll_flush_tls(cx);
            }
            match self.poll_read_tls(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The peer closed without `close_notify`: EOF on the listener side,
    /// an error for upstream connections (`strict_eof`).
    fn unclean_eof(&self) -> io::Result<usize> {
        if self.strict_eof {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without a TLS close_notify",
            ))
        } else {
            Ok(0)
        }
    }

    /// Encrypts and writes `buf` whole.
    pub(crate) fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut &[u8],
    ) -> Poll<io::Result<()>> {
        loop {
            match self.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // rustls bounds what it buffers (64 KiB by default): this takes
            // a part of a large body, which the flush above then sends.
            let n = self.conn.writer().write(buf)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *buf = &buf[n..];
        }
    }

    /// Sends `close_notify`.
    pub(crate) fn poll_close_notify(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_notify_queued {
            self.close_notify_queued = true;
            self.conn.send_close_notify();
        }
        self.poll_flush_tls(cx)
    }
}

/// What the client proved with its certificate, if it sent one: the
/// subject's common name, else the first subject alternative name (DNS
/// name, e-mail address or URI). `None` without a client certificate or
/// when the certificate names nothing usable.
pub fn client_identity(conn: &ServerConnection) -> Option<String> {
    let der = conn.peer_certificates()?.first()?;
    certificate_identity(der.as_ref())
}

/// The identity [`client_identity`] derives from one DER certificate.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .find_map(directory_string)
        .filter(|s| !s.is_empty())
    {
        return Some(cn);
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
            Some((*s).to_string())
        }
        _ => None,
    })
}

/// An attribute's text in any of X.520's DirectoryString encodings:
/// UTF8String, PrintableString, IA5String and NumericString as they are;
/// BMPString (UTF-16BE) and UniversalString (UTF-32BE) decoded; a
/// TeletexString read as Latin-1 (what it holds in practice). `None` for
/// other types or bytes that do not decode.
fn directory_string(attr: &x509_parser::x509::AttributeTypeAndValue<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    if let Ok(s) = attr.as_str() {
        return Some(s.to_string());
    }
    let value = attr.attr_value();
    let data: &[u8] = value.data;
    match value.tag() {
        Tag::BmpString if data.len() % 2 == 0 => {
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString if data.len() % 4 == 0 => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Tag::TeletexString | Tag::VisibleString => {
            Some(data.iter().map(|&b| char::from(b)).collect())
        }
        _ => None,
    }
}

/// A certificate's validity period (RFC 5280 §4.1.2.5), in seconds since
/// the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// The validity period of one DER certificate; `None` when it does not
/// parse (the expiry gauge then leaves that certificate out rather than
/// report a wrong date).
pub fn certificate_validity(der: &[u8]) -> Option<Validity> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    Some(Validity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// The DNS names a certificate is valid for (its subject alternative
/// names; the common name when it has none), lower-cased.
pub fn certificate_dns_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(s) => Some(s.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

impl<C, D> AsyncRead for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>> + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_plain(cx, buf)
    }
}

impl<C, D> AsyncWrite for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<D>> + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let n = this.conn.writer().write(buf)?;
        // Start sending at once; what does not fit goes with the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_close_notify(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_close(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::certificate_validity;
    use rcgen::{CertificateParams, KeyPair};

    fn cert_with(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn validity_reads_utc_and_generalized_times() {
        // 2001-01-01 and 2002-01-01 (UTCTime); 2051-06-30 (GeneralizedTime,
        // RFC 5280 requires it from 2050 on).
        let v = certificate_validity(&cert_with((2001, 1, 1), (2002, 1, 1))).expect("parsed");
        assert_eq!(v.not_before, 978_307_200);
        assert_eq!(v.not_after, 1_009_843_200);
        let v = certificate_validity(&cert_with((1999, 12, 31), (2051, 6, 30))).expect("parsed");
        assert_eq!(v.not_before, 946_598_400);
        assert_eq!(v.not_after, 2_571_696_000);
    }

    #[test]
    fn validity_of_truncated_or_foreign_input_is_none() {
        let der = cert_with((2001, 1, 1), (2002, 1, 1));
        for cut in [0, 1, 10, 100, der.len() / 2] {
            assert_eq!(certificate_validity(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(certificate_validity(b"not a certificate"), None);
        assert_eq!(
            certificate_validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
