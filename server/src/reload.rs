//! Config reload (SIGHUP, `POST /admin/reload`), run on shard 0.
//!
//! The file is read and validated completely first (the same checks as at
//! start-up, plus the route table and handler names); a bad file leaves
//! the running config in place and the error says why. A good one becomes
//! a new generation that shard 0 sends to every shard by message; each
//! shard swaps its route table, actions and upstreams at once, between
//! requests. Connections stay open; requests already streaming finish on
//! the generation they started on. Route, upstream and SLO counters carry
//! over by name.
//!
//! `[server]` and `[observability]` settings (listeners, shards, buffers,
//! log destinations, tracing) are fixed at start: a reload that changes
//! them says they wait for a restart.

use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{ReloadPlan, Routing};
use crate::config::Config;
use crate::obs::hub::{Coordinator, RELOAD_POLL_MS};
use crate::obs::ObsSetup;

/// Reloads the config file; `Ok` and `Err` are one-line messages.
pub(crate) async fn reload(setup: &ObsSetup, coord: &Coordinator) -> Result<String, String> {
    // Certificates first, on their own: a config file that fails to load
    // does not stop new certificates, and a bad certificate file keeps the
    // old ones (rustls config swapped only when everything loaded).
    let (tls_ok, tls_note) = match &setup.tls {
        Some(t) => match t.reload() {
            Ok(()) => {
                eprintln!("shardline: reload: TLS certificates reloaded");
                (true, "; TLS certificates reloaded".to_string())
            }
            Err(e) => {
                eprintln!(
                    "shardline: reload: TLS reload failed, keeping the old certificates: {e}"
                );
                (
                    false,
                    format!("; TLS reload failed, keeping the old certificates: {e}"),
                )
            }
        },
        None => (true, String::new()),
    };
    let result = match try_reload(setup, coord).await {
        Ok(msg) if tls_ok => Ok(format!("{msg}{tls_note}")),
        Ok(msg) => Err(format!("{msg}{tls_note}")),
        // Started without a config file: certificates are all there is.
        Err(_) if setup.reload.is_none() && setup.tls.is_some() => {
            let note = tls_note.trim_start_matches("; ").to_string();
            if tls_ok {
                Ok(note)
            } else {
                Err(note)
            }
        }
        Err(e) => Err(format!("{e}{tls_note}")),
    };
    let counter = if result.is_ok() {
        &setup.reloads_ok
    } else {
        &setup.reloads_failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match &result {
        Ok(msg) => tracing::info!("{msg}"),
        Err(e) => tracing::warn!("config reload refused, running config kept: {e}"),
    }
    result
}

async fn try_reload(setup: &ObsSetup, coord: &Coordinator) -> Result<String, String> {
    let Some(source) = &setup.reload else {
        return Err("the server was started without --config: there is no file to reload".into());
    };
    // A blocking read on shard 0: config files are small and reloads rare;
    // the admin listener and this shard's traffic wait for it only briefly.
    let text = std::fs::read_to_string(&source.path)
        .map_err(|e| format!("cannot read {}: {e}", source.path.display()))?;
    let config = Config::from_toml_with_overrides(&text, &source.overrides)
        .map_err(|e| format!("{}: {e}", source.path.display()))?;
    let routing = Routing::new(&config, &setup.handlers)
        .map_err(|e| format!("{}: {e}", source.path.display()))?;
    let restart_note = {
        let running = setup
            .running
            .lock()
            .map_err(|_| "the running config is unavailable".to_string())?;
        let mut changed = Vec::new();
        if format!("{:?}", running.server) != format!("{:?}", config.server) {
            changed.push("[server]");
        }
        if running.observability != config.observability {
            changed.push("[observability]");
        }
        if changed.is_empty() {
            String::new()
        } else {
            format!(
                "; changes to {} take effect at the next restart",
                changed.join(" and ")
            )
        }
    };
    let generation = setup.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let config = Arc::new(config);
    let plan = Arc::new(ReloadPlan {
        config: Arc::clone(&config),
        routing: Arc::new(routing),
        generation,
    });
    let shards = coord.apply(plan).await;
    if let Ok(mut running) = setup.running.lock() {
        *running = Arc::clone(&config);
    }
    Ok(format!(
        "reloaded {}: generation {generation}, {} routes, {} upstreams, {} SLOs, on {shards} shards{restart_note}",
        source.path.display(),
        config.routes.len(),
        config.upstreams.len(),
        config.slos.len(),
    ))
}

/// Shard 0's task that turns SIGHUP (a message from the signal thread)
/// into a reload.
pub(crate) async fn sighup_loop(setup: Arc<ObsSetup>, coord: Weak<Coordinator>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(RELOAD_POLL_MS)).await;
        if setup.hub.sighup.try_recv().is_err() {
            continue;
        }
        let Some(c) = coord.upgrade() else { return };
        let c: Rc<Coordinator> = c;
        let _ = reload(&setup, &c).await;
    }
}
