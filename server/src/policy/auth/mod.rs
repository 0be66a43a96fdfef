//! Authentication (who is calling: API key, JWT or TLS client certificate)
//! and the identity it yields: a consumer id and scopes.
//!
//! Failures answer 401 with a `WWW-Authenticate` challenge (RFC 9110
//! §11.6.1, RFC 6750 §3 for bearer tokens); missing scopes answer 403
//! (`insufficient_scope`).

pub mod api_key;
pub mod jwt;
pub mod mtls;

use std::sync::Arc;

use shardline_protocol::request::RequestHead;

use self::api_key::ApiKeys;
use self::jwt::{JwtVerifier, TokenError};
use self::mtls::{Mapped, MtlsConfig};

/// Who a request authenticated as.
#[derive(Debug)]
pub struct Identity {
    pub consumer: Box<str>,
    pub scopes: Box<[Box<str>]>,
}

impl Identity {
    pub fn has_all(&self, wanted: &[String]) -> bool {
        wanted
            .iter()
            .all(|w| self.scopes.iter().any(|s| **s == **w))
    }
}

/// One shard's authenticator for one `[auth.NAME]` section.
pub(crate) enum Authenticator {
    ApiKey(Arc<ApiKeys>),
    Jwt(JwtVerifier),
    Mtls(Arc<MtlsConfig>),
}

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No credentials were presented.
    Missing,
    /// The credential field came more than once (two `Authorization` or
    /// two API-key fields): a proxy in front may have checked the other
    /// one, so neither is taken.
    Ambiguous,
    /// An API key that is not known.
    UnknownKey,
    /// A token that did not verify.
    Token(TokenError),
    /// No verified TLS client certificate (plain listener, or TLS without
    /// a client certificate where `client_auth.required = false`).
    NoClientCert,
    /// A verified client certificate whose identity is not on the
    /// `allowed` list (403: the client is known, just not admitted).
    NotAllowed,
}

impl AuthFailure {
    /// The audit log's reason word for this refusal.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_credentials",
            AuthFailure::Ambiguous => "ambiguous_credentials",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Token(_) => "invalid_token",
            AuthFailure::NoClientCert => "no_client_certificate",
            AuthFailure::NotAllowed => "identity_not_allowed",
        }
    }

    pub(crate) fn detail(self) -> &'static str {
        match self {
            AuthFailure::Missing => "this route needs credentials",
            AuthFailure::Ambiguous => "the credentials field was sent more than once; send one",
            AuthFailure::UnknownKey => "the API key is not valid",
            AuthFailure::Token(t) => t.describe(),
            // Also what a verified certificate that names no client gets
            // (no common name, no DNS, e-mail or URI SAN): say what counts.
            AuthFailure::NoClientCert => {
                "this route needs a verified TLS client certificate that names its client \
                 (a subject common name, or a DNS, e-mail or URI subject alternative name)"
            }
            AuthFailure::NotAllowed => "the client certificate's identity is not allowed here",
        }
    }
}

/// The one value of a credentials field. RFC 9110 §5.3: a field that is
/// not a list must not be sent twice; which copy counts differs between
/// implementations, so two copies are refused rather than one picked.
fn single_field<'b>(
    head: &RequestHead<'b, '_>,
    name: &str,
) -> Result<Option<&'b [u8]>, AuthFailure> {
    let mut values = head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value);
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthFailure::Ambiguous);
    }
    Ok(first)
}

fn bearer<'b>(head: &RequestHead<'b, '_>) -> Result<Option<&'b [u8]>, AuthFailure> {
    let Some(v) = single_field(head, "authorization")? else {
        return Ok(None);
    };
    // RFC 9110 §11.1: the scheme is case-insensitive; RFC 6750 §2.1.
    if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
        let t = &v[7..];
        let start = t.iter().position(|b| *b != b' ').unwrap_or(t.len());
        Ok(Some(&t[start..]))
    } else {
        Ok(None)
    }
}

impl Authenticator {
    pub(crate) fn name(&self) -> &str {
        match self {
            Authenticator::ApiKey(k) => &k.name,
            Authenticator::Jwt(j) => j.name(),
            Authenticator::Mtls(m) => &m.name,
        }
    }

    /// The audit log's reason word for an admitted request.
    pub(crate) fn valid_reason(&self) -> &'static str {
        match self {
            Authenticator::ApiKey(_) => "valid_key",
            Authenticator::Jwt(_) => "valid_token",
            Authenticator::Mtls(_) => "valid_certificate",
        }
    }

    /// Authenticates the request and hands the identity to `f`.
    /// `tls_identity` is the connection's verified client certificate
    /// identity (only `mtls` looks at it).
    pub(crate) fn check<R>(
        &self,
        head: &RequestHead<'_, '_>,
        tls_identity: Option<&str>,
        f: impl FnOnce(&Identity) -> R,
    ) -> Result<R, AuthFailure> {
        match self {
            Authenticator::Mtls(m) => {
                let Some(who) = tls_identity else {
                    return Err(AuthFailure::NoClientCert);
                };
                match m.map(who) {
                    Mapped::Known(id) => Ok(f(id)),
                    Mapped::Other(id) => Ok(f(&id)),
                    Mapped::NotAllowed => Err(AuthFailure::NotAllowed),
                }
            }
            Authenticator::ApiKey(keys) => {
                let from_header = match keys.header.as_deref() {
                    Some(h) => single_field(head, h)?,
                    None => None,
                };
                let presented: Option<std::borrow::Cow<'_, [u8]>> = match from_header {
                    Some(v) => Some(v.into()),
                    None => keys
                        .query
                        .as_deref()
                        .and_then(|q| head.query.and_then(|hq| api_key::query_param(hq, q)))
                        .map(Into::into),
                };
                let Some(p) = presented.filter(|p| !p.is_empty()) else {
                    return Err(AuthFailure::Missing);
                };
                match keys.lookup(&p) {
                    Some(id) => Ok(f(id)),
                    None => Err(AuthFailure::UnknownKey),
                }
            }
            Authenticator::Jwt(v) => {
                let Some(token) = bearer(head)?.filter(|t| !t.is_empty()) else {
                    return Err(AuthFailure::Missing);
                };
                v.verify(token, f).map_err(AuthFailure::Token)
            }
        }
    }

    /// The `WWW-Authenticate` value for a 401.
    pub(crate) fn challenge(&self, failure: AuthFailure) -> String {
        match self {
            Authenticator::ApiKey(k) => {
                let via = match (&k.header, &k.query) {
                    (Some(h), _) => format!("header=\"{h}\""),
                    (None, Some(q)) => format!("query=\"{q}\""),
                    (None, None) => String::new(),
                };
                format!("ApiKey realm=\"{}\", {via}", k.name)
            }
            Authenticator::Jwt(j) => match failure {
                // RFC 6750 §3.1: no error code when no credentials came.
                AuthFailure::Missing => format!("Bearer realm=\"{}\"", j.name()),
                f => format!(
                    "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                    j.name(),
                    f.detail()
                ),
            },
            // No registered scheme names client certificates; the
            // challenge still says which credentials the route wants.
            Authenticator::Mtls(m) => format!("ClientCertificate realm=\"{}\"", m.name),
        }
    }

    /// The `WWW-Authenticate` value for a 403 (missing scopes).
    pub(crate) fn scope_challenge(&self, scopes: &[String]) -> String {
        let scheme = match self {
            Authenticator::ApiKey(_) => "ApiKey",
            Authenticator::Jwt(_) => "Bearer",
            Authenticator::Mtls(_) => "ClientCertificate",
        };
        format!(
            "{scheme} realm=\"{}\", error=\"insufficient_scope\", scope=\"{}\"",
            self.name(),
            scopes.join(" ")
        )
    }
}
