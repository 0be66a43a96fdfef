//! What the `shardline` binary does: parse the CLI, load the config (or
//! just print it: `shardline check`), start, print the ready line; drain on
//! SIGTERM/SIGINT, reload the config on SIGHUP, reopen log files on
//! SIGUSR1. Operational messages go to stderr through `tracing`
//! (`--log-level`); stdout carries the ready line and, when configured,
//! the access log.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::server::Server;

/// Exit code for a configuration or start-up error.
pub const EXIT_CONFIG: u8 = 2;

/// Runs the binary; returns the process exit code.
pub fn main() -> ExitCode {
    // A panic anywhere (ours or a dependency's) is reported as one line, not
    // a multi-line message with a backtrace; it is still a bug to report.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let at = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!(
            "shardline: internal error: {}{at} (please report this)",
            msg.replace('\n', " ")
        );
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's message is several lines; keep the first, which names
            // the flag, so every bad start is one line.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            return fail(first.trim_start_matches("error: "));
        }
    };
    // Operational logs: stderr, plain text (no colour codes in journald).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(cli.log_level.filter())
        .with_target(false)
        .try_init();
    let overrides = cli.overrides();
    // The file's text is kept for `check`, which carries over what it does
    // not render itself.
    let mut source_text: Option<String> = None;
    let config = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let c = Config::from_toml_with_overrides(&text, &overrides)
                    .map_err(|e| format!("{}: {e}", path.display()));
                source_text = Some(text);
                c
            }
            Err(e) => Err(format!("cannot read config file {}: {e}", path.display())),
        },
        None => Config::default_with_overrides(&overrides).map_err(|e| e.0),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if matches!(cli.command, Some(Command::Check)) {
        // Routes and handler names are checked as at start-up (the binary
        // has only the built-in "echo" handler).
        if let Err(e) = crate::app::Routing::new(&config, &[]) {
            return fail(&e);
        }
        // Certificate, key and CA files load and fit, as at start-up.
        if let Some(tls) = &config.server.tls {
            if let Err(e) = crate::tls::validate(tls) {
                return fail(&e);
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(
            crate::check::effective_toml_from(&config, source_text.as_deref()).as_bytes(),
        );
        let _ = out.flush();
        return ExitCode::SUCCESS;
    }

    // Registered before the shards start, so a SIGTERM during start-up is
    // queued for the signal thread instead of killing the process mid-bind.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
    };

    let mut builder = Server::new(config);
    if let Some(path) = &cli.config {
        builder = builder.config_file(path.clone(), overrides.clone());
    }
    let server = match builder.start() {
        Ok(s) => s,
        Err(e) => return fail(&e.0),
    };
    let admin = server
        .admin_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    let mut out = std::io::stdout().lock();
    // `tls=` only when an HTTPS listener runs, so the line is unchanged
    // for plain setups.
    let tls = server
        .tls_addr()
        .map_or_else(String::new, |a| format!(" tls={a}"));
    let _ = writeln!(
        out,
        "shardline ready listen={} admin={admin} shards={}{tls}",
        server.local_addr(),
        server.shards()
    );
    let _ = out.flush();
    drop(out);

    if let Some(handle) = server.shutdown_handle() {
        let control = server.control_handle();
        let signals_handle = signals.handle();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut seen = 0;
                for sig in signals.forever() {
                    match sig {
                        SIGHUP => {
                            tracing::info!("SIGHUP: reloading the config");
                            control.reload();
                            // TLS certificates are re-read by the same reload.
                            continue;
                        }
                        SIGUSR1 => {
                            tracing::info!("SIGUSR1: reopening log files");
                            control.reopen_logs();
                            continue;
                        }
                        _ => {}
                    }
                    seen += 1;
                    if seen == 1 {
                        tracing::info!("signal {sig}: draining");
                        handle.shutdown();
                    } else {
                        // A second signal means "now": skip the drain.
                        tracing::warn!("second signal: exiting without drain");
                        std::process::exit(1);
                    }
                }
            })
            .ok();
        let res = server.wait();
        signals_handle.close();
        if let Err(e) = res {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("shardline: error: {}", msg.replace('\n', " "));
    ExitCode::from(EXIT_CONFIG)
}
