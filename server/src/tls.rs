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
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider, GetRandomFailed};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shardline_shard::tls::certificate_dns_names;
use shardline_shard::TlsAcceptor;

use crate::config_tls::{CertPaths, TlsConfig, TlsVersion};

/// The running HTTPS listener's TLS state: what a reload needs.
pub(crate) struct TlsRuntime {
    config: TlsConfig,
    ticketer: Arc<dyn ProducesTickets>,
    acceptor: Arc<TlsAcceptor>,
}

impl TlsRuntime {
    pub(crate) fn new(config: TlsConfig) -> Result<TlsRuntime, String> {
        let secs = u32::try_from(config.ticket_key_rotation.as_secs()).unwrap_or(u32::MAX);
        let ticketer: Arc<dyn ProducesTickets> = Arc::new(
            rustls::ticketer::TicketRotator::new(secs, ticket_keys)
                .map_err(|e| format!("server.tls: cannot create session-ticket keys: {e}"))?,
        );
        let server_config = build(&config, &ticketer)?;
        let acceptor = Arc::new(TlsAcceptor::new(server_config, config.handshake_timeout));
        Ok(TlsRuntime {
            config,
            ticketer,
            acceptor,
        })
    }

    pub(crate) fn acceptor(&self) -> Arc<TlsAcceptor> {
        Arc::clone(&self.acceptor)
    }

    /// Re-reads every certificate, key and CA file. On error the old
    /// config stays in use and the error says which file is wrong.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let server_config = build(&self.config, &self.ticketer)?;
        self.acceptor.replace(server_config);
        Ok(())
    }
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
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let default = load_certified_key("server.tls", &cfg.default_cert, &provider)?;
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: Arc::clone(&default),
    };
    // The default certificate also answers for its own names, so an SNI
    // entry can never shadow it by accident with a wildcard.
    for name in certificate_dns_names(default.cert[0].as_ref()) {
        resolver.add(&name, &default);
    }
    for (i, s) in cfg.sni.iter().enumerate() {
        let key = format!("server.tls.sni[{i}]");
        let ck = load_certified_key(&key, &s.paths, &provider)?;
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
            resolver.add(&name, &ck);
        }
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("server.tls: {e}"))?;
    let builder = match &cfg.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("server.tls.client_auth.ca", &ca.ca)? {
                roots
                    .add(cert)
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
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = Arc::clone(ticketer);
    // The server's order decides (the provider's: AES-256-GCM, AES-128-GCM,
    // ChaCha20-Poly1305 per version), so a client's odd preference cannot
    // pick a weaker suite than the server would.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
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

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item found".to_string(),
        other => format!("{other:?}"),
    }
}

fn load_certified_key(
    key: &str,
    paths: &CertPaths,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(&format!("{key}.cert"), &paths.cert)?;
    let private = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| {
        format!(
            "{key}.key: cannot read a private key from {}: {}",
            paths.key.display(),
            pem_error(&e)
        )
    })?;
    let ck = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "{key}.key: {} does not fit {}: {e}",
            paths.key.display(),
            paths.cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// Picks a certificate by the client's SNI host name.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn add(&mut self, name: &str, ck: &Arc<CertifiedKey>) {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.insert(parent.to_string(), Arc::clone(ck)),
            None => self.exact.insert(name, Arc::clone(ck)),
        };
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
