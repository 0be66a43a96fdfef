//! The audit log: one JSON line per authentication or authorization
//! decision, on its own stream (`observability.audit_log`), append-only.
//!
//! Policy code calls [`record`] on the shard that made the decision; the
//! line goes through that shard's bounded buffer to the audit writer
//! thread, like access log lines (a slow disk drops and counts lines, it
//! never blocks the shard). With `audit_log = "off"` `record` does nothing.
//!
//! ```ignore
//! crate::audit::record(&crate::audit::Decision {
//!     allow: false,
//!     reason: "scope_missing",
//!     consumer: Some("partner-a"),
//!     route: "get-user",
//!     request_id: &request_id,
//!     auth: "partners",
//! });
//! ```
//!
//! Secrets never reach this module: a decision carries names and reasons,
//! never a key, token, password or header value.

use std::cell::RefCell;
use std::rc::Rc;

use crate::obs::json;
use crate::obs::log::ShardLog;

/// One allow/deny decision.
#[allow(dead_code)] // Constructed by the auth policies (merged separately) and tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decision<'a> {
    pub allow: bool,
    /// Why, as a stable snake_case word (`valid_key`, `unknown_key`,
    /// `expired_token`, `scope_missing`, ...).
    pub reason: &'a str,
    /// The authenticated consumer, if any was identified.
    pub consumer: Option<&'a str>,
    pub route: &'a str,
    pub request_id: &'a str,
    /// The `[auth.NAME]` that decided.
    pub auth: &'a str,
}

thread_local! {
    /// This shard's audit stream (set when the shard's gateway is built).
    static AUDIT: RefCell<Option<Rc<ShardLog>>> = const { RefCell::new(None) };
}

pub(crate) fn install(log: Option<Rc<ShardLog>>) {
    AUDIT.with(|a| *a.borrow_mut() = log);
}

/// Writes one decision to the audit log (no-op when the audit log is off).
pub(crate) fn record(d: &Decision<'_>) {
    AUDIT.with(|a| {
        if let Some(log) = a.borrow().as_ref() {
            log.line(|out| write_line(out, d));
        }
    });
}

#[allow(dead_code)] // Reached through `record`.
fn write_line(out: &mut Vec<u8>, d: &Decision<'_>) {
    out.extend_from_slice(b"{\"time\":");
    json::push_now(out);
    out.extend_from_slice(b",\"type\":\"auth\",\"decision\":");
    out.extend_from_slice(if d.allow { b"\"allow\"" } else { b"\"deny\"" });
    out.extend_from_slice(b",\"reason\":");
    json::push_bytes(out, d.reason.as_bytes());
    out.extend_from_slice(b",\"consumer\":");
    match d.consumer {
        Some(c) => json::push_bytes(out, c.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"route\":");
    json::push_bytes(out, d.route.as_bytes());
    out.extend_from_slice(b",\"request_id\":");
    json::push_bytes(out, d.request_id.as_bytes());
    out.extend_from_slice(b",\"auth\":");
    json::push_bytes(out, d.auth.as_bytes());
    out.push(b'}');
}

/// Counts of this shard's audit stream, for metrics.
pub(crate) fn counts() -> crate::obs::metrics::LogCounts {
    AUDIT.with(|a| a.borrow().as_ref().map(|l| l.counts()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A handler's decision goes through the shard's buffer and the writer
    /// thread into the configured file.
    #[test]
    fn decisions_reach_the_audit_file() {
        let dir = std::env::temp_dir().join(format!("shardline-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&file);
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"off\"\nshards = 1\n\n\
             [observability]\naudit_log = \"{}\"\n\n\
             [[routes]]\nname = \"guarded\"\nmethod = \"GET\"\npath = \"/g\"\nhandler = \"guard\"\n",
            file.display()
        );
        let cfg = crate::Config::from_toml_str(&toml).unwrap();
        let srv = crate::Server::new(cfg)
            .handler("guard", |_shard| {
                |_req: &crate::Request<'_>, res: &mut crate::Response<'_, '_>| {
                    record(&Decision {
                        allow: false,
                        reason: "unknown_key",
                        consumer: None,
                        route: "guarded",
                        request_id: "r-1",
                        auth: "partners",
                    });
                    res.send(401, "text/plain", b"no")
                }
            })
            .start()
            .unwrap();
        let mut s = std::net::TcpStream::connect(srv.local_addr()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(b"GET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
        srv.shutdown();
        srv.wait().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("\"decision\":\"deny\""), "{text}");
        assert!(lines[0].contains("\"reason\":\"unknown_key\""), "{text}");
        assert!(lines[0].contains("\"request_id\":\"r-1\""), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn line_format() {
        let mut out = Vec::new();
        write_line(
            &mut out,
            &Decision {
                allow: false,
                reason: "unknown_key",
                consumer: None,
                route: "r\"1",
                request_id: "abc",
                auth: "partners",
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"decision\":\"deny\""), "{text}");
        assert!(text.contains("\"route\":\"r\\\"1\""), "{text}");
        assert!(text.contains("\"consumer\":null"), "{text}");
    }
}
