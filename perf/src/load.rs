//! The closed-loop keep-alive load generator.
//!
//! Each thread (optionally pinned to a CPU) owns its share of the connections and
//! drives them with one level-triggered epoll loop over non-blocking std
//! `TcpStream`s. A connection sends a batch of `pipeline` requests in one write,
//! waits for all of their responses, records each response's latency as "now minus
//! the moment the batch was written", and sends the next batch: a closed loop, so
//! the offered rate follows the server (the open-loop, coordinated-omission
//! corrected mode comes with the harness's own issue).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::args::Target;
use crate::procfs;
use crate::response::{ResponseMeta, ResponseReader};
use crate::sys::{self, Epoll, Interest};

/// Lowest latency the histograms track: 1 ns, their unit.
const HISTOGRAM_LOW_NS: u64 = 1;
/// Highest latency tracked; slower responses are recorded as this value.
const HISTOGRAM_HIGH_NS: u64 = 60_000_000_000;
/// Significant decimal digits kept by the histogram (0.1% value resolution).
const HISTOGRAM_SIGFIGS: u8 = 3;
/// How long a failed connect waits before it is tried again, so a dead server
/// does not turn the load generator into a connect storm.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Bound on one connect: loopback answers at once unless the backlog is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Ready descriptors taken from the kernel per epoll_wait.
const EPOLL_EVENTS_PER_WAIT: usize = 256;

/// What `load` was asked to do.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    pub connections: usize,
    pub duration: Duration,
    pub threads: usize,
    /// CPUs the threads are pinned to, round robin; `None` leaves them unpinned.
    pub cpus: Option<Vec<usize>>,
    /// Requests written back to back on a connection before waiting for responses.
    pub pipeline: usize,
    /// Process whose CPU time is sampled around the run (the server under test).
    pub server_pid: Option<u32>,
}

/// Counters one thread keeps; summed across threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Complete responses received (any status).
    pub responses: u64,
    pub non_2xx: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    /// Responses that could not be parsed, or responses nobody asked for.
    pub protocol_errors: u64,
    /// The server closed a connection that still had requests outstanding.
    pub closed_errors: u64,
    /// Connections reopened after the server answered with `Connection: close`.
    pub reconnects: u64,
}

impl Counts {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.io_errors + self.protocol_errors + self.closed_errors
    }

    fn add(&mut self, o: &Counts) {
        self.responses += o.responses;
        self.non_2xx += o.non_2xx;
        self.connect_errors += o.connect_errors;
        self.io_errors += o.io_errors;
        self.protocol_errors += o.protocol_errors;
        self.closed_errors += o.closed_errors;
        self.reconnects += o.reconnects;
    }
}

/// The merged result of a run.
#[derive(Debug)]
pub struct LoadReport {
    pub counts: Counts,
    /// Time from the start signal until the last thread stopped.
    pub elapsed: Duration,
    /// Latency of every response, in nanoseconds, merged across threads.
    pub latency_ns: Histogram<u64>,
    /// CPU time the server used during the run, when `server_pid` was given.
    pub server_cpu: Option<Duration>,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.counts.responses as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Renders one request as sent on the wire.
pub fn request_bytes(target: &Target) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        target.path, target.authority
    )
    .into_bytes()
}

/// Runs the load and returns the merged report.
pub fn run(cfg: &LoadConfig) -> Result<LoadReport, String> {
    if cfg.threads == 0 || cfg.pipeline == 0 {
        return Err("--threads and --pipeline must be at least 1".into());
    }
    if cfg.connections < cfg.threads {
        return Err(format!(
            "--connections {} is fewer than --threads {}: every thread needs a connection",
            cfg.connections, cfg.threads
        ));
    }
    if cfg.cpus.as_ref().is_some_and(Vec::is_empty) {
        return Err("--cpus names no CPU".into());
    }
    // Fail fast, with the reason, when nothing listens there.
    TcpStream::connect_timeout(&cfg.target.addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.target.addr))?;

    let batch = request_bytes(&cfg.target).repeat(cfg.pipeline);
    let barrier = Barrier::new(cfg.threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cfg.threads)
            .map(|i| {
                let share =
                    cfg.connections / cfg.threads + usize::from(i < cfg.connections % cfg.threads);
                let cpu = cfg.cpus.as_ref().map(|c| c[i % c.len()]);
                let (batch, barrier) = (&batch, &barrier);
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn_scoped(scope, move || worker(cfg, cpu, share, batch, barrier))
                    .map_err(|e| format!("cannot start load thread: {e}"))
            })
            .collect();
        // Every spawned thread waits on the barrier, so it must be released even
        // when a later spawn failed.
        let spawned = handles.iter().filter(|h| h.is_ok()).count();
        if spawned < cfg.threads {
            return Err(format!(
                "started only {spawned} of {} load threads",
                cfg.threads
            ));
        }
        barrier.wait();
        let cpu_before = cfg.server_pid.map(procfs::cpu_time).transpose()?;
        let start = Instant::now();

        let mut counts = Counts::default();
        let mut merged = new_histogram();
        let mut first_error = None;
        for handle in handles.into_iter().flatten() {
            match handle.join() {
                Ok(Ok((c, h))) => {
                    counts.add(&c);
                    merged
                        .add(&h)
                        .map_err(|e| format!("merging histograms: {e:?}"))?;
                }
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => first_error = first_error.or(Some("a load thread panicked".into())),
            }
        }
        let elapsed = start.elapsed();
        if let Some(e) = first_error {
            return Err(e);
        }
        let server_cpu = match (cfg.server_pid, cpu_before) {
            (Some(pid), Some(before)) => Some(procfs::cpu_time(pid)?.saturating_sub(before)),
            _ => None,
        };
        Ok(LoadReport {
            counts,
            elapsed,
            latency_ns: merged,
            server_cpu,
        })
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HISTOGRAM_LOW_NS, HISTOGRAM_HIGH_NS, HISTOGRAM_SIGFIGS)
        .expect("histogram bounds are constants known to be valid")
}

type WorkerResult = Result<(Counts, Histogram<u64>), String>;

fn worker(
    cfg: &LoadConfig,
    cpu: Option<usize>,
    connections: usize,
    batch: &[u8],
    barrier: &Barrier,
) -> WorkerResult {
    // Set-up errors are kept until after the barrier: returning early would leave
    // the other threads waiting on it forever.
    let setup = set_up(cfg, cpu, connections, batch);
    barrier.wait();
    let mut w = setup?;
    let deadline = Instant::now() + cfg.duration;
    w.run(deadline)?;
    Ok((w.counts, w.latency_ns))
}

/// Pins the thread and opens its connections (not yet sending).
fn set_up<'a>(
    cfg: &LoadConfig,
    cpu: Option<usize>,
    connections: usize,
    batch: &'a [u8],
) -> Result<Worker<'a>, String> {
    if let Some(cpu) = cpu {
        sys::pin_current_thread(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
    }
    let epoll = Epoll::new(EPOLL_EVENTS_PER_WAIT).map_err(|e| format!("epoll: {e}"))?;
    let mut w = Worker {
        addr: cfg.target.addr,
        pipeline: cfg.pipeline,
        batch,
        epoll,
        slots: Vec::with_capacity(connections),
        counts: Counts::default(),
        latency_ns: new_histogram(),
    };
    let now = Instant::now();
    for token in 0..connections {
        let slot = w.connect(token, now);
        w.slots.push(slot);
    }
    Ok(w)
}

struct Conn {
    stream: TcpStream,
    reader: ResponseReader,
    /// Bytes of the current batch already written.
    written: usize,
    /// Requests of the current batch still waiting for their response.
    outstanding: usize,
    /// When the current batch was handed to the kernel.
    sent_at: Instant,
    interest: Interest,
}

enum Slot {
    Live(Box<Conn>),
    /// Waiting to reconnect after a failed connect (see [`RECONNECT_BACKOFF`]).
    Down {
        retry_at: Instant,
    },
    /// Not yet started (before the start signal).
    Idle(Box<Conn>),
}

enum Failure {
    Io,
    Protocol,
    Closed,
}

struct Worker<'a> {
    addr: SocketAddr,
    pipeline: usize,
    batch: &'a [u8],
    epoll: Epoll,
    slots: Vec<Slot>,
    counts: Counts,
    latency_ns: Histogram<u64>,
}

impl Worker<'_> {
    /// Opens connection `token`; a failure is counted and retried later.
    fn connect(&mut self, token: usize, now: Instant) -> Slot {
        match self.open(token) {
            Ok(conn) => Slot::Idle(Box::new(conn)),
            Err(_) => {
                self.counts.connect_errors += 1;
                Slot::Down {
                    retry_at: now + RECONNECT_BACKOFF,
                }
            }
        }
    }

    fn open(&self, token: usize) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)?;
        // Batches go out in one write; Nagle would only delay a partial one.
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        self.epoll.add(&stream, token as u64, Interest::Read)?;
        Ok(Conn {
            stream,
            reader: ResponseReader::new(),
            written: 0,
            outstanding: 0,
            sent_at: Instant::now(),
            interest: Interest::Read,
        })
    }

    fn run(&mut self, deadline: Instant) -> Result<(), String> {
        for token in 0..self.slots.len() {
            self.start_if_idle(token);
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let mut wake = deadline;
            for token in 0..self.slots.len() {
                if let Slot::Down { retry_at } = self.slots[token] {
                    if retry_at <= now {
                        self.slots[token] = self.connect(token, now);
                        self.start_if_idle(token);
                    } else {
                        wake = wake.min(retry_at);
                    }
                }
            }
            // Round up so the loop does not spin on a sub-millisecond remainder.
            let timeout_ms = i32::try_from(wake.saturating_duration_since(now).as_millis() + 1)
                .unwrap_or(i32::MAX);
            let ready = self
                .epoll
                .wait(timeout_ms)
                .map_err(|e| format!("epoll_wait: {e}"))?;
            for i in 0..ready {
                let ev = self.epoll.event(i);
                let token = ev.token as usize;
                if ev.writable {
                    self.on_writable(token);
                }
                if ev.readable || ev.closed {
                    self.on_readable(token, deadline);
                }
            }
        }
    }

    fn start_if_idle(&mut self, token: usize) {
        if let Slot::Idle(_) = self.slots[token] {
            let slot = std::mem::replace(
                &mut self.slots[token],
                Slot::Down {
                    retry_at: Instant::now(),
                },
            );
            if let Slot::Idle(conn) = slot {
                self.slots[token] = Slot::Live(conn);
                self.send_batch(token);
            }
        }
    }

    fn send_batch(&mut self, token: usize) {
        if let Slot::Live(conn) = &mut self.slots[token] {
            conn.written = 0;
            conn.outstanding = self.pipeline;
            conn.sent_at = Instant::now();
        }
        self.on_writable(token);
    }

    fn on_writable(&mut self, token: usize) {
        let Slot::Live(conn) = &mut self.slots[token] else {
            return;
        };
        let result = write_pending(conn, self.batch, &self.epoll, token);
        if result.is_err() {
            self.fail(token, Failure::Io);
        }
    }

    fn on_readable(&mut self, token: usize, deadline: Instant) {
        let Slot::Live(conn) = &mut self.slots[token] else {
            return;
        };
        // One read per readiness event: level-triggered epoll reports the rest.
        match conn.reader.read_from(&mut conn.stream) {
            // The server may close a connection with nothing outstanding (only after
            // the deadline, or on its idle timeout): not an error, just reopen it.
            Ok(0) if conn.outstanding == 0 => {
                self.slots[token] = self.connect(token, Instant::now());
                return self.start_if_idle(token);
            }
            Ok(0) => return self.fail(token, Failure::Closed),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(_) => return self.fail(token, Failure::Io),
        }
        let now = Instant::now();
        let latency_ns =
            u64::try_from(now.duration_since(conn.sent_at).as_nanos()).unwrap_or(u64::MAX);
        let mut close = false;
        loop {
            let meta = match conn.reader.next_response() {
                Ok(Some(meta)) => meta,
                Ok(None) => break,
                Err(_) => return self.fail(token, Failure::Protocol),
            };
            if conn.outstanding == 0 {
                // A response nobody asked for: the stream is out of step.
                return self.fail(token, Failure::Protocol);
            }
            conn.outstanding -= 1;
            record(&mut self.counts, &mut self.latency_ns, meta, latency_ns);
            if meta.close {
                close = true;
                break;
            }
        }
        if close {
            if conn.outstanding > 0 {
                return self.fail(token, Failure::Closed);
            }
            self.counts.reconnects += 1;
            self.slots[token] = self.connect(token, now);
            self.start_if_idle(token);
        } else if conn.outstanding == 0 && now < deadline {
            self.send_batch(token);
        }
    }

    /// Counts the failure, drops the connection (closing the fd also removes it from
    /// epoll) and opens a fresh one in its place.
    fn fail(&mut self, token: usize, why: Failure) {
        match why {
            Failure::Io => self.counts.io_errors += 1,
            Failure::Protocol => self.counts.protocol_errors += 1,
            Failure::Closed => self.counts.closed_errors += 1,
        }
        let now = Instant::now();
        // Drop the old connection first so its descriptor is closed (and gone from
        // epoll) before the new one is opened.
        self.slots[token] = Slot::Down { retry_at: now };
        self.slots[token] = self.connect(token, now);
        self.start_if_idle(token);
    }
}

fn record(counts: &mut Counts, hist: &mut Histogram<u64>, meta: ResponseMeta, latency_ns: u64) {
    counts.responses += 1;
    if !(200..300).contains(&meta.status) {
        counts.non_2xx += 1;
    }
    hist.saturating_record(latency_ns.max(HISTOGRAM_LOW_NS));
}

/// Writes what is left of the batch; asks epoll for writability only while the
/// socket buffer is full, so a normal round trip costs no epoll_ctl.
fn write_pending(conn: &mut Conn, batch: &[u8], epoll: &Epoll, token: usize) -> io::Result<()> {
    while conn.written < batch.len() {
        match conn.stream.write(&batch[conn.written..]) {
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
    if conn.interest != Interest::Read {
        epoll.modify(&conn.stream, token as u64, Interest::Read)?;
        conn.interest = Interest::Read;
    }
    Ok(())
}

/// Formats a latency in nanoseconds with a unit that keeps 3-4 significant digits.
pub fn format_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

/// The human-readable report printed by `shardline-perf load`.
pub fn format_report(cfg: &LoadConfig, r: &LoadReport) -> String {
    let c = &r.counts;
    let h = &r.latency_ns;
    let pinned = match &cfg.cpus {
        Some(cpus) => format!(" pinned to CPUs {cpus:?}"),
        None => String::new(),
    };
    let mut out = format!(
        "target      http://{}{} ({})\n\
         setup       {} connections, {} thread(s){pinned}, pipeline {}, {:.2}s\n\
         requests    {} ({:.1} requests/s)\n\
         non-2xx     {}\n\
         errors      {} (connect {}, io {}, protocol {}, closed by server {}); reconnects after Connection: close {}\n",
        cfg.target.authority,
        cfg.target.path,
        cfg.target.addr,
        cfg.connections,
        cfg.threads,
        cfg.pipeline,
        r.elapsed.as_secs_f64(),
        c.responses,
        r.requests_per_second(),
        c.non_2xx,
        c.errors(),
        c.connect_errors,
        c.io_errors,
        c.protocol_errors,
        c.closed_errors,
        c.reconnects,
    );
    if h.is_empty() {
        out.push_str("latency     no responses\n");
    } else {
        out.push_str(&format!(
            "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            format_ns(h.value_at_quantile(0.50)),
            format_ns(h.value_at_quantile(0.90)),
            format_ns(h.value_at_quantile(0.99)),
            format_ns(h.value_at_quantile(0.999)),
            format_ns(h.max()),
        ));
    }
    if let Some(cpu) = r.server_cpu {
        let per_request_ns = cpu.as_nanos() as f64 / c.responses.max(1) as f64;
        out.push_str(&format!(
            "server cpu  {:.3}s ({} per request)\n",
            cpu.as_secs_f64(),
            format_ns(per_request_ns as u64)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A tiny blocking server for the tests: answers every request head on a
    /// connection with a fixed response, until the client goes away.
    fn spawn_server(response: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut pending = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        let mut out = Vec::new();
                        while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..i + 4);
                            out.extend_from_slice(response);
                        }
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn config(addr: SocketAddr, pipeline: usize) -> LoadConfig {
        LoadConfig {
            target: crate::args::parse_url(&format!("http://{addr}/plaintext")).expect("url"),
            connections: 4,
            duration: Duration::from_millis(300),
            threads: 2,
            cpus: None,
            pipeline,
            server_pid: Some(std::process::id()),
        }
    }

    #[test]
    fn closed_loop_against_a_local_server() {
        let addr = spawn_server(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!");
        for pipeline in [1, 8] {
            let cfg = config(addr, pipeline);
            let report = run(&cfg).expect("run");
            assert!(report.counts.responses > 0);
            assert_eq!(report.counts.errors(), 0, "{report:?}");
            assert_eq!(report.counts.non_2xx, 0);
            assert_eq!(report.latency_ns.len(), report.counts.responses);
            assert!(report.server_cpu.is_some());
            let text = format_report(&cfg, &report);
            assert!(text.contains("requests/s"), "{text}");
        }
    }

    #[test]
    fn counts_non_2xx_and_close() {
        let addr = spawn_server(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let report = run(&config(addr, 1)).expect("run");
        assert!(report.counts.responses > 0);
        assert_eq!(report.counts.non_2xx, report.counts.responses);
        assert!(report.counts.reconnects > 0);
    }

    #[test]
    fn refuses_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert!(run(&config(addr, 1)).is_err());
    }

    #[test]
    fn formats_latencies() {
        assert_eq!(format_ns(850), "850ns");
        assert_eq!(format_ns(45_150), "45.1us");
        assert_eq!(format_ns(12_340_000), "12.34ms");
        assert_eq!(format_ns(1_500_000_000), "1.500s");
    }
}
