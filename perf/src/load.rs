//! The keep-alive load generator, closed loop or open loop (`--rate`).
//!
//! Each thread (optionally pinned to a CPU) owns its share of the connections and
//! drives them with one level-triggered epoll loop over non-blocking std
//! `TcpStream`s.
//!
//! - Closed loop: a connection sends a batch of `pipeline` requests in one write,
//!   waits for all of their responses, records each response's latency as "now
//!   minus the moment the batch was written", and sends the next batch, so the
//!   offered rate follows the server.
//! - Open loop (`rate`): every connection follows the schedule of
//!   [`crate::schedule`], one request in flight at a time; a request whose time
//!   comes while the previous one is still unanswered goes out as soon as that
//!   answer arrives, and its latency is counted from when it was due (corrected
//!   for coordinated omission). Due times are kept in a min-heap and waited for
//!   with `epoll_pwait2`'s nanosecond timeout and a 1 ns timer slack.
//!
//! A warm-up (`warmup`) runs the same loop first; everything recorded during it
//! is thrown away when it ends. Each request is one of the configured scenarios,
//! picked by weight with a per-thread deterministic PRNG.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::args::Target;
use crate::procfs;
use crate::request::{Picker, Rng, Scenario};
use crate::response::{ResponseMeta, ResponseReader};
use crate::schedule::{Pacer, Schedule};
use crate::sys::{self, Epoll, Interest};
use crate::tls::{self, Received, TlsClient};

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
/// Scenarios one run may mix (their index travels as a u16 per request).
pub const MAX_SCENARIOS: usize = 1_000;

/// What `load` was asked to do.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    /// Set for an `https://` target: every connection handshakes when it
    /// opens (not measured) and then sends and reads records.
    pub tls: Option<TlsClient>,
    pub connections: usize,
    /// The measured part of the run.
    pub duration: Duration,
    /// Run this long first and discard what it recorded (zero: no warm-up).
    pub warmup: Duration,
    pub threads: usize,
    /// CPUs the threads are pinned to, round robin; `None` leaves them unpinned.
    pub cpus: Option<Vec<usize>>,
    /// Requests written back to back on a connection before waiting for responses
    /// (closed loop only).
    pub pipeline: usize,
    /// Open loop: requests per second in total; `None` is the closed loop.
    pub rate: Option<u64>,
    /// What to send; one entry is the plain single-request case.
    pub scenarios: Vec<Scenario>,
    /// Seed of the scenario PRNG (each thread derives its own from it).
    pub seed: u64,
    /// Process whose CPU time is sampled around the run (the server under test).
    pub server_pid: Option<u32>,
    /// Never sleep in epoll: poll with a zero timeout, so sends and reads are not
    /// late by a wake-up (costs the load CPU in full).
    pub busy_poll: bool,
}

/// Counters one thread keeps; summed across threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// Per-scenario results (latency histogram only when there are several).
#[derive(Debug)]
pub struct ScenarioStats {
    pub responses: u64,
    pub non_2xx: u64,
    pub latency_ns: Option<Histogram<u64>>,
}

/// Everything one thread records; merged across threads.
#[derive(Debug)]
struct Stats {
    counts: Counts,
    latency_ns: Histogram<u64>,
    /// Open loop: how late each request went out after it was due.
    send_lag_ns: Histogram<u64>,
    scenarios: Vec<ScenarioStats>,
}

impl Stats {
    fn new(scenarios: usize) -> Self {
        Stats {
            counts: Counts::default(),
            latency_ns: new_histogram(),
            send_lag_ns: new_histogram(),
            scenarios: (0..scenarios)
                .map(|_| ScenarioStats {
                    responses: 0,
                    non_2xx: 0,
                    latency_ns: (scenarios > 1).then(new_histogram),
                })
                .collect(),
        }
    }

    fn reset(&mut self) {
        self.counts = Counts::default();
        self.latency_ns.reset();
        self.send_lag_ns.reset();
        for s in &mut self.scenarios {
            s.responses = 0;
            s.non_2xx = 0;
            if let Some(h) = &mut s.latency_ns {
                h.reset();
            }
        }
    }

    fn record(&mut self, scenario: usize, meta: ResponseMeta, latency_ns: u64) {
        let value = latency_ns.max(HISTOGRAM_LOW_NS);
        let non_2xx = !(200..300).contains(&meta.status);
        self.counts.responses += 1;
        self.counts.non_2xx += u64::from(non_2xx);
        self.latency_ns.saturating_record(value);
        if let Some(s) = self.scenarios.get_mut(scenario) {
            s.responses += 1;
            s.non_2xx += u64::from(non_2xx);
            if let Some(h) = &mut s.latency_ns {
                h.saturating_record(value);
            }
        }
    }

    fn merge(&mut self, o: &Stats) -> Result<(), String> {
        let err = |e| format!("merging histograms: {e:?}");
        self.counts.add(&o.counts);
        self.latency_ns.add(&o.latency_ns).map_err(err)?;
        self.send_lag_ns.add(&o.send_lag_ns).map_err(err)?;
        for (mine, theirs) in self.scenarios.iter_mut().zip(&o.scenarios) {
            mine.responses += theirs.responses;
            mine.non_2xx += theirs.non_2xx;
            if let (Some(a), Some(b)) = (&mut mine.latency_ns, &theirs.latency_ns) {
                a.add(b).map_err(err)?;
            }
        }
        Ok(())
    }
}

/// The merged result of a run.
#[derive(Debug)]
pub struct LoadReport {
    pub counts: Counts,
    /// Length of the measured part of the run (after the warm-up).
    pub elapsed: Duration,
    /// Latency of every response, in nanoseconds, merged across threads. Open
    /// loop: measured from each request's scheduled time.
    pub latency_ns: Histogram<u64>,
    /// Open loop only: how late requests were sent relative to their schedule
    /// (the load generator's own lateness plus waiting behind slow responses).
    pub send_lag_ns: Option<Histogram<u64>>,
    /// Open loop only: requests due before the end that were never sent (the
    /// backlog of connections that had fallen behind).
    pub unsent_at_end: u64,
    /// Indexed like [`LoadConfig::scenarios`].
    pub scenarios: Vec<ScenarioStats>,
    /// CPU time the server used during the measured part, when `server_pid` was given.
    pub server_cpu: Option<Duration>,
    /// `https://` targets: the protocol version and cipher suite the server
    /// chose (in the first handshake; every connection makes the same offer).
    pub tls_session: Option<String>,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.counts.responses as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Renders a plain `GET` of the target, as sent on the wire.
pub fn request_bytes(target: &Target) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        target.path, target.authority
    )
    .into_bytes()
}

/// Checks the configuration before anything is started.
fn validate(cfg: &LoadConfig) -> Result<(), String> {
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
    if cfg.scenarios.is_empty() || cfg.scenarios.len() > MAX_SCENARIOS {
        return Err(format!(
            "between 1 and {MAX_SCENARIOS} scenarios are needed"
        ));
    }
    match cfg.rate {
        Some(0) => return Err("--rate must be at least 1 request/s".into()),
        Some(_) if cfg.pipeline > 1 => {
            return Err(
                "--rate with --pipeline is not supported: the open loop keeps one \
                        request in flight per connection (use more connections)"
                    .into(),
            )
        }
        _ => {}
    }
    Ok(())
}

/// Runs the load and returns the merged report.
pub fn run(cfg: &LoadConfig) -> Result<LoadReport, String> {
    validate(cfg)?;
    // Fail fast, with the reason, when nothing listens there (or, for TLS,
    // when the handshake fails: a wrong --cacert would otherwise only show as
    // a run of connect errors).
    let mut probe = TcpStream::connect_timeout(&cfg.target.addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.target.addr))?;
    let tls_session = match &cfg.tls {
        Some(tls) => {
            let session = tls
                .handshake(&mut probe, CONNECT_TIMEOUT)
                .map_err(|e| format!("TLS handshake with {}: {e}", cfg.target.addr))?;
            Some(tls::describe(&session))
        }
        None => None,
    };
    drop(probe);

    // With one scenario every batch is the same bytes: render it once.
    let batch = (cfg.scenarios.len() == 1).then(|| cfg.scenarios[0].bytes.repeat(cfg.pipeline));
    let barrier = Barrier::new(cfg.threads + 1);
    std::thread::scope(|scope| {
        let mut first_slot = 0;
        let handles: Vec<_> = (0..cfg.threads)
            .map(|i| {
                let share =
                    cfg.connections / cfg.threads + usize::from(i < cfg.connections % cfg.threads);
                let plan = ThreadPlan {
                    index: i,
                    cpu: cfg.cpus.as_ref().map(|c| c[i % c.len()]),
                    first_slot,
                    connections: share,
                };
                first_slot += share;
                let (batch, barrier) = (batch.as_deref(), &barrier);
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn_scoped(scope, move || worker(cfg, plan, batch, barrier))
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
        let measure_from = Instant::now() + cfg.warmup;
        std::thread::sleep(cfg.warmup);
        let cpu_before = cfg.server_pid.map(procfs::cpu_time).transpose()?;

        let mut merged = Stats::new(cfg.scenarios.len());
        let mut unsent_at_end = 0;
        let mut first_error = None;
        for handle in handles.into_iter().flatten() {
            match handle.join() {
                Ok(Ok(done)) => {
                    merged.merge(&done.stats)?;
                    unsent_at_end += done.unsent_at_end;
                }
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => first_error = first_error.or(Some("a load thread panicked".into())),
            }
        }
        let elapsed = measure_from.elapsed();
        if let Some(e) = first_error {
            return Err(e);
        }
        let server_cpu = match (cfg.server_pid, cpu_before) {
            (Some(pid), Some(before)) => Some(procfs::cpu_time(pid)?.saturating_sub(before)),
            _ => None,
        };
        Ok(LoadReport {
            counts: merged.counts,
            elapsed,
            latency_ns: merged.latency_ns,
            send_lag_ns: cfg.rate.map(|_| merged.send_lag_ns),
            unsent_at_end,
            scenarios: merged.scenarios,
            server_cpu,
            tls_session,
        })
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HISTOGRAM_LOW_NS, HISTOGRAM_HIGH_NS, HISTOGRAM_SIGFIGS)
        .expect("histogram bounds are constants known to be valid")
}

/// Which connections a thread drives and where it runs.
#[derive(Clone, Copy, Debug)]
struct ThreadPlan {
    index: usize,
    cpu: Option<usize>,
    /// Index of this thread's first connection among all of them (its schedule phase).
    first_slot: usize,
    connections: usize,
}

struct WorkerDone {
    stats: Stats,
    unsent_at_end: u64,
}

fn worker(
    cfg: &LoadConfig,
    plan: ThreadPlan,
    batch: Option<&[u8]>,
    barrier: &Barrier,
) -> Result<WorkerDone, String> {
    // Set-up errors are kept until after the barrier: returning early would leave
    // the other threads waiting on it forever.
    let setup = set_up(cfg, plan, batch);
    barrier.wait();
    let mut w = setup?;
    let start = Instant::now();
    w.start = start;
    w.measure_from = start + cfg.warmup;
    let deadline = w.measure_from + cfg.duration;
    w.run(deadline)?;
    let end_ns = w.ns_since_start(deadline);
    let unsent_at_end = w.pacers.iter().map(|p| p.unsent_before(end_ns)).sum();
    Ok(WorkerDone {
        stats: w.stats,
        unsent_at_end,
    })
}

/// Pins the thread and opens its connections (not yet sending).
fn set_up<'a>(
    cfg: &'a LoadConfig,
    plan: ThreadPlan,
    batch: Option<&'a [u8]>,
) -> Result<Worker<'a>, String> {
    if let Some(cpu) = plan.cpu {
        sys::pin_current_thread(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
    }
    if cfg.rate.is_some() {
        // Best effort: without it sends may be up to 50 µs late, which is
        // reported as send lag and counted in the latency.
        let _ = sys::set_timer_slack(1);
    }
    let epoll = Epoll::new(EPOLL_EVENTS_PER_WAIT).map_err(|e| format!("epoll: {e}"))?;
    let pacers = match cfg.rate {
        Some(rate) => (0..plan.connections)
            .map(|j| {
                Pacer::new(Schedule::new(
                    (plan.first_slot + j) as u64,
                    cfg.connections as u64,
                    rate,
                ))
            })
            .collect(),
        None => Vec::new(),
    };
    let seed = cfg
        .seed
        .wrapping_add((plan.index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    let now = Instant::now();
    let mut w = Worker {
        addr: cfg.target.addr,
        tls: cfg.tls.as_ref(),
        pipeline: cfg.pipeline,
        open_loop: cfg.rate.is_some(),
        busy_poll: cfg.busy_poll,
        scenarios: &cfg.scenarios,
        batch,
        picker: Picker::new(cfg.scenarios.iter().map(|s| s.weight)),
        rng: Rng::new(seed),
        epoll,
        slots: Vec::with_capacity(plan.connections),
        pacers,
        timers: BinaryHeap::with_capacity(plan.connections),
        retry_pending: false,
        stats: Stats::new(cfg.scenarios.len()),
        start: now,
        measure_from: now,
        measuring: false,
    };
    for token in 0..plan.connections {
        let slot = w.connect(token, now);
        w.slots.push(slot);
    }
    Ok(w)
}

/// Where the bytes of a connection's current write come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutSource {
    /// The prebuilt batch (one scenario).
    Batch,
    /// One scenario's request (several scenarios, one request per write).
    Scenario(usize),
    /// The connection's own buffer (several scenarios, pipelined).
    Own,
}

struct Conn {
    stream: TcpStream,
    /// The TLS session of an `https://` target.
    tls: Option<Box<rustls::ClientConnection>>,
    reader: ResponseReader,
    out_source: OutSource,
    /// Bytes of the current write when they are assembled per connection.
    out: Vec<u8>,
    /// Bytes of the current write already written.
    written: usize,
    /// Scenario of each request still waiting for its response, oldest first.
    in_flight: VecDeque<u16>,
    /// Closed loop: when the current batch was handed to the kernel.
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
    tls: Option<&'a TlsClient>,
    pipeline: usize,
    open_loop: bool,
    busy_poll: bool,
    scenarios: &'a [Scenario],
    /// The whole batch, prebuilt, when there is one scenario.
    batch: Option<&'a [u8]>,
    picker: Picker,
    rng: Rng,
    epoll: Epoll,
    slots: Vec<Slot>,
    /// Open loop: each connection's schedule, by token (kept across reconnects).
    pacers: Vec<Pacer>,
    /// Open loop: (due ns, token) of the connections waiting for their next send.
    /// Entries can go stale (the connection failed meanwhile); they are checked
    /// against the connection's pacer when they come up.
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// Some slot is `Down` and must be retried.
    retry_pending: bool,
    stats: Stats,
    /// Time zero of the open-loop schedule.
    start: Instant,
    /// End of the warm-up: what was recorded before it is thrown away.
    measure_from: Instant,
    measuring: bool,
}

impl Worker<'_> {
    fn ns_since_start(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant_at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    /// Opens connection `token`; a failure is counted and retried later.
    fn connect(&mut self, token: usize, now: Instant) -> Slot {
        match self.open(token) {
            Ok(conn) => Slot::Idle(Box::new(conn)),
            Err(_) => {
                self.stats.counts.connect_errors += 1;
                self.retry_pending = true;
                Slot::Down {
                    retry_at: now + RECONNECT_BACKOFF,
                }
            }
        }
    }

    fn open(&self, token: usize) -> io::Result<Conn> {
        let mut stream = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)?;
        // Batches go out in one write; Nagle would only delay a partial one.
        stream.set_nodelay(true)?;
        let tls = match self.tls {
            Some(client) => Some(Box::new(client.handshake(&mut stream, CONNECT_TIMEOUT)?)),
            None => None,
        };
        stream.set_nonblocking(true)?;
        self.epoll.add(&stream, token as u64, Interest::Read)?;
        Ok(Conn {
            stream,
            tls,
            reader: ResponseReader::new(),
            out_source: OutSource::Own,
            out: Vec::new(),
            written: 0,
            in_flight: VecDeque::with_capacity(self.pipeline),
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
            if !self.measuring && now >= self.measure_from {
                self.stats.reset();
                self.measuring = true;
            }
            let mut wake = deadline;
            if !self.measuring {
                wake = wake.min(self.measure_from);
            }
            if self.retry_pending {
                if let Some(retry_at) = self.retry_down(now) {
                    wake = wake.min(retry_at);
                }
            }
            if self.open_loop {
                if let Some(due) = self.send_due(now) {
                    wake = wake.min(due);
                }
            }
            let timeout = if self.busy_poll {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(Instant::now())
            };
            let ready = self
                .epoll
                .wait_for(timeout)
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

    /// Reconnects the slots whose back-off is over; returns the earliest retry
    /// still pending.
    fn retry_down(&mut self, now: Instant) -> Option<Instant> {
        self.retry_pending = false;
        let mut next = None::<Instant>;
        for token in 0..self.slots.len() {
            if let Slot::Down { retry_at } = self.slots[token] {
                if retry_at <= now {
                    self.slots[token] = self.connect(token, now);
                    self.start_if_idle(token);
                } else {
                    self.retry_pending = true;
                    next = Some(next.map_or(retry_at, |n| n.min(retry_at)));
                }
            }
        }
        // A connect that failed just now set `retry_pending` and its retry time.
        if self.retry_pending && next.is_none() {
            next = Some(now + RECONNECT_BACKOFF);
        }
        next
    }

    /// Open loop: sends every request whose time has come; returns when the next
    /// one is due.
    fn send_due(&mut self, now: Instant) -> Option<Instant> {
        let now_ns = self.ns_since_start(now);
        while let Some(&Reverse((due, token))) = self.timers.peek() {
            if due > now_ns {
                return Some(self.instant_at(due));
            }
            self.timers.pop();
            let idle = matches!(&self.slots[token], Slot::Live(c) if c.in_flight.is_empty());
            let pacer = &self.pacers[token];
            if idle && !pacer.in_flight() && pacer.next_due_ns() == due {
                self.send_one(token, now);
            }
        }
        None
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
                if self.open_loop {
                    self.arm(token, Instant::now());
                } else {
                    self.send_batch(token);
                }
            }
        }
    }

    /// Open loop: an idle connection's next request goes out now if it is due
    /// (or overdue), otherwise when it is due.
    fn arm(&mut self, token: usize, now: Instant) {
        let due = self.pacers[token].next_due_ns();
        if due <= self.ns_since_start(now) {
            self.send_one(token, now);
        } else {
            self.timers.push(Reverse((due, token)));
        }
    }

    fn pick(&mut self) -> usize {
        if self.scenarios.len() == 1 {
            0
        } else {
            self.picker.pick(self.rng.next_u64())
        }
    }

    /// Closed loop: writes `pipeline` requests at once.
    fn send_batch(&mut self, token: usize) {
        let Slot::Live(conn) = &mut self.slots[token] else {
            return;
        };
        conn.written = 0;
        conn.in_flight.clear();
        if self.scenarios.len() == 1 {
            conn.out_source = OutSource::Batch;
            conn.in_flight.resize(self.pipeline, 0);
        } else if self.pipeline == 1 {
            let one = self.picker.pick(self.rng.next_u64());
            conn.out_source = OutSource::Scenario(one);
            conn.in_flight.push_back(one as u16);
        } else {
            conn.out_source = OutSource::Own;
            conn.out.clear();
            for _ in 0..self.pipeline {
                let p = self.picker.pick(self.rng.next_u64());
                conn.out.extend_from_slice(&self.scenarios[p].bytes);
                conn.in_flight.push_back(p as u16);
            }
        }
        conn.sent_at = Instant::now();
        self.on_writable(token);
    }

    /// Open loop: writes the connection's next scheduled request.
    fn send_one(&mut self, token: usize, now: Instant) {
        let scenario = self.pick();
        let now_ns = self.ns_since_start(now);
        let Slot::Live(conn) = &mut self.slots[token] else {
            return;
        };
        let lag_ns = self.pacers[token].on_send(now_ns);
        self.stats
            .send_lag_ns
            .saturating_record(lag_ns.max(HISTOGRAM_LOW_NS));
        conn.written = 0;
        conn.in_flight.clear();
        conn.in_flight.push_back(scenario as u16);
        conn.out_source = if self.batch.is_some() {
            OutSource::Batch
        } else {
            OutSource::Scenario(scenario)
        };
        conn.sent_at = now;
        self.on_writable(token);
    }

    fn on_writable(&mut self, token: usize) {
        let Slot::Live(conn) = &mut self.slots[token] else {
            return;
        };
        let bytes: &[u8] = match conn.out_source {
            OutSource::Batch => self.batch.unwrap_or_default(),
            OutSource::Scenario(i) => &self.scenarios[i].bytes,
            OutSource::Own => &conn.out,
        };
        // `bytes` may borrow `conn.out`; copy the write state out and back.
        let mut written = conn.written;
        let mut interest = conn.interest;
        let result = write_pending(
            &mut conn.stream,
            conn.tls.as_deref_mut(),
            bytes,
            &mut written,
            &mut interest,
            &self.epoll,
            token,
        );
        conn.written = written;
        conn.interest = interest;
        if result.is_err() {
            self.fail(token, Failure::Io);
        }
    }

    fn on_readable(&mut self, token: usize, deadline: Instant) {
        let Slot::Live(conn) = &mut self.slots[token] else {
            return;
        };
        // One read per readiness event: level-triggered epoll reports the rest.
        let got = match &mut conn.tls {
            Some(session) => read_tls(session, &mut conn.stream, &mut conn.reader),
            None => conn.reader.read_from(&mut conn.stream),
        };
        match got {
            // The server may close a connection with nothing outstanding (only after
            // the deadline, or on its idle timeout): not an error, just reopen it.
            Ok(0) if conn.in_flight.is_empty() => {
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
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let mut close = false;
        loop {
            let scenario = conn.in_flight.front().map(|&s| usize::from(s));
            let head_request = scenario.is_some_and(|s| self.scenarios[s].head);
            let meta = match conn.reader.next_response_to(head_request) {
                Ok(Some(meta)) => meta,
                Ok(None) => break,
                Err(_) => return self.fail(token, Failure::Protocol),
            };
            let Some(scenario) = scenario else {
                // A response nobody asked for: the stream is out of step.
                return self.fail(token, Failure::Protocol);
            };
            conn.in_flight.pop_front();
            let latency_ns = if self.open_loop {
                self.pacers[token].on_response(now_ns).unwrap_or(0)
            } else {
                u64::try_from(now.saturating_duration_since(conn.sent_at).as_nanos())
                    .unwrap_or(u64::MAX)
            };
            self.stats.record(scenario, meta, latency_ns);
            if meta.close {
                close = true;
                break;
            }
        }
        if close {
            if !conn.in_flight.is_empty() {
                return self.fail(token, Failure::Closed);
            }
            self.stats.counts.reconnects += 1;
            self.slots[token] = self.connect(token, now);
            self.start_if_idle(token);
        } else if conn.in_flight.is_empty() && now < deadline {
            if self.open_loop {
                self.arm(token, now);
            } else {
                self.send_batch(token);
            }
        }
    }

    /// Counts the failure, drops the connection (closing the fd also removes it from
    /// epoll) and opens a fresh one in its place. Open loop: the request in flight
    /// is lost and the schedule goes on.
    fn fail(&mut self, token: usize, why: Failure) {
        match why {
            Failure::Io => self.stats.counts.io_errors += 1,
            Failure::Protocol => self.stats.counts.protocol_errors += 1,
            Failure::Closed => self.stats.counts.closed_errors += 1,
        }
        if let Some(p) = self.pacers.get_mut(token) {
            p.on_lost();
        }
        let now = Instant::now();
        // Drop the old connection first so its descriptor is closed (and gone from
        // epoll) before the new one is opened.
        self.slots[token] = Slot::Down { retry_at: now };
        self.slots[token] = self.connect(token, now);
        self.start_if_idle(token);
    }
}

/// One `read` of a TLS connection's socket, then every byte of plaintext it
/// decrypted into `reader`: like `ResponseReader::read_from`, `Ok(0)` is the
/// end of the stream and `WouldBlock` a report with nothing new.
fn read_tls(
    session: &mut rustls::ClientConnection,
    stream: &mut TcpStream,
    reader: &mut ResponseReader,
) -> io::Result<usize> {
    match tls::receive(session, stream)? {
        Received::Closed => return Ok(0),
        Received::Nothing => return Err(io::ErrorKind::WouldBlock.into()),
        Received::Data => {}
    }
    if session.wants_write() {
        // A reply rustls owes the server (to a key update): it goes out now,
        // or with the next batch if the socket is full.
        tls::flush(session, stream)?;
    }
    let mut total = 0;
    loop {
        match reader.read_from(&mut tls::plaintext(session)) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if total == 0 {
        // Only records without application data (a session ticket).
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(total)
}

/// Writes what is left of `bytes` (for TLS: encrypts a new batch into rustls
/// in one go, `written` then covering it, and writes its records); asks epoll
/// for writability only while the socket buffer is full, so a normal round
/// trip costs no epoll_ctl.
fn write_pending(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::ClientConnection>,
    bytes: &[u8],
    written: &mut usize,
    interest: &mut Interest,
    epoll: &Epoll,
    token: usize,
) -> io::Result<()> {
    let done = match tls {
        Some(session) => {
            if *written < bytes.len() {
                tls::queue(session, &bytes[*written..])?;
                *written = bytes.len();
            }
            tls::flush(session, stream)?
        }
        None => write_plain(stream, bytes, written)?,
    };
    let want = if done {
        Interest::Read
    } else {
        Interest::ReadWrite
    };
    if *interest != want {
        epoll.modify(stream, token as u64, want)?;
        *interest = want;
    }
    Ok(())
}

/// Writes `bytes` from `written` on; `Ok(false)` when the socket buffer
/// filled first.
fn write_plain(stream: &mut TcpStream, bytes: &[u8], written: &mut usize) -> io::Result<bool> {
    while *written < bytes.len() {
        match stream.write(&bytes[*written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::request::{parse_scenario, render};
    use std::io::Read;
    use std::net::TcpListener;

    /// A tiny blocking server for the tests: answers every request head on a
    /// connection with a fixed response, until the client goes away. Request
    /// bodies are not expected (the tests that send some use Content-Length and
    /// the server only counts heads, which works as long as bodies hold no
    /// blank line).
    pub(crate) fn spawn_server(response: &'static [u8]) -> SocketAddr {
        spawn_server_over(response, Some)
    }

    /// [`spawn_server`] speaking through what `wrap` makes of each accepted
    /// stream (a TLS session, say); `None` drops the connection.
    pub(crate) fn spawn_server_over<S, W>(response: &'static [u8], wrap: W) -> SocketAddr
    where
        S: Read + Write + Send + 'static,
        W: Fn(TcpStream) -> Option<S> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Some(mut stream) = stream.ok().and_then(&wrap) else {
                    return;
                };
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
                        if stream
                            .write_all(&out)
                            .and_then(|()| stream.flush())
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    pub(crate) fn config(addr: SocketAddr, pipeline: usize) -> LoadConfig {
        let target = crate::args::parse_url(&format!("http://{addr}/plaintext")).expect("url");
        let scenarios = vec![Scenario {
            label: "GET /plaintext".into(),
            weight: 1,
            head: false,
            bytes: request_bytes(&target),
        }];
        LoadConfig {
            target,
            tls: None,
            connections: 4,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            threads: 2,
            cpus: None,
            pipeline,
            rate: None,
            scenarios,
            seed: crate::request::DEFAULT_SEED,
            server_pid: Some(std::process::id()),
            busy_poll: false,
        }
    }

    const PLAINTEXT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

    #[test]
    fn closed_loop_against_a_local_server() {
        let addr = spawn_server(PLAINTEXT);
        for pipeline in [1, 8] {
            let cfg = config(addr, pipeline);
            let report = run(&cfg).expect("run");
            assert!(report.counts.responses > 0);
            assert_eq!(report.counts.errors(), 0, "{report:?}");
            assert_eq!(report.counts.non_2xx, 0);
            assert_eq!(report.latency_ns.len(), report.counts.responses);
            assert_eq!(report.scenarios[0].responses, report.counts.responses);
            assert!(report.server_cpu.is_some());
            assert!(report.send_lag_ns.is_none());
        }
    }

    #[test]
    fn warmup_is_not_counted() {
        let addr = spawn_server(PLAINTEXT);
        let mut cfg = config(addr, 1);
        cfg.warmup = Duration::from_millis(200);
        cfg.duration = Duration::from_millis(200);
        let report = run(&cfg).expect("run");
        assert!(report.counts.responses > 0);
        // The measured window excludes the warm-up.
        let secs = report.elapsed.as_secs_f64();
        assert!((0.19..0.5).contains(&secs), "{secs}");
    }

    #[test]
    fn open_loop_holds_the_rate() {
        let addr = spawn_server(PLAINTEXT);
        let mut cfg = config(addr, 1);
        cfg.rate = Some(2_000);
        cfg.connections = 8;
        cfg.duration = Duration::from_secs(1);
        cfg.warmup = Duration::from_millis(100);
        let report = run(&cfg).expect("run");
        assert_eq!(report.counts.errors(), 0, "{report:?}");
        // 2,000/s for 1 s: allow for the edges of the window and a busy machine.
        let n = report.counts.responses;
        assert!((1_700..=2_100).contains(&n), "{n} responses");
        let lag = report
            .send_lag_ns
            .as_ref()
            .expect("open loop reports send lag");
        assert_eq!(lag.len() / 10, n / 10, "one send per response, roughly");
        assert_eq!(report.latency_ns.len(), n);
    }

    #[test]
    fn open_loop_refuses_pipelining_and_zero_rate() {
        let addr = spawn_server(PLAINTEXT);
        let mut cfg = config(addr, 4);
        cfg.rate = Some(100);
        assert!(run(&cfg).unwrap_err().contains("pipeline"));
        cfg.pipeline = 1;
        cfg.rate = Some(0);
        assert!(run(&cfg).is_err());
    }

    #[test]
    fn weighted_scenarios_are_counted_apart() {
        let addr = spawn_server(PLAINTEXT);
        let mut cfg = config(addr, 1);
        let authority = cfg.target.authority.clone();
        cfg.scenarios = ["3 GET /a", "1 POST /b"]
            .iter()
            .map(|s| render(&parse_scenario(s, None).expect("scenario"), &authority, &[]))
            .collect();
        for pipeline in [1, 4] {
            cfg.pipeline = pipeline;
            let report = run(&cfg).expect("run");
            assert_eq!(report.counts.errors(), 0, "{report:?}");
            let a = report.scenarios[0].responses;
            let b = report.scenarios[1].responses;
            assert_eq!(a + b, report.counts.responses);
            let share = a as f64 / (a + b) as f64;
            assert!((0.6..0.9).contains(&share), "{a} vs {b}");
            for s in &report.scenarios {
                let h = s.latency_ns.as_ref().expect("per-scenario histogram");
                assert_eq!(h.len(), s.responses);
            }
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
}
