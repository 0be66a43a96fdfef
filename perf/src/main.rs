//! `shardline-perf`: shardline's benchmark harness, run on the same machine as the
//! server under test, over loopback only (it refuses any other address).
//!
//! Two commands exist so far (the scenario runner, open-loop mode with
//! coordinated-omission correction and peer comparisons come with the harness's
//! own issue):
//!
//! - `load`: a closed-loop keep-alive load generator with optional pipelining,
//!   threads pinned to chosen CPUs, HDR-histogram latencies merged across threads.
//! - `idle`: the idle-connection memory benchmark (server RSS per idle keep-alive
//!   connection).
//!
//! # Layout
//!
//! - `args`: durations, CPU lists, loopback-only target URLs.
//! - `load`: the load generator (one epoll loop per thread) and its report.
//! - `idle`: the idle-connection memory benchmark and its report.
//! - `response`: HTTP/1.1 response reader (httparse heads, Content-Length or chunked).
//! - `procfs`: VmRSS, CPU time and open-files limit of another process.
//! - `sys`: the only `unsafe` code: CPU pinning, RLIMIT_NOFILE, epoll, clock ticks.

mod args;
mod idle;
mod load;
mod procfs;
mod response;
mod sys;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

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

#[derive(Subcommand, Debug)]
enum Command {
    /// Closed-loop keep-alive load: requests/s, errors and latency percentiles.
    Load {
        /// Target, e.g. http://127.0.0.1:8080/plaintext (loopback addresses only).
        #[arg(long)]
        url: String,
        /// Keep-alive connections, spread evenly over the threads.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// How long to send load, e.g. 10s, 500ms, 2m.
        #[arg(long, default_value = "10s", value_parser = args::parse_duration)]
        duration: Duration,
        /// Load threads; each drives its share of the connections with one epoll loop.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// CPUs to pin the threads to, round robin, e.g. 1 or 2-3 (default: not pinned).
        #[arg(long, value_parser = args::parse_cpu_list)]
        cpus: Option<args::CpuList>,
        /// Requests written back to back per connection before reading responses.
        #[arg(long, default_value_t = 1)]
        pipeline: usize,
        /// PID of the server, to report its CPU time per request.
        #[arg(long)]
        server_pid: Option<u32>,
    },
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
}

fn run(cli: Cli) -> Result<String, String> {
    match cli.command {
        Command::Load {
            url,
            connections,
            duration,
            threads,
            cpus,
            pipeline,
            server_pid,
        } => {
            let cfg = load::LoadConfig {
                target: args::parse_url(&url)?,
                connections,
                duration,
                threads,
                cpus: cpus.map(|c| c.0),
                pipeline,
                server_pid,
            };
            let report = load::run(&cfg)?;
            Ok(load::format_report(&cfg, &report))
        }
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
            let target = args::Target {
                addr: args::resolve_loopback(&addr)?,
                authority: addr,
                path,
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
            Command::Load { cpus, duration, .. } => {
                assert_eq!(cpus, Some(args::CpuList(vec![0, 1])));
                assert_eq!(duration, Duration::from_secs(10));
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
}
