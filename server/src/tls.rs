//! Building the rustls server config from `[server.tls]`, and reloading it.
//!
//! - Versions: TLS 1.3 and 1.2 (or 1.3 only); nothing older exists in
//!   rustls. Cipher suites: the ring provider's, all AEAD with ephemeral
//!   key exchange (TLS 1.3: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305;
//!   TLS 1.2: ECDHE-ECDSA/RSA with the same three), in the server's order.
//!   No CBC, no RSA key exchange, no renegotiation, no compression.
//! - ALPN: `http/1.1` only; a client that offers ALPN without it is
//!   refused (RFC 7301 §3.2).
//! - Resumption: stateless tickets whose keys rotate every
//!   `ticket_key_rotation` (a ticket is accepted for at most twice that),
//!   shared by every shard (a resumed client may land on any of them) and
//!   kept across reloads; plus rustls's in-memory session-ID cache for
//!   TLS 1.2 clients without ticket support.
//! - SNI: exact host names, then `*.parent` wildcards, else the default
//!   certificate.
//! - mTLS: client certificates verified against `client_auth.ca` (chain,
//!   validity period, the clientAuth key usage).
//! - Reload: every file is read again and a new config is built; only when
//!   that succeeds does it replace the old one (new handshakes use it;
//!   open connections keep theirs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::{ring, CryptoProvider, GetRandomFailed};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shardline_shard::tls::{certificate_dns_names, certificate_validity, Validity};
use shardline_shard::TlsAcceptor;

use crate::config_tls::{CertPaths, TlsConfig, TlsVersion};

/// How far ahead of a served certificate's expiry the start and every
/// reload warn: two weeks leaves time to renew by hand when automation
/// failed (ACME clients renew at 30 days left).
const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;

/// A certificate the listener serves (the default one or an SNI entry):
/// its file and its leaf's validity period, for the expiry gauge.
#[derive(Debug, Clone)]
pub(crate) struct ServedCert {
    pub file: String,
    /// `None` when the leaf's DER could not be read for its dates.
    pub validity: Option<Validity>,
}

/// The running HTTPS listener's TLS state: what a reload needs.
pub(crate) struct TlsRuntime {
    config: TlsConfig,
    keys: Mutex<TicketState>,
    acceptor: Arc<TlsAcceptor>,
    served: Mutex<Vec<ServedCert>>,
}

/// The ticket keys in use and the client CAs they were issued under.
struct TicketState {
    ticketer: Arc<dyn ProducesTickets>,
    client_cas: Option<Vec<CertificateDer<'static>>>,
}

/// A reloaded TLS config, checked and built but not yet in use: a reload
/// commits it only when the rest of the config is good too.
pub(crate) struct PreparedTls {
    server_config: Arc<ServerConfig>,
    keys: TicketState,
    served: Vec<ServedCert>,
}

impl TlsRuntime {
    pub(crate) fn new(config: TlsConfig) -> Result<TlsRuntime, String> {
        let client_cas = read_client_cas(&config)?;
        let ticketer = new_ticketer(&config)?;
        let (server_config, served) = build(&config, &ticketer, client_cas.as_deref())?;
        warn_about_validity(&served, unix_now());
        let acceptor = Arc::new(TlsAcceptor::new(server_config, config.handshake_timeout));
        Ok(TlsRuntime {
            config,
            keys: Mutex::new(TicketState {
                ticketer,
                client_cas,
            }),
            acceptor,
            served: Mutex::new(served),
        })
    }

    /// The certificates new handshakes are served, with their validity.
    pub(crate) fn served(&self) -> Vec<ServedCert> {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn acceptor(&self) -> Arc<TlsAcceptor> {
        Arc::clone(&self.acceptor)
    }

    /// Re-reads every certificate, key and CA file and builds the config
    /// they make, without using it yet. `Err` says which file is wrong.
    pub(crate) fn prepare(&self) -> Result<PreparedTls, String> {
        let client_cas = read_client_cas(&self.config)?;
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // A session ticket carries the client certificate it was issued
        // for, and resuming does not verify that certificate again: once
        // the trusted client CAs change, tickets from before must stop
        // working, or a certificate from a CA no longer trusted would keep
        // authenticating by resumption for the ticket's lifetime. New keys
        // make every old ticket undecryptable (a full handshake follows).
        let ticketer = if client_cas == keys.client_cas {
            Arc::clone(&keys.ticketer)
        } else {
            new_ticketer(&self.config)?
        };
        drop(keys);
        let (server_config, served) = build(&self.config, &ticketer, client_cas.as_deref())?;
        Ok(PreparedTls {
            server_config,
            keys: TicketState {
                ticketer,
                client_cas,
            },
            served,
        })
    }

    /// New handshakes use the prepared config from now on.
    pub(crate) fn commit(&self, prepared: PreparedTls) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        *keys = prepared.keys;
        self.acceptor.replace(prepared.server_config);
        warn_about_validity(&prepared.served, unix_now());
        *self.served.lock().unwrap_or_else(PoisonError::into_inner) = prepared.served;
    }

    /// [`TlsRuntime::prepare`] then [`TlsRuntime::commit`]. On error the
    /// old config stays in use and the error says why.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let prepared = self.prepare()?;
        self.commit(prepared);
        Ok(())
    }
}

/// Ticket keys replaced whole every `ticket_key_rotation`.
fn new_ticketer(config: &TlsConfig) -> Result<Arc<dyn ProducesTickets>, String> {
    let secs = u32::try_from(config.ticket_key_rotation.as_secs()).unwrap_or(u32::MAX);
    Ok(Arc::new(
        rustls::ticketer::TicketRotator::new(secs, ticket_keys)
            .map_err(|e| format!("server.tls: cannot create session-ticket keys: {e}"))?,
    ))
}

/// The client CA certificates of `client_auth`, when it is configured.
fn read_client_cas(config: &TlsConfig) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
    config
        .client_auth
        .as_ref()
        .map(|ca| read_certs("server.tls.client_auth.ca", &ca.ca))
        .transpose()
}

/// Checks that every certificate, key and CA file of `config` loads and
/// fits, as a start would (`shardline check`); nothing is kept.
pub(crate) fn validate(config: &TlsConfig) -> Result<(), String> {
    let client_cas = read_client_cas(config)?;
    let ticketer = new_ticketer(config)?;
    build(config, &ticketer, client_cas.as_deref()).map(drop)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A served certificate that is expired, not yet valid or close to expiry
/// still starts (as nginx does: the clock may be what is wrong), but says
/// so: verifying clients refuse it.
fn warn_about_validity(served: &[ServedCert], now: i64) {
    for line in validity_warnings(served, now) {
        tracing::warn!("{line}");
    }
}

fn validity_warnings(served: &[ServedCert], now: i64) -> Vec<String> {
    let mut out = Vec::new();
    for c in served {
        let Some(v) = c.validity else { continue };
        if now >= v.not_after {
            out.push(format!(
                "TLS certificate {} expired {} days ago: clients that verify it refuse the \
                 handshake",
                c.file,
                (now - v.not_after) / 86_400
            ));
        } else if now < v.not_before {
            out.push(format!(
                "TLS certificate {} is not valid for another {} days (check the clock): clients \
                 that verify it refuse the handshake",
                c.file,
                (v.not_before - now + 86_399) / 86_400
            ));
        } else if v.not_after - now < EXPIRY_WARNING_SECS {
            out.push(format!(
                "TLS certificate {} expires in {} hours",
                c.file,
                (v.not_after - now) / 3_600
            ));
        }
    }
    out
}

/// A fresh set of ticket keys. rustls's ring ticketer keeps its own keys
/// for 6 hours; the outer `TicketRotator` replaces the whole set every
/// `ticket_key_rotation` (at most 6 hours, see `config_tls`).
fn ticket_keys() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
    ring::Ticketer::new()
        .map(|t| Box::new(SharedTicketer(t)) as Box<dyn ProducesTickets>)
        .map_err(|_| GetRandomFailed)
}

#[derive(Debug)]
struct SharedTicketer(Arc<dyn ProducesTickets>);

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }
    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn build(
    cfg: &TlsConfig,
    ticketer: &Arc<dyn ProducesTickets>,
    client_cas: Option<&[CertificateDer<'static>]>,
) -> Result<(Arc<ServerConfig>, Vec<ServedCert>), String> {
    let provider = provider();
    let default = load_certified_key("server.tls", &cfg.default_cert, &provider)?;
    let served_cert = |paths: &CertPaths, ck: &CertifiedKey| ServedCert {
        file: paths.cert.display().to_string(),
        validity: ck
            .cert
            .first()
            .and_then(|leaf| certificate_validity(leaf.as_ref())),
    };
    let mut served = vec![served_cert(&cfg.default_cert, &default)];
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: Arc::clone(&default),
        claimed: HashMap::new(),
    };
    // The default certificate also answers for its own names, so an SNI
    // entry can never shadow it by accident with a wildcard.
    for name in certificate_dns_names(default.cert[0].as_ref()) {
        resolver.add(&name, &default, "server.tls.cert")?;
    }
    for (i, s) in cfg.sni.iter().enumerate() {
        let key = format!("server.tls.sni[{i}]");
        let ck = load_certified_key(&key, &s.paths, &provider)?;
        served.push(served_cert(&s.paths, &ck));
        let names = match &s.names {
            Some(n) => n.clone(),
            None => certificate_dns_names(ck.cert[0].as_ref()),
        };
        if names.is_empty() {
            return Err(format!(
                "{key}.cert: {}: the certificate names no DNS host; give {key}.names",
                s.paths.cert.display()
            ));
        }
        for name in names {
            resolver.add(&name, &ck, &key)?;
        }
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("server.tls: {e}"))?;
    let builder = match (&cfg.client_auth, client_cas) {
        (Some(ca), Some(certs)) => {
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("server.tls.client_auth.ca: {}: {e}", ca.ca.display()))?;
            }
            let mut v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if !ca.required {
                v = v.allow_unauthenticated();
            }
            let verifier = v
                .build()
                .map_err(|e| format!("server.tls.client_auth.ca: {}: {e}", ca.ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = Arc::clone(ticketer);
    // The server's order decides (the provider's: AES-256-GCM, AES-128-GCM,
    // ChaCha20-Poly1305 per version), so a client's odd preference cannot
    // pick a weaker suite than the server would.
    config.ignore_client_order = true;
    // RFC 7627 §5.3: no TLS 1.2 session without the extended master
    // secret (the triple-handshake attack, worst with client
    // certificates) unless `require_ems = false` lets legacy clients in
    // (OpenSSL 1.0.2, LibreSSL 2.x); TLS 1.3 is not affected.
    config.require_ems = cfg.require_ems;
    Ok((Arc::new(config), served))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key}: cannot read {}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// One readable line for a PEM error (the variants' Debug output dumps
/// byte arrays).
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item found".to_string(),
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section has no \"-----END {}-----\" line (truncated file?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a PEM section starts with an invalid line: {:?}",
            String::from_utf8_lossy(line)
        ),
        Error::Base64Decode(what) => format!("a PEM section is not valid base64: {what}"),
        other => format!("not a valid PEM file: {other:?}"),
    }
}

fn load_certified_key(
    key: &str,
    paths: &CertPaths,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(&format!("{key}.cert"), &paths.cert)?;
    let key_path = paths.key.display();
    if let Ok(text) = std::fs::read(&paths.key) {
        // The PEM parser skips sections it does not know, so an encrypted
        // key would read as "no key found" or as bad base64.
        if find(&text, b"ENCRYPTED PRIVATE KEY").is_some()
            || find(&text, b"Proc-Type: 4,ENCRYPTED").is_some()
        {
            return Err(format!(
                "{key}.key: {key_path} is encrypted; shardline reads no passphrases: store the \
                 key decrypted (openssl pkey -in IN -out OUT), readable only by the server"
            ));
        }
    }
    let private = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| {
        format!(
            "{key}.key: cannot read a private key from {key_path}: {}",
            pem_error(&e)
        )
    })?;
    let signer = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| {
            format!(
                "{key}.key: {key_path}: unsupported private key ({e}); use RSA of 2048 bits or \
             more, ECDSA P-256 or P-384, or Ed25519"
            )
        })?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{key}.key: {key_path} is not the key of the first certificate in {} (the \
                 file must start with the server's own certificate, then its intermediates)",
                paths.cert.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{key}.cert: {}: the first certificate cannot be used: {e}",
                paths.cert.display()
            ))
        }
    }
    Ok(Arc::new(ck))
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Picks a certificate by the client's SNI host name.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Which config key claimed each name (exact, and `*.` for wildcards),
    /// for the error when a second one does.
    claimed: HashMap<String, String>,
}

impl SniResolver {
    /// Serves `name` with `ck`; `owner` is the config key it comes from.
    /// A name two entries claim is an error rather than "the last one
    /// wins": which certificate a client gets must not depend on the order
    /// of the list.
    fn add(&mut self, name: &str, ck: &Arc<CertifiedKey>, owner: &str) -> Result<(), String> {
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name).to_string();
        if let Some(first) = self.claimed.get(&name) {
            if first == owner {
                // A certificate listing one name twice.
                return Ok(());
            }
            return Err(format!(
                "{owner}: host name {name:?} is already served by {first}; each name may pick \
                 only one certificate (give {owner}.names to leave it out)"
            ));
        }
        self.claimed.insert(name.clone(), owner.to_string());
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.insert(parent.to_string(), Arc::clone(ck)),
            None => self.exact.insert(name, Arc::clone(ck)),
        };
        Ok(())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(Arc::clone(&self.default));
        };
        // rustls hands over SNI already validated and lower-cased.
        if let Some(ck) = self.exact.get(name) {
            return Some(Arc::clone(ck));
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return Some(Arc::clone(ck));
            }
        }
        Some(Arc::clone(&self.default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(not_before: i64, not_after: i64) -> ServedCert {
        ServedCert {
            file: "c.pem".into(),
            validity: Some(Validity {
                not_before,
                not_after,
            }),
        }
    }

    #[test]
    fn validity_warnings_name_the_file_and_the_problem() {
        let now = 1_800_000_000;
        let day = 86_400;
        let w = validity_warnings(&[served(now - 90 * day, now - 3 * day)], now);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("c.pem expired 3 days ago"), "{}", w[0]);
        let w = validity_warnings(&[served(now + day / 2, now + 90 * day)], now);
        assert!(w[0].contains("not valid for another 1 days"), "{}", w[0]);
        let w = validity_warnings(&[served(now - day, now + 5 * day + 3_600)], now);
        assert!(w[0].contains("expires in 121 hours"), "{}", w[0]);
        // Fine, or dates unknown: nothing to say.
        assert!(validity_warnings(&[served(now - day, now + 30 * day)], now).is_empty());
        let unknown = ServedCert {
            file: "x.pem".into(),
            validity: None,
        };
        assert!(validity_warnings(&[unknown], now).is_empty());
    }
}
