//! The idle-connection memory benchmark: how much resident memory the server
//! spends per keep-alive connection that has been served once and now waits.
//!
//! Measures the server's VmRSS, opens the connections in windows (each one sends a
//! request and every response of the window is read before the next window
//! starts), lets the server settle, checks every connection is still open,
//! measures VmRSS again, closes them all and measures once more.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::args::Target;
use crate::load::request_bytes;
use crate::procfs;
use crate::response::{ResponseMeta, ResponseReader};
use crate::sys;

/// Descriptors this process needs besides the connections (stdio, /proc reads,
/// the allocator's and the runtime's own): the margin kept under RLIMIT_NOFILE.
const FD_RESERVE: u64 = 64;
/// Connections opened (and answered) per window. Small enough that the server's
/// accept backlog (often 128 to 4096) never overflows, which would stall connects
/// on SYN retransmits (1 s, then doubling) and distort nothing but the run time.
const CONNECT_WINDOW: usize = 128;
/// Bound on one connect: loopback answers at once unless the backlog is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for one response: a server this slow to answer one small
/// request has a problem worth stopping for.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `idle` was asked to do.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    pub target: Target,
    pub connections: usize,
    /// The server process whose memory is measured.
    pub pid: u32,
    /// Pause after the last response, before measuring, so that work the server
    /// does after writing a response (buffer release, deferred frees) has happened.
    pub settle: Duration,
}

/// The result of one idle run.
#[derive(Clone, Debug)]
pub struct IdleReport {
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_after_close_kib: u64,
    /// Responses with a status outside 2xx (the connection still counts if kept open).
    pub non_2xx: usize,
    /// Connections the server had closed (or announced it would close) by the time
    /// of the measurement: they are not idle, so the per-connection figure is off.
    pub closed_by_server: usize,
    /// How long opening and serving every connection took.
    pub open_time: Duration,
}

impl IdleReport {
    /// Resident bytes added per idle connection (negative if RSS fell).
    pub fn bytes_per_connection(&self) -> i64 {
        let delta_kib = self.rss_idle_kib as i64 - self.rss_before_kib as i64;
        delta_kib * 1024 / self.connections.max(1) as i64
    }
}

/// Raises this process's open-files limit and checks that `connections` fit.
fn ensure_file_limit(connections: usize, pid: u32) -> Result<(), String> {
    let limit = sys::raise_nofile_limit().map_err(|e| format!("setrlimit(RLIMIT_NOFILE): {e}"))?;
    let needed = connections as u64 + FD_RESERVE;
    if limit.soft < needed {
        return Err(format!(
            "{connections} connections need about {needed} open files, but this process may \
             open at most {} (soft limit raised to the hard limit, {}). Raise the hard limit \
             first, e.g. `ulimit -n {needed}` as root in the shell that starts both the server \
             and shardline-perf (or `prlimit --nofile={needed} --pid PID`), or ask for fewer \
             connections.",
            limit.soft, limit.hard
        ));
    }
    if let Some(server_limit) = procfs::max_open_files(pid) {
        if server_limit < needed {
            eprintln!(
                "shardline-perf: warning: server PID {pid} may open only {server_limit} files; \
                 it cannot hold {connections} connections (raise `ulimit -n` before starting it)"
            );
        }
    }
    Ok(())
}

/// Explains a connect failure in terms of the limits that usually cause it.
fn connect_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => " (out of file descriptors: raise `ulimit -n`)",
        Some(libc::EADDRNOTAVAIL) => {
            " (out of local ports: see /proc/sys/net/ipv4/ip_local_port_range)"
        }
        Some(libc::ECONNREFUSED) => " (is the server listening? did its accept backlog overflow?)",
        Some(libc::ETIMEDOUT) | Some(libc::EINPROGRESS) => {
            " (connect timed out: the server is not accepting fast enough)"
        }
        _ => "",
    }
}

/// Reads exactly one response from a blocking stream.
fn read_one(stream: &mut TcpStream, reader: &mut ResponseReader) -> Result<ResponseMeta, String> {
    reader.reset();
    loop {
        match reader.read_from(stream) {
            Ok(0) => return Err("the server closed the connection before answering".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no response within {}s",
                    RESPONSE_TIMEOUT.as_secs()
                ))
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        }
        if let Some(meta) = reader.next_response().map_err(|e| e.to_string())? {
            if reader.buffered() > 0 {
                return Err("the server sent bytes after the response to a single request".into());
            }
            return Ok(meta);
        }
    }
}

/// True when the server has closed (or reset) the connection.
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    match stream.peek(&mut probe) {
        // Nothing to read and still open: idle, as it should be.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        // 0 = orderly close; data = something unsolicited; error = reset.
        _ => true,
    }
}

/// Runs the benchmark. The connections are closed before it returns.
pub fn run(cfg: &IdleConfig) -> Result<IdleReport, String> {
    if cfg.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    ensure_file_limit(cfg.connections, cfg.pid)?;
    let request = request_bytes(&cfg.target);
    let addr = cfg.target.addr;

    let rss_before_kib = procfs::vm_rss_kib(cfg.pid)?;
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = Vec::with_capacity(cfg.connections);
    let mut reader = ResponseReader::new();
    let mut non_2xx = 0;
    let mut closed_by_server = 0;
    while streams.len() < cfg.connections {
        let window_start = streams.len();
        let window_end = (window_start + CONNECT_WINDOW).min(cfg.connections);
        for i in window_start..window_end {
            let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
                format!(
                    "connection {} of {} to {addr} failed: {e}{}",
                    i + 1,
                    cfg.connections,
                    connect_hint(&e)
                )
            })?;
            stream
                .set_read_timeout(Some(RESPONSE_TIMEOUT))
                .and_then(|()| stream.write_all(&request))
                .map_err(|e| format!("sending on connection {}: {e}", i + 1))?;
            streams.push(stream);
        }
        for (i, stream) in streams[window_start..].iter_mut().enumerate() {
            let meta = read_one(stream, &mut reader)
                .map_err(|e| format!("connection {}: {e}", window_start + i + 1))?;
            non_2xx += usize::from(!(200..300).contains(&meta.status));
            closed_by_server += usize::from(meta.close);
        }
    }
    let open_time = started.elapsed();

    std::thread::sleep(cfg.settle);
    // Count connections the server closed while we waited (an idle timeout that is
    // too short, a connection limit): they would make the figure per connection wrong.
    closed_by_server += streams.iter().filter(|s| closed_by_peer(s)).count();
    let rss_idle_kib = procfs::vm_rss_kib(cfg.pid)?;

    drop(streams);
    std::thread::sleep(cfg.settle);
    let rss_after_close_kib = procfs::vm_rss_kib(cfg.pid)?;

    Ok(IdleReport {
        connections: cfg.connections,
        rss_before_kib,
        rss_idle_kib,
        rss_after_close_kib,
        non_2xx,
        closed_by_server,
        open_time,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The human-readable report printed by `shardline-perf idle`.
pub fn format_report(cfg: &IdleConfig, r: &IdleReport) -> String {
    let mut out = format!(
        "server          PID {} at {}\n\
         connections     {} keep-alive, each answered once (GET {}) in {:.2}s; non-2xx {}, closed by server {}\n\
         VmRSS before    {:.1} MiB ({} KiB)\n\
         VmRSS idle      {:.1} MiB ({} KiB) with {} idle connections\n\
         VmRSS closed    {:.1} MiB ({} KiB) after closing them\n\
         per connection  {} bytes ({:.2} KiB) of server RSS per idle keep-alive connection\n",
        cfg.pid,
        cfg.target.addr,
        r.connections,
        cfg.target.path,
        r.open_time.as_secs_f64(),
        r.non_2xx,
        r.closed_by_server,
        mib(r.rss_before_kib),
        r.rss_before_kib,
        mib(r.rss_idle_kib),
        r.rss_idle_kib,
        r.connections,
        mib(r.rss_after_close_kib),
        r.rss_after_close_kib,
        r.bytes_per_connection(),
        r.bytes_per_connection() as f64 / 1024.0,
    );
    if r.closed_by_server > 0 {
        out.push_str(
            "warning         some connections were closed by the server: the figure per \
             connection is not for idle connections only\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A server inside this process: answers one request per connection, then keeps
    /// the connection (and its 16 KiB buffer) until the client closes it.
    fn spawn_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = vec![1u8; 16 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(resp).is_err() {
                        return;
                    }
                    // Wait for the client to close.
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        addr
    }

    #[test]
    fn measures_own_process_as_server() {
        let addr = spawn_server();
        let cfg = IdleConfig {
            target: Target {
                addr,
                authority: addr.to_string(),
                path: "/plaintext".into(),
                tls: false,
                host: addr.ip().to_string(),
            },
            connections: 200,
            pid: std::process::id(),
            settle: Duration::from_millis(50),
        };
        let report = run(&cfg).expect("idle run");
        assert_eq!(report.connections, 200);
        assert_eq!(report.non_2xx, 0);
        assert_eq!(report.closed_by_server, 0);
        assert!(report.rss_idle_kib > 0);
        let text = format_report(&cfg, &report);
        assert!(text.contains("per connection"), "{text}");
    }

    #[test]
    fn too_many_connections_is_explained() {
        let err = ensure_file_limit(usize::MAX / 2, std::process::id()).expect_err("too many");
        assert!(err.contains("ulimit -n"), "{err}");
    }
}
