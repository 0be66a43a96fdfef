//! Config reload (SIGHUP, `POST /admin/reload`), run on shard 0.
//!
//! The file and every TLS certificate, key and CA file are read and
//! validated completely first (the same checks as at start-up, plus the
//! route table and handler names); any bad file leaves the running config
//! and certificates in place and the error says why. A good set becomes
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
use crate::obs::hub::{Coordinator, ReloadSource, RELOAD_POLL_MS};
use crate::obs::ObsSetup;

/// Reloads the config file and the TLS files; `Ok` and `Err` are one-line
/// messages.
pub(crate) async fn reload(setup: &ObsSetup, coord: &Coordinator) -> Result<String, String> {
    let result = reload_all(setup, coord).await;
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

/// All or nothing: the config file and every certificate, key and CA file
/// are read and checked before anything changes, so a refused reload
/// leaves routes and certificates exactly as they were (which is what its
/// error, its 422 and the `error` counter say).
async fn reload_all(setup: &ObsSetup, coord: &Coordinator) -> Result<String, String> {
    let tls = match &setup.tls {
        Some(t) => Some(
            t.prepare()
                .map_err(|e| format!("TLS reload failed, keeping the old certificates: {e}"))?,
        ),
        None => None,
    };
    let config = match &setup.reload {
        Some(source) => Some(prepare_config(setup, source)?),
        None if tls.is_some() => None,
        None => {
            return Err(
                "the server was started without --config: there is no file to reload".into(),
            )
        }
    };
    let mut done = Vec::new();
    if let Some(next) = config {
        done.push(apply_config(setup, coord, next).await);
    }
    if let (Some(t), Some(prepared)) = (&setup.tls, tls) {
        t.commit(prepared);
        done.push("TLS certificates reloaded".to_string());
    }
    Ok(done.join("; "))
}

/// A config file read and checked, not yet applied.
struct NextConfig {
    config: Config,
    routing: Routing,
    restart_note: String,
}

fn prepare_config(setup: &ObsSetup, source: &ReloadSource) -> Result<NextConfig, String> {
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
    Ok(NextConfig {
        config,
        routing,
        restart_note,
    })
}

async fn apply_config(setup: &ObsSetup, coord: &Coordinator, next: NextConfig) -> String {
    let NextConfig {
        config,
        routing,
        restart_note,
    } = next;
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
    let path = setup
        .reload
        .as_ref()
        .map_or_else(String::new, |s| s.path.display().to_string());
    format!(
        "reloaded {path}: generation {generation}, {} routes, {} upstreams, {} SLOs, on {shards} shards{restart_note}",
        config.routes.len(),
        config.upstreams.len(),
        config.slos.len(),
    )
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
