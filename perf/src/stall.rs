//! `stall-server`: a tiny keep-alive HTTP/1.1 responder that freezes
//! periodically, for validating the coordinated-omission correction.
//!
//! One thread, one level-triggered epoll loop over non-blocking std sockets.
//! `GET /` (and `HEAD /`) get `200 ok`, anything else `404`. Every `every`
//! (counted from start, the first stall one period in) the whole server sleeps
//! for `stall_for`: nothing is read, written or accepted, as in a stop-the-world
//! pause; the kernel queues what arrives meanwhile. It stops by itself after
//! `exit_after`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::sys::{Epoll, Interest};

const LISTENER_TOKEN: u64 = u64::MAX;
const EPOLL_EVENTS_PER_WAIT: usize = 256;
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A request head larger than this closes the connection.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Request bodies (Content-Length) larger than this close the connection.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Connections accepted per readiness event of the listener (a bound per pass).
const ACCEPTS_PER_EVENT: usize = 256;
/// Open connections at most; more are accepted and closed at once.
const MAX_CONNECTIONS: usize = 10_000;
const MAX_REQUEST_HEADERS: usize = 64;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
const OK_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

#[derive(Clone, Debug)]
pub struct StallConfig {
    /// Period of the stalls.
    pub every: Duration,
    /// Length of each stall (shorter than `every`).
    pub stall_for: Duration,
    /// The server exits after this long.
    pub exit_after: Duration,
}

/// What the server did, printed when it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallStats {
    pub requests: u64,
    pub stalls: u64,
    pub connections: u64,
}

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    /// Request body bytes still to skip.
    skip: usize,
    /// Close once `out` is written.
    closing: bool,
    interest: Interest,
}

/// Binds the listener (loopback only, checked by the caller's argument parsing).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    Ok(listener)
}

/// Serves until `exit_after` has passed.
pub fn serve(listener: &TcpListener, cfg: &StallConfig) -> Result<StallStats, String> {
    if cfg.stall_for >= cfg.every {
        return Err("--stall-for must be shorter than --stall-every".into());
    }
    let mut epoll = Epoll::new(EPOLL_EVENTS_PER_WAIT).map_err(|e| format!("epoll: {e}"))?;
    epoll
        .add(listener, LISTENER_TOKEN, Interest::Read)
        .map_err(|e| format!("epoll: {e}"))?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut stats = StallStats::default();
    let start = Instant::now();
    let end = start + cfg.exit_after;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(stats);
        }
        let since = now - start;
        let phase = Duration::from_nanos(
            u64::try_from(since.as_nanos() % cfg.every.as_nanos()).unwrap_or(0),
        );
        if since >= cfg.every && phase < cfg.stall_for {
            std::thread::sleep((cfg.stall_for - phase).min(end - now));
            stats.stalls += 1;
            continue;
        }
        let next_stall = now + (cfg.every - phase);
        let ready = epoll
            .wait_for(next_stall.min(end).saturating_duration_since(now))
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for i in 0..ready {
            let ev = epoll.event(i);
            if ev.token == LISTENER_TOKEN {
                accept_some(listener, &epoll, &mut conns, &mut free, &mut stats);
                continue;
            }
            let token = ev.token as usize;
            let Some(Some(conn)) = conns.get_mut(token) else {
                continue;
            };
            let keep = (!ev.writable || flush(conn, &epoll, token).is_ok())
                && (!(ev.readable || ev.closed) || on_readable(conn, &epoll, token, &mut stats));
            if !keep || (conn.closing && conn.written == conn.out.len()) {
                // Dropping the stream closes it and removes it from epoll.
                conns[token] = None;
                free.push(token);
            }
        }
    }
}

fn accept_some(
    listener: &TcpListener,
    epoll: &Epoll,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
    stats: &mut StallStats,
) {
    for _ in 0..ACCEPTS_PER_EVENT {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => return,
        };
        let live = conns.len() - free.len();
        if live >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let token = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        if epoll.add(&stream, token as u64, Interest::Read).is_err() {
            free.push(token);
            continue;
        }
        stats.connections += 1;
        conns[token] = Some(Conn {
            stream,
            inbuf: Vec::with_capacity(READ_CHUNK_BYTES),
            out: Vec::new(),
            written: 0,
            skip: 0,
            closing: false,
            interest: Interest::Read,
        });
    }
}

/// Reads once, answers every complete request; false: close the connection.
fn on_readable(conn: &mut Conn, epoll: &Epoll, token: usize, stats: &mut StallStats) -> bool {
    if conn.closing {
        return true;
    }
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let n = match conn.stream.read(&mut chunk) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return true
        }
        Err(_) => return false,
    };
    let mut data = &chunk[..n];
    let skipped = conn.skip.min(data.len());
    conn.skip -= skipped;
    data = &data[skipped..];
    conn.inbuf.extend_from_slice(data);
    let mut consumed = 0;
    while conn.skip == 0 && consumed < conn.inbuf.len() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&conn.inbuf[consumed..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => break,
            Err(_) => {
                conn.out.extend_from_slice(BAD_REQUEST);
                conn.closing = true;
                break;
            }
        };
        let mut body = 0usize;
        let mut close = false;
        let mut bad = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) if n <= MAX_BODY_BYTES => body = n,
                    _ => bad = true,
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                bad = true; // chunked request bodies are not needed here
            } else if h.name.eq_ignore_ascii_case("connection") {
                close |= h.value.eq_ignore_ascii_case(b"close");
            }
        }
        if bad {
            conn.out.extend_from_slice(BAD_REQUEST);
            conn.closing = true;
            break;
        }
        let response = match (req.method, req.path) {
            (Some("GET"), Some("/")) => OK,
            (Some("HEAD"), Some("/")) => OK_HEAD,
            _ => NOT_FOUND,
        };
        conn.out.extend_from_slice(response);
        stats.requests += 1;
        consumed += len;
        let in_buffer = body.min(conn.inbuf.len() - consumed);
        consumed += in_buffer;
        conn.skip = body - in_buffer;
        if close {
            conn.closing = true;
            break;
        }
    }
    conn.inbuf.drain(..consumed);
    if conn.closing {
        conn.inbuf.clear();
        conn.skip = 0;
    } else if conn.inbuf.len() > MAX_HEAD_BYTES {
        return false;
    }
    flush(conn, epoll, token).is_ok()
}

/// Writes what is pending; asks for writability only while the socket is full.
fn flush(conn: &mut Conn, epoll: &Epoll, token: usize) -> io::Result<()> {
    while conn.written < conn.out.len() {
        match conn.stream.write(&conn.out[conn.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if conn.interest != Interest::ReadWrite {
                    epoll.modify(&conn.stream, token as u64, Interest::ReadWrite)?;
                    conn.interest = Interest::ReadWrite;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    conn.out.clear();
    conn.written = 0;
    if conn.interest != Interest::Read {
        epoll.modify(&conn.stream, token as u64, Interest::Read)?;
        conn.interest = Interest::Read;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{self, tests::config};
    use crate::request::{parse_scenario, render};

    fn start(every_ms: u64, stall_ms: u64, exit_ms: u64) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cfg = StallConfig {
            every: Duration::from_millis(every_ms),
            stall_for: Duration::from_millis(stall_ms),
            exit_after: Duration::from_millis(exit_ms),
        };
        std::thread::spawn(move || serve(&listener, &cfg));
        addr
    }

    #[test]
    fn answers_pipelined_requests_with_bodies() {
        let addr = start(10_000, 1, 5_000);
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloHEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .expect("write");
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.read_to_end(&mut got).expect("read until close");
        let expected = [OK, NOT_FOUND, OK_HEAD, OK].concat();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
    }

    #[test]
    fn refuses_a_stall_longer_than_its_period() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let cfg = StallConfig {
            every: Duration::from_millis(10),
            stall_for: Duration::from_millis(10),
            exit_after: Duration::from_millis(10),
        };
        assert!(serve(&listener, &cfg).is_err());
    }

    /// The end-to-end check of the correction: a server that freezes 50 ms every
    /// 250 ms, driven at 1,000 requests/s (4 ms apart per connection). Corrected
    /// latencies must show the freeze on ~20% of the requests; a closed-loop run
    /// sees it only on the few requests caught in flight.
    #[test]
    fn open_loop_sees_the_stall_closed_loop_hides_it() {
        let addr = start(250, 50, 10_000);
        let mut cfg = config(addr, 1);
        cfg.connections = 4;
        cfg.threads = 1;
        cfg.server_pid = None;
        cfg.duration = Duration::from_millis(1_500);
        cfg.scenarios = vec![render(
            &parse_scenario("1 GET /", None).expect("spec"),
            "x",
            &[],
        )];
        cfg.rate = Some(1_000);
        let open = load::run(&cfg).expect("open loop run");
        assert_eq!(open.counts.errors(), 0, "{open:?}");
        assert_eq!(open.counts.non_2xx, 0);
        let ms = |ns: u64| ns / 1_000_000;
        // ~20% of the time is stalled, so p90 lands inside a stall's ramp and
        // p99 near its full length.
        assert!(
            ms(open.latency_ns.value_at_quantile(0.99)) >= 35,
            "{open:?}"
        );
        assert!(ms(open.latency_ns.value_at_quantile(0.90)) >= 5, "{open:?}");
        assert!(ms(open.latency_ns.max()) >= 45);

        cfg.rate = None;
        let closed = load::run(&cfg).expect("closed loop run");
        assert_eq!(closed.counts.errors(), 0);
        // Thousands of fast responses per stall, 4 slow ones: p99 stays fast.
        assert!(closed.counts.responses > 5 * open.counts.responses);
        assert!(
            ms(closed.latency_ns.value_at_quantile(0.99)) < 5,
            "{closed:?}"
        );
        assert!(ms(closed.latency_ns.max()) >= 45);
    }
}
