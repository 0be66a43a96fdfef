//! Client certificates (`type = "mtls"`): the consumer is the identity of
//! the client certificate the TLS listener verified (`[server.tls]
//! client_auth`): its subject common name, else its first SAN.
//!
//! The handshake already proved the client holds the certificate's key and
//! that the certificate chains to the client CA, so this step only maps the
//! identity: an optional allow-list (`allowed`) and per-identity scopes
//! (`scopes`). Identities named in the config get their `Identity` built
//! once at start-up; any other verified identity (no `allowed` list) gets
//! one built per request, with no scopes.

use std::collections::HashMap;

use super::Identity;

/// One `[auth.NAME]` section of type `mtls` (immutable, shared by every
/// shard).
#[derive(Debug)]
pub struct MtlsConfig {
    pub name: String,
    /// Only these identities are admitted; `false` = any verified one.
    restricted: bool,
    /// Identities named by `allowed` or `scopes`, with their scopes.
    known: HashMap<Box<str>, Identity>,
}

/// What a verified identity maps to.
pub(crate) enum Mapped<'a> {
    Known(&'a Identity),
    /// Verified but named nowhere in the config (no scopes).
    Other(Identity),
    /// Verified but not on the `allowed` list.
    NotAllowed,
}

impl MtlsConfig {
    /// `allowed`: `None` = any verified identity. `scopes`: identity →
    /// scopes; with `allowed`, every identity here must be allowed too.
    pub fn new(
        name: String,
        allowed: Option<Vec<String>>,
        scopes: Vec<(String, Vec<String>)>,
    ) -> Result<MtlsConfig, String> {
        let mut known: HashMap<Box<str>, Identity> = HashMap::new();
        let restricted = allowed.is_some();
        for a in allowed.unwrap_or_default() {
            if a.is_empty() {
                return Err("allowed: an identity cannot be empty".into());
            }
            known.insert(a.clone().into(), identity(&a, &[]));
        }
        for (who, s) in scopes {
            if restricted && !known.contains_key(who.as_str()) {
                return Err(format!("scopes: {who:?} is not in allowed"));
            }
            if who.is_empty() {
                return Err("scopes: an identity cannot be empty".into());
            }
            known.insert(who.clone().into(), identity(&who, &s));
        }
        Ok(MtlsConfig {
            name,
            restricted,
            known,
        })
    }

    /// Maps a verified client identity.
    pub(crate) fn map(&self, who: &str) -> Mapped<'_> {
        match self.known.get(who) {
            Some(id) => Mapped::Known(id),
            None if self.restricted => Mapped::NotAllowed,
            None => Mapped::Other(identity(who, &[])),
        }
    }
}

fn identity(who: &str, scopes: &[String]) -> Identity {
    Identity {
        consumer: who.into(),
        scopes: scopes.iter().map(|s| s.as_str().into()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_and_scopes() {
        let open = MtlsConfig::new(
            "m".into(),
            None,
            vec![("alice".into(), vec!["admin".into()])],
        )
        .unwrap();
        assert!(matches!(open.map("alice"), Mapped::Known(id) if id.has_all(&["admin".into()])));
        assert!(
            matches!(open.map("bob"), Mapped::Other(id) if &*id.consumer == "bob" && id.scopes.is_empty())
        );
        let closed = MtlsConfig::new("m".into(), Some(vec!["alice".into()]), vec![]).unwrap();
        assert!(matches!(closed.map("alice"), Mapped::Known(_)));
        assert!(matches!(closed.map("bob"), Mapped::NotAllowed));
        let e = MtlsConfig::new(
            "m".into(),
            Some(vec!["alice".into()]),
            vec![("bob".into(), vec![])],
        )
        .unwrap_err();
        assert!(e.contains("bob"), "{e}");
    }
}
