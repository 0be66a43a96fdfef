//! `shardline-perf`: shardline's benchmark harness, run on the same machine as the
//! server under test, over loopback only (it refuses any other address).
//!
//! - `load`: a keep-alive load generator, closed loop (with optional pipelining)
//!   or open loop at a constant rate with coordinated-omission correction
//!   (`--rate`); threads pinned to chosen CPUs; weighted request scenarios;
//!   HDR-histogram latencies merged across threads; a table or `--json`.
//! - `idle`: the idle-connection memory benchmark (server RSS per idle keep-alive
//!   connection).
//! - `stall-server`: a tiny responder that freezes periodically, used to validate
//!   the coordinated-omission correction.
//!
//! # Layout
//!
//! - `args`: durations, CPU lists, loopback-only target URLs.
//! - `request`: request rendering, scenarios, the scenario PRNG.
//! - `schedule`: the open-loop schedule and its latency correction.
//! - `load`: the load generator (one epoll loop per thread).
//! - `report`: the human table and the JSON object of a `load` run.
//! - `idle`: the idle-connection memory benchmark and its report.
//! - `stall`: the stalling test server.
//! - `response`: HTTP/1.1 response reader (httparse heads, Content-Length or chunked).
//! - `procfs`: VmRSS, CPU time and open-files limit of another process.
//! - `sys`: the only `unsafe` code: CPU pinning, timer slack, RLIMIT_NOFILE,
//!   epoll, clock ticks.

mod args;
mod idle;
mod load;
mod procfs;
mod report;
mod request;
mod response;
mod schedule;
mod stall;
mod sys;
mod tls;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit code for a run that could not be done (bad arguments, nothing listening,
/// limits too low); clap uses the same code for its own argument errors.
const EXIT_FAILED: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "shardline-perf",
    version,
    about = "shardline's benchmark harness (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The arguments of `load`.
#[derive(Args, Debug)]
struct LoadArgs {
    /// Target, e.g. http://127.0.0.1:8080/plaintext or https://localhost:8443/
    /// (loopback addresses only). With --scenario/--scenarios only its scheme,
    /// host and port are used.
    #[arg(long)]
    url: String,
    /// https:// targets: PEM file of the roots the server's certificate must
    /// chain to (its host is the name checked and sent as SNI).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// https:// targets: accept any server certificate (handshake signatures
    /// are still checked). For self-signed test servers only.
    #[arg(long)]
    tls_skip_verify: bool,
    /// Keep-alive connections, spread evenly over the threads.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to measure, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = args::parse_duration)]
    duration: Duration,
    /// Send load this long first and discard what it recorded, e.g. 1s.
    #[arg(long, value_parser = args::parse_duration)]
    warmup: Option<Duration>,
    /// Load threads; each drives its share of the connections with one epoll loop.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin the threads to, round robin, e.g. 1 or 2-3 (default: not pinned).
    #[arg(long, value_parser = args::parse_cpu_list)]
    cpus: Option<args::CpuList>,
    /// Requests written back to back per connection before reading responses
    /// (closed loop only).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Open loop: this many requests per second in total, each timed from its
    /// scheduled send time (coordinated-omission corrected).
    #[arg(long)]
    rate: Option<u64>,
    /// Request method.
    #[arg(long, default_value = "GET", value_parser = request::parse_method,
          conflicts_with_all = ["scenario", "scenarios"])]
    method: String,
    /// Extra request header "Name: value" (repeatable; Host replaces the default).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = request::parse_header)]
    headers: Vec<request::Header>,
    /// Request body: the text itself, or @FILE for a file's contents.
    #[arg(long, conflicts_with_all = ["scenario", "scenarios"])]
    body: Option<String>,
    /// A weighted request 'WEIGHT METHOD PATH [@bodyfile]' (repeatable); each
    /// request picks one with probability weight / sum of weights.
    #[arg(long, value_name = "SPEC")]
    scenario: Vec<String>,
    /// A file of scenarios, one 'WEIGHT METHOD PATH [@bodyfile]' per line
    /// (# comments; body files relative to the file).
    #[arg(long, value_name = "FILE")]
    scenarios: Option<PathBuf>,
    /// Seed of the scenario picker (runs with the same seed pick the same sequence
    /// per thread).
    #[arg(long, default_value_t = request::DEFAULT_SEED)]
    seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// PID of the server, to report its CPU time per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Poll epoll without ever sleeping: sends and reads are not late by a thread
    /// wake-up, at the price of keeping each load CPU 100% busy.
    #[arg(long)]
    busy_poll: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Keep-alive load, closed loop or at a constant rate: requests/s, errors and
    /// latency percentiles.
    Load(Box<LoadArgs>),
    /// Idle-connection memory: server RSS per served, now idle, keep-alive connection.
    Idle {
        /// Server address, e.g. 127.0.0.1:8080 (loopback addresses only).
        #[arg(long)]
        addr: String,
        /// Connections to open and leave idle.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// PID of the server, whose VmRSS is read from /proc/PID/status.
        #[arg(long)]
        pid: u32,
        /// Path requested once on every connection.
        #[arg(long, default_value = "/plaintext")]
        path: String,
        /// Pause before each memory reading, e.g. 1s.
        #[arg(long, default_value = "1s", value_parser = args::parse_duration)]
        settle: Duration,
    },
    /// A single-threaded keep-alive responder (GET / -> 200 "ok") that freezes
    /// every --stall-every for --stall-for; prints "listening ADDR".
    StallServer {
        /// Address to listen on (loopback only); port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Period of the stalls (the first comes one period after start).
        #[arg(long, default_value = "1s", value_parser = args::parse_duration)]
        stall_every: Duration,
        /// How long each stall freezes the whole server.
        #[arg(long, default_value = "100ms", value_parser = args::parse_duration)]
        stall_for: Duration,
        /// Exit after this long.
        #[arg(long, default_value = "10m", value_parser = args::parse_duration)]
        exit_after: Duration,
    },
}

/// Renders the requests `load` sends from its arguments.
fn build_scenarios(a: &LoadArgs, target: &args::Target) -> Result<Vec<request::Scenario>, String> {
    let mut specs = Vec::new();
    for text in &a.scenario {
        specs.push(request::parse_scenario(text, None)?);
    }
    if let Some(file) = &a.scenarios {
        specs.extend(request::parse_scenario_file(file)?);
    }
    if specs.is_empty() {
        let (body, body_source) = match &a.body {
            Some(arg) => request::parse_body_arg(arg)?,
            None => (Vec::new(), None),
        };
        request::check_path(&target.path)?;
        specs.push(request::ScenarioSpec {
            weight: 1,
            method: a.method.clone(),
            path: target.path.clone(),
            body,
            body_source,
        });
    }
    if specs.len() > load::MAX_SCENARIOS {
        return Err(format!("at most {} scenarios", load::MAX_SCENARIOS));
    }
    Ok(specs
        .iter()
        .map(|s| request::render(s, &target.authority, &a.headers))
        .collect())
}

fn run_load(a: &LoadArgs) -> Result<String, String> {
    let target = args::parse_url(&a.url)?;
    let scenarios = build_scenarios(a, &target)?;
    let tls = if target.tls {
        Some(tls::TlsClient::new(
            &target.host,
            a.cacert.as_deref(),
            a.tls_skip_verify,
        )?)
    } else if a.cacert.is_some() || a.tls_skip_verify {
        return Err("--cacert and --tls-skip-verify are for https:// targets only".into());
    } else {
        None
    };
    let cfg = load::LoadConfig {
        target,
        tls,
        connections: a.connections,
        duration: a.duration,
        warmup: a.warmup.unwrap_or(Duration::ZERO),
        threads: a.threads,
        cpus: a.cpus.clone().map(|c| c.0),
        pipeline: a.pipeline,
        rate: a.rate,
        scenarios,
        seed: a.seed,
        server_pid: a.server_pid,
        busy_poll: a.busy_poll,
    };
    let report = load::run(&cfg)?;
    Ok(if a.json {
        report::format_json(&cfg, &report)
    } else {
        report::format_human(&cfg, &report)
    })
}

fn run(cli: Cli) -> Result<String, String> {
    match cli.command {
        Command::Load(a) => run_load(&a),
        Command::Idle {
            addr,
            connections,
            pid,
            path,
            settle,
        } => {
            if !path.starts_with('/') {
                return Err(format!("--path {path:?} must start with '/'"));
            }
            let resolved = args::resolve_loopback(&addr)?;
            let target = args::Target {
                addr: resolved,
                authority: addr,
                path,
                tls: false,
                host: resolved.ip().to_string(),
            };
            let cfg = idle::IdleConfig {
                target,
                connections,
                pid,
                settle,
            };
            let report = idle::run(&cfg)?;
            Ok(idle::format_report(&cfg, &report))
        }
        Command::StallServer {
            listen,
            stall_every,
            stall_for,
            exit_after,
        } => {
            let listener = stall::bind(args::resolve_loopback(&listen)?)?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("listener address: {e}"))?;
            let cfg = stall::StallConfig {
                every: stall_every,
                stall_for,
                exit_after,
            };
            // Announce the address at once: scripts wait for this line.
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "listening {addr}")
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("stdout: {e}"))?;
            drop(stdout);
            let stats = stall::serve(&listener, &cfg)?;
            Ok(format!(
                "stall-server done: {} requests on {} connections, {} stalls\n",
                stats.requests, stats.connections, stats.stalls
            ))
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shardline-perf: error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_command_lines() {
        let cli = Cli::try_parse_from([
            "shardline-perf",
            "load",
            "--url",
            "http://127.0.0.1:8080/plaintext",
            "--connections",
            "64",
            "--duration",
            "10s",
            "--threads",
            "2",
            "--cpus",
            "0-1",
            "--pipeline",
            "16",
        ])
        .expect("valid load command line");
        match cli.command {
            Command::Load(a) => {
                assert_eq!(a.cpus, Some(args::CpuList(vec![0, 1])));
                assert_eq!(a.duration, Duration::from_secs(10));
                assert_eq!(a.method, "GET");
                assert!(!a.json && a.rate.is_none() && a.warmup.is_none());
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "shardline-perf",
            "idle",
            "--addr",
            "127.0.0.1:8080",
            "--connections",
            "10000",
            "--pid",
            "42",
        ])
        .expect("valid idle command line");
        assert!(matches!(
            cli.command,
            Command::Idle {
                pid: 42,
                connections: 10_000,
                ..
            }
        ));
    }

    fn load_args(extra: &[&str]) -> Result<LoadArgs, clap::Error> {
        let mut argv = vec!["shardline-perf", "load", "--url", "http://127.0.0.1:8080/p"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Load(a) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_the_new_load_options() {
        let a = load_args(&[
            "--rate",
            "2000",
            "--warmup",
            "1s",
            "--json",
            "--method",
            "POST",
            "--header",
            "X-A: 1",
            "--header",
            "Accept: */*",
            "--body",
            "hello",
        ])
        .expect("valid");
        assert_eq!(a.rate, Some(2000));
        assert_eq!(a.warmup, Some(Duration::from_secs(1)));
        assert!(a.json);
        assert_eq!(a.headers.len(), 2);
        let target = args::parse_url(&a.url).expect("url");
        let scenarios = build_scenarios(&a, &target).expect("scenarios");
        assert_eq!(scenarios.len(), 1);
        assert_eq!(
            scenarios[0].bytes,
            b"POST /p HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-A: 1\r\nAccept: */*\r\n\
              Content-Length: 5\r\n\r\nhello"
        );

        let a = load_args(&["--scenario", "3 GET /a", "--scenario", "1 GET /b"]).expect("valid");
        let scenarios = build_scenarios(&a, &target).expect("scenarios");
        let labels: Vec<&str> = scenarios.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["GET /a", "GET /b"]);

        // Bad values are refused by the parser, and scenarios exclude --method/--body.
        for bad in [
            &["--method", "G T"][..],
            &["--header", "NoColon"],
            &["--scenario", "1 GET /", "--body", "x"],
            &["--scenario", "1 GET /", "--method", "POST"],
            &["--warmup", "0s"],
        ] {
            assert!(load_args(bad).is_err(), "{bad:?}");
        }
        let a = load_args(&["--scenario", "0 GET /"]).expect("parsed later");
        assert!(build_scenarios(&a, &target).is_err());
    }

    #[test]
    fn parses_stall_server() {
        let cli = Cli::try_parse_from([
            "shardline-perf",
            "stall-server",
            "--listen",
            "127.0.0.1:0",
            "--stall-every",
            "1s",
            "--stall-for",
            "100ms",
        ])
        .expect("valid");
        assert!(matches!(
            cli.command,
            Command::StallServer { stall_for, .. } if stall_for == Duration::from_millis(100)
        ));
    }
}
