//! CORS per route (Fetch standard §3.2): preflights are answered here,
//! never forwarded to an upstream; actual requests from an allowed origin
//! get `Access-Control-Allow-Origin` (and credentials / exposed headers).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! is matched against the route that the *requested* method and the path
//! select, so a `POST`-only route still gets its preflight answered. A
//! preflight from an origin, for a method or with headers the route does
//! not allow is refused with 403 and no CORS headers.

use super::config::CorsConfig;

/// Request headers allowed cross-origin when `headers` is not configured:
/// what JSON APIs behind this gateway commonly need.
pub const DEFAULT_ALLOWED_HEADERS: [&str; 5] = [
    "content-type",
    "authorization",
    "x-api-key",
    "x-request-id",
    "idempotency-key",
];

/// Response fields as (name, value).
pub(crate) type HeaderList = Vec<(&'static str, Vec<u8>)>;

pub(crate) struct Cors {
    cfg: CorsConfig,
    allow_methods: String,
    allow_headers: String,
    /// Raw header lines added to every allowed actual response, after the
    /// origin line.
    actual_tail: Vec<u8>,
}

/// Why a preflight was refused.
pub(crate) enum PreflightError {
    Origin,
    Method,
    Header(String),
}

impl PreflightError {
    pub(crate) fn detail(&self) -> String {
        match self {
            PreflightError::Origin => "the origin is not allowed for this route".into(),
            PreflightError::Method => "the requested method is not allowed cross-origin".into(),
            PreflightError::Header(h) => {
                format!("the request header {h:?} is not allowed cross-origin")
            }
        }
    }
}

impl Cors {
    /// `route_methods`: the route's own methods (`None` = any).
    pub(crate) fn new(cfg: CorsConfig, route_methods: Option<&[String]>) -> Cors {
        let methods: Vec<String> = if !cfg.methods.is_empty() {
            cfg.methods.clone()
        } else {
            match route_methods {
                Some(m) => m.to_vec(),
                None => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                    .iter()
                    .map(|m| m.to_string())
                    .collect(),
            }
        };
        let headers: Vec<String> = if cfg.headers.is_empty() {
            DEFAULT_ALLOWED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect()
        } else {
            cfg.headers.iter().filter(|h| *h != "*").cloned().collect()
        };
        let mut actual_tail = Vec::new();
        if cfg.credentials {
            actual_tail.extend_from_slice(b"Access-Control-Allow-Credentials: true\r\n");
        }
        if !cfg.expose_headers.is_empty() {
            actual_tail.extend_from_slice(b"Access-Control-Expose-Headers: ");
            actual_tail.extend_from_slice(cfg.expose_headers.join(", ").as_bytes());
            actual_tail.extend_from_slice(b"\r\n");
        }
        Cors {
            allow_methods: methods.join(", "),
            allow_headers: headers.join(", "),
            actual_tail,
            cfg,
        }
    }

    fn origin_allowed(&self, origin: &[u8]) -> bool {
        self.cfg.any_origin || self.cfg.origins.iter().any(|o| o.as_bytes() == origin)
    }

    /// What `Access-Control-Allow-Origin` says for `origin`.
    fn allow_origin<'o>(&self, origin: &'o [u8]) -> &'o [u8] {
        if self.cfg.any_origin && !self.cfg.credentials {
            b"*"
        } else {
            origin
        }
    }

    /// Header lines for an actual (not preflight) response.
    pub(crate) fn actual(&self, origin: Option<&[u8]>, out: &mut Vec<u8>) {
        // Responses differ by Origin unless every origin gets `*`.
        if !self.cfg.any_origin || self.cfg.credentials {
            out.extend_from_slice(b"Vary: Origin\r\n");
        }
        let Some(origin) = origin.filter(|o| self.origin_allowed(o) && valid_origin(o)) else {
            return;
        };
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(self.allow_origin(origin));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.actual_tail);
    }

    /// The headers of a successful preflight response.
    pub(crate) fn preflight(
        &self,
        origin: &[u8],
        method: &[u8],
        request_headers: Option<&[u8]>,
    ) -> Result<HeaderList, PreflightError> {
        if !valid_origin(origin) || !self.origin_allowed(origin) {
            return Err(PreflightError::Origin);
        }
        let m = std::str::from_utf8(method).unwrap_or("");
        if !self.allow_methods.split(", ").any(|x| x == m) {
            return Err(PreflightError::Method);
        }
        let mut echoed = Vec::new();
        if let Some(rh) = request_headers {
            for h in rh.split(|b| *b == b',') {
                let h = String::from_utf8_lossy(h).trim().to_ascii_lowercase();
                if h.is_empty() {
                    continue;
                }
                let ok = self.cfg.any_header || self.allow_headers.split(", ").any(|x| x == h);
                if !ok {
                    return Err(PreflightError::Header(h));
                }
                echoed.push(h);
            }
        }
        let mut out: Vec<(&'static str, Vec<u8>)> = vec![
            (
                "Access-Control-Allow-Origin",
                self.allow_origin(origin).to_vec(),
            ),
            (
                "Access-Control-Allow-Methods",
                self.allow_methods.as_bytes().to_vec(),
            ),
        ];
        let headers = if self.cfg.any_header {
            echoed.join(", ")
        } else {
            self.allow_headers.clone()
        };
        if !headers.is_empty() {
            out.push(("Access-Control-Allow-Headers", headers.into_bytes()));
        }
        if self.cfg.credentials {
            out.push(("Access-Control-Allow-Credentials", b"true".to_vec()));
        }
        if let Some(age) = self.cfg.max_age {
            out.push((
                "Access-Control-Max-Age",
                age.as_secs().to_string().into_bytes(),
            ));
        }
        out.push((
            "Vary",
            b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_vec(),
        ));
        Ok(out)
    }
}

/// An origin we may echo in a header: printable, no separators.
fn valid_origin(o: &[u8]) -> bool {
    !o.is_empty() && o.len() <= 512 && o.iter().all(|b| b.is_ascii_graphic() && *b != b',')
}
