//! The connection's byte stream: plain TCP or TLS. The connection loop
//! reads and writes through [`Transport`] and never asks which it is; the
//! plain arm calls glommio's stream directly, so plain HTTP pays one
//! branch for the boundary.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::readiness::{RingWrite, Watch};
use crate::tls::TlsStream;

pub(crate) enum Transport {
    /// A plain socket; with a `Watch` its reads wait on the shard's epoll
    /// instance (`readiness = "epoll"`), without one on glommio's ring.
    Plain(TcpStream, Option<Watch>),
    Tls(Box<TlsStream>),
}

impl Transport {
    /// The socket of a plain (not TLS) connection and its epoll watch, for
    /// `look::recv_after_yields`.
    pub(crate) fn plain_socket(&self) -> Option<(std::os::fd::RawFd, Option<&Watch>)> {
        match self {
            Transport::Plain(s, w) => Some((std::os::fd::AsRawFd::as_raw_fd(s), w.as_ref())),
            Transport::Tls(_) => None,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s, _) => s,
            Transport::Tls(t) => &t.tcp,
        }
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on).map_err(io::Error::from)
    }

    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(t).map_err(io::Error::from)
    }

    #[inline]
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(_, Some(w)) => w.poll_recv(cx, buf),
            Transport::Plain(s, None) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(t) => t.poll_read_plain(cx, buf),
        }
    }

    /// Writes `buf` whole; for TLS, until every record is on the socket.
    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let _ring = RingWrite::begin();
        match self {
            Transport::Plain(s, _) => s.write_all(buf).await,
            Transport::Tls(t) => {
                let mut rest = buf;
                poll_fn(|cx| t.poll_write_all(cx, &mut rest)).await
            }
        }
    }

    /// Ends our sending side (after `close_notify` for TLS) so the client
    /// sees the end of the response stream.
    pub(crate) async fn shutdown_write(&mut self) -> io::Result<()> {
        let _ring = RingWrite::begin();
        if let Transport::Tls(t) = self {
            poll_fn(|cx| t.poll_close_notify(cx)).await?;
        }
        self.tcp()
            .shutdown(std::net::Shutdown::Write)
            .await
            .map_err(io::Error::from)
    }

    /// Writes `buf` on the bare socket, past any TLS session (for the one
    /// answer to a client that did not speak TLS on the TLS port).
    pub(crate) async fn write_plain(&mut self, buf: &[u8]) -> io::Result<()> {
        let _ring = RingWrite::begin();
        match self {
            Transport::Plain(s, _) => s.write_all(buf).await,
            Transport::Tls(t) => t.tcp.write_all(buf).await,
        }
    }

    /// Ends the bare socket after [`Transport::write_plain`]: our side
    /// shuts, and what the client still sends is read and dropped (at most
    /// `max_bytes`, for at most `max_time`), so that closing does not reset
    /// the connection before the client has read the answer.
    pub(crate) async fn close_plain(&mut self, max_bytes: usize, max_time: Duration) {
        let tcp = match self {
            Transport::Plain(s, _) => s,
            Transport::Tls(t) => &mut t.tcp,
        };
        let _ = tcp.shutdown(std::net::Shutdown::Write).await;
        let deadline = std::time::Instant::now() + max_time;
        let mut sink = [0u8; 4096];
        let mut dropped = 0;
        while dropped < max_bytes {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let read = futures_lite::future::or(
                async { Some(futures_lite::io::AsyncReadExt::read(tcp, &mut sink).await) },
                async {
                    glommio::timer::sleep(left).await;
                    None
                },
            )
            .await;
            match read {
                Some(Ok(n)) if n > 0 => dropped += n,
                _ => break,
            }
        }
    }

    /// Runs the TLS handshake (nothing for plain TCP).
    pub(crate) fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(..) => Poll::Ready(Ok(())),
            Transport::Tls(t) => t.poll_handshake(cx),
        }
    }

    pub(crate) fn tls(&self) -> Option<&TlsStream> {
        match self {
            Transport::Plain(..) => None,
            Transport::Tls(t) => Some(t),
        }
    }
}
