//! What the `shardline` binary does: parse the CLI, load the config, start,
//! print the ready line, drain on SIGTERM/SIGINT.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::Cli;
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
    let overrides = cli.overrides();
    let config = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml_with_overrides(&text, &overrides)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => Err(format!("cannot read config file {}: {e}", path.display())),
        },
        None => Config::default_with_overrides(&overrides).map_err(|e| e.0),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };

    // Registered before the shards start, so a SIGTERM during start-up is
    // queued for the signal thread instead of killing the process mid-bind.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
    };

    let server = match Server::new(config).start() {
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
        let signals_handle = signals.handle();
        let tls_reload = server.tls_reload_handle();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut seen = 0;
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        // Reload what can be reloaded; a bad file keeps the
                        // old certificate in use.
                        match &tls_reload {
                            Some(t) => match t.reload() {
                                Ok(()) => eprintln!("shardline: SIGHUP: TLS certificates reloaded"),
                                Err(e) => eprintln!(
                                    "shardline: SIGHUP: TLS reload failed, keeping the old certificates: {e}"
                                ),
                            },
                            None => eprintln!("shardline: SIGHUP: nothing to reload"),
                        }
                        continue;
                    }
                    seen += 1;
                    if seen == 1 {
                        eprintln!("shardline: signal {sig}: draining");
                        handle.shutdown();
                    } else {
                        // A second signal means "now": skip the drain.
                        eprintln!("shardline: second signal: exiting without drain");
                        std::process::exit(1);
                    }
                }
            })
            .ok();
        let res = server.wait();
        signals_handle.close();
        if let Err(e) = res {
            eprintln!("shardline: error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("shardline: error: {}", msg.replace('\n', " "));
    ExitCode::from(EXIT_CONFIG)
}
