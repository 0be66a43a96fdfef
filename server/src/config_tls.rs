//! `[server.tls]`: the HTTPS listener's settings (file layer and validated
//! form). The files it names are read when the server starts and again on
//! every reload (`tls.rs`), not here: validation stays free of I/O.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::units::parse_duration;

/// A client gets this long to complete the TLS handshake: as long as it
/// gets for a request head, which a slow mobile link also has to manage.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Session-ticket keys are replaced this often; a ticket stays valid for at
/// most twice this. 6 hours is rustls's own choice and bounds how much
/// recorded traffic one stolen key could decrypt (forward secrecy of
/// resumed sessions).
pub const DEFAULT_TICKET_KEY_ROTATION: Duration = Duration::from_secs(6 * 3600);
/// rustls's ring ticketer renews its own keys every 6 hours whatever we
/// ask, so a longer period would only be a promise not kept.
const MAX_TICKET_KEY_ROTATION: Duration = Duration::from_secs(6 * 3600);
/// Shorter than a minute makes resumption fail for ordinary clients.
const MIN_TICKET_KEY_ROTATION: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTls {
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    #[serde(default)]
    sni: Vec<FileSniCert>,
    handshake_timeout: Option<String>,
    ticket_key_rotation: Option<String>,
    min_version: Option<String>,
    require_ems: Option<bool>,
    client_auth: Option<FileClientAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSniCert {
    cert: Option<String>,
    key: Option<String>,
    names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClientAuth {
    ca: Option<String>,
    required: Option<bool>,
}

/// A certificate chain and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// Full chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An extra certificate chosen by SNI.
#[derive(Debug, Clone)]
pub struct SniCert {
    pub paths: CertPaths,
    /// Host names (`*.example.com` allowed) it serves; `None` = the DNS
    /// names in the certificate itself.
    pub names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM bundle of the CA certificates client certificates must chain to.
    pub ca: PathBuf,
    /// Refuse clients without a certificate (otherwise they are served
    /// without an identity).
    pub required: bool,
}

/// The validated `[server.tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// Served when SNI names no configured certificate (or is absent).
    pub default_cert: CertPaths,
    pub sni: Vec<SniCert>,
    pub handshake_timeout: Duration,
    pub ticket_key_rotation: Duration,
    pub min_version: TlsVersion,
    /// Refuse TLS 1.2 clients that do not offer the extended master secret
    /// (RFC 7627). `false` only for legacy clients, and never with
    /// `client_auth`.
    pub require_ems: bool,
    pub client_auth: Option<ClientAuth>,
}

fn err<T>(key: &str, msg: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{key}: {msg}")))
}

fn path(key: &str, v: Option<String>) -> Result<PathBuf, ConfigError> {
    match v {
        Some(p) if !p.trim().is_empty() => Ok(PathBuf::from(p)),
        Some(_) => err(key, "must not be empty"),
        None => err(key, "missing (a PEM file)"),
    }
}

/// Applies `--tls-listen/--tls-cert/--tls-key` over the file's table.
pub(crate) fn with_overrides(
    file: Option<FileTls>,
    o: &crate::config::ServerOverrides,
) -> Option<FileTls> {
    if file.is_none() && o.tls_listen.is_none() && o.tls_cert.is_none() && o.tls_key.is_none() {
        return None;
    }
    let mut f = file.unwrap_or_default();
    if let Some(v) = &o.tls_listen {
        f.listen = Some(v.clone());
    }
    if let Some(v) = &o.tls_cert {
        f.cert = Some(v.clone());
    }
    if let Some(v) = &o.tls_key {
        f.key = Some(v.clone());
    }
    Some(f)
}

pub(crate) fn validate_tls(f: FileTls) -> Result<TlsConfig, ConfigError> {
    let listen = match f.listen {
        Some(v) => v.parse().or_else(|_| {
            err(
                "server.tls.listen",
                format!("invalid address {v:?}: expected IP:PORT like \"0.0.0.0:8443\""),
            )
        })?,
        None => {
            return err(
                "server.tls.listen",
                "missing (the HTTPS listener's IP:PORT, e.g. \"0.0.0.0:8443\")",
            )
        }
    };
    let default_cert = CertPaths {
        cert: path("server.tls.cert", f.cert)?,
        key: path("server.tls.key", f.key)?,
    };
    let mut sni = Vec::with_capacity(f.sni.len());
    for (i, s) in f.sni.into_iter().enumerate() {
        let key = |k: &str| format!("server.tls.sni[{i}].{k}");
        let names = match s.names {
            Some(n) if n.is_empty() => return err(&key("names"), "must name at least one host"),
            Some(n) => {
                let mut out = Vec::with_capacity(n.len());
                for name in n {
                    let lower = name.trim().to_ascii_lowercase();
                    // A fully qualified name's final dot names the same
                    // host; clients send SNI without it (RFC 6066 §3).
                    let lower = lower.strip_suffix('.').unwrap_or(&lower).to_string();
                    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
                    if bare.is_empty()
                        || bare.split('.').any(str::is_empty)
                        || !bare
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    {
                        return err(&key("names"), format!("{name:?} is not a host name"));
                    }
                    out.push(lower);
                }
                Some(out)
            }
            None => None,
        };
        sni.push(SniCert {
            paths: CertPaths {
                cert: path(&key("cert"), s.cert)?,
                key: path(&key("key"), s.key)?,
            },
            names,
        });
    }
    let handshake_timeout = match f.handshake_timeout {
        Some(v) => {
            let d = parse_duration(&v).or_else(|e| err("server.tls.handshake_timeout", e))?;
            if d.is_zero() {
                return err("server.tls.handshake_timeout", "must be greater than zero");
            }
            d
        }
        None => DEFAULT_HANDSHAKE_TIMEOUT,
    };
    let ticket_key_rotation = match f.ticket_key_rotation {
        Some(v) => {
            let d = parse_duration(&v).or_else(|e| err("server.tls.ticket_key_rotation", e))?;
            if !(MIN_TICKET_KEY_ROTATION..=MAX_TICKET_KEY_ROTATION).contains(&d) {
                return err(
                    "server.tls.ticket_key_rotation",
                    format!("{v:?} is out of range (1m to 6h)"),
                );
            }
            d
        }
        None => DEFAULT_TICKET_KEY_ROTATION,
    };
    let min_version = match f.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(v) => {
            return err(
                "server.tls.min_version",
                format!("{v:?}: expected \"1.2\" or \"1.3\" (older versions are never offered)"),
            )
        }
    };
    let client_auth = match f.client_auth {
        Some(c) => Some(ClientAuth {
            ca: path("server.tls.client_auth.ca", c.ca)?,
            required: c.required.unwrap_or(true),
        }),
        None => None,
    };
    let require_ems = f.require_ems.unwrap_or(true);
    if !require_ems && client_auth.is_some() {
        // Without the extended master secret a TLS 1.2 session's secret can
        // be made equal to another session's (the triple-handshake attack),
        // which lets a man in the middle resume as the certificate's owner.
        return err(
            "server.tls.require_ems",
            "false cannot be combined with client_auth: a TLS 1.2 session without the \
             extended master secret could be resumed to impersonate a client certificate",
        );
    }
    Ok(TlsConfig {
        listen,
        default_cert,
        sni,
        handshake_timeout,
        ticket_key_rotation,
        min_version,
        require_ems,
        client_auth,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    const FULL: &str = r#"
[server.tls]
listen = "127.0.0.1:8443"
cert = "tls/fullchain.pem"
key = "tls/key.pem"
handshake_timeout = "3s"
ticket_key_rotation = "1h"
min_version = "1.3"
sni = [ { cert = "a.pem", key = "a.key" }, { cert = "w.pem", key = "w.key", names = ["*.Example.com"] } ]
client_auth = { ca = "ca.pem" }
"#;

    #[test]
    fn every_key_is_read() {
        let c = Config::from_toml_str(FULL).expect("valid");
        let t = c.server.tls.expect("tls");
        assert_eq!(t.listen.port(), 8443);
        assert_eq!(t.default_cert.cert, PathBuf::from("tls/fullchain.pem"));
        assert_eq!(t.handshake_timeout, Duration::from_secs(3));
        assert_eq!(t.ticket_key_rotation, Duration::from_secs(3600));
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(t.sni.len(), 2);
        assert!(t.sni[0].names.is_none());
        assert_eq!(
            t.sni[1].names.as_deref(),
            Some(&["*.example.com".to_string()][..])
        );
        let ca = t.client_auth.expect("client_auth");
        assert!(ca.required, "required defaults to true");
        assert!(
            t.require_ems,
            "the extended master secret is required by default"
        );
        let base = "[server.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"c\"\nkey = \"k\"\n";
        let c = Config::from_toml_str(&format!("{base}require_ems = false\n")).expect("valid");
        assert!(!c.server.tls.expect("tls").require_ems);
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "[server.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"c\"\nkey = \"k\"\n";
        for (extra, key) in [
            (
                "ticket_key_rotation = \"2d\"",
                "server.tls.ticket_key_rotation",
            ),
            (
                "ticket_key_rotation = \"10s\"",
                "server.tls.ticket_key_rotation",
            ),
            ("handshake_timeout = \"0s\"", "server.tls.handshake_timeout"),
            (
                "sni = [ { cert = \"a\", key = \"b\", names = [] } ]",
                "server.tls.sni[0].names",
            ),
            (
                "sni = [ { cert = \"a\", key = \"b\", names = [\"bad name\"] } ]",
                "server.tls.sni[0].names",
            ),
            ("sni = [ { cert = \"a\" } ]", "server.tls.sni[0].key"),
            (
                "client_auth = { required = true }",
                "server.tls.client_auth.ca",
            ),
            (
                "require_ems = false\nclient_auth = { ca = \"ca.pem\" }",
                "server.tls.require_ems",
            ),
        ] {
            let e = Config::from_toml_str(&format!("{base}{extra}\n")).expect_err(extra);
            assert!(e.0.starts_with(key), "{extra}: {e}");
        }
        let e = Config::from_toml_str(
            "[server]\nlisten = \"127.0.0.1:8443\"\n[server.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"c\"\nkey = \"k\"\n",
        )
        .expect_err("same address");
        assert!(e.0.starts_with("server.tls.listen"), "{e}");
        let e = Config::from_toml_str("[server.tls]\nlisten = \"127.0.0.1:8443\"\nkey = \"k\"\n")
            .expect_err("no cert");
        assert!(e.0.starts_with("server.tls.cert"), "{e}");
    }
}
