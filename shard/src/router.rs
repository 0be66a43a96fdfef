//! Method + path-template router (`/v1/users/{id}`, `/static/{*rest}`).
//!
//! Templates are compiled into a segment trie once, when a config snapshot is
//! built; matching walks the request path segment by segment without
//! allocating. At each node a literal segment is tried before a `{param}`,
//! and a `{param}` before a `{*catch_all}`, so the most specific template wins
//! whatever order routes were declared in.
//!
//! Paths are matched as received (no percent-decoding, no dot-segment
//! removal): a route for `/a/b` does not answer `/a/%62`. Gateways that
//! normalise paths differently from their upstreams are a classic source of
//! authorization bypasses, so the router refuses to guess.

use std::collections::HashMap;
use std::fmt;

use crate::hash::BuildBytesHasher;

/// Most `{param}` captures one template may hold. Templates with more are
/// rejected at build time, so the per-request capture array can live on the
/// stack; it is initialised and moved on every match, so it is kept small
/// (8 x 32 bytes) rather than generous.
pub const MAX_PATH_PARAMS: usize = 8;

/// A template that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError(String);

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouteError {}

/// Which methods a route answers. `Any` matches every method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    Any,
    Only(Vec<String>),
}

impl Methods {
    fn allows(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::Only(list) => list.iter().any(|m| m == method),
        }
    }
}

#[derive(Debug)]
struct Entry<T> {
    methods: Methods,
    value: T,
}

#[derive(Debug)]
struct Node<T> {
    literals: Vec<(String, Node<T>)>,
    param: Option<(String, Box<Node<T>>)>,
    catch_all: Option<(String, Vec<Entry<T>>)>,
    entries: Vec<Entry<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literals: Vec::new(),
            param: None,
            catch_all: None,
            entries: Vec::new(),
        }
    }
}

/// Captured `{name}` values, borrowed from the router (names) and from the
/// request buffer (values).
#[derive(Debug, Clone, Copy)]
pub struct Params<'r, 'p> {
    items: [(&'r str, &'p str); MAX_PATH_PARAMS],
    len: usize,
}

impl<'r, 'p> Params<'r, 'p> {
    fn new() -> Self {
        Params {
            items: [("", ""); MAX_PATH_PARAMS],
            len: 0,
        }
    }

    /// The raw (not percent-decoded) value captured for `name`.
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.items[..self.len]
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'r str, &'p str)> + '_ {
        self.items[..self.len].iter().copied()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Params<'_, '_> {
    fn default() -> Self {
        Params::new()
    }
}

/// The outcome of matching one request.
// `Found` carries the captures inline (a stack array, no allocation per
// request); the enum lives for one match on the stack, so its size is the
// cheaper trade than boxing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Match<'r, 'p, T> {
    Found(&'r T, Params<'r, 'p>),
    /// The path exists but not for this method; carries the `Allow` list
    /// (RFC 9110 §15.5.6), HEAD included wherever GET is.
    MethodNotAllowed(String),
    NotFound,
}

/// A compiled route table; immutable once built, shared by `Arc` across
/// shards.
#[derive(Debug)]
pub struct Router<T> {
    root: Node<T>,
    /// Templates without parameters, by their whole path: one hash lookup
    /// instead of a segment walk (the walk's `find('/')`, binary searches
    /// and capture copies were ~500 instructions per request for
    /// `/plaintext`, measured with callgrind). Such a template is the most
    /// specific match a path can have (a literal beats a parameter at
    /// every segment), so when one allows the method it is the answer the
    /// walk would give; when none does, the walk runs over the rest of the
    /// table, which no longer holds these entries. Keys come from the
    /// config, so the fixed hash ([`crate::hash`]) is safe here.
    exact: HashMap<Box<str>, Vec<Entry<T>>, BuildBytesHasher>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            root: Node::default(),
            exact: HashMap::default(),
        }
    }
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route. Two routes may share a template only if their method
    /// sets do not overlap.
    pub fn insert(&mut self, methods: Methods, template: &str, value: T) -> Result<(), RouteError> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| RouteError(format!("path template {template:?} must start with '/'")))?;
        if !template.contains(['{', '}']) {
            let entries = self.exact.entry(template.into()).or_default();
            return add_entry(entries, methods, value, template);
        }
        let mut node = &mut self.root;
        let mut names: Vec<&str> = Vec::new();
        // "/" is one empty segment, exactly as `at` splits the request path.
        let segments: Vec<&str> = rest.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if let Some(name) = inner.strip_prefix('*') {
                    if i + 1 != segments.len() {
                        return Err(RouteError(format!(
                            "path template {template:?}: {{*{name}}} must be the last segment"
                        )));
                    }
                    check_param_name(template, name, &mut names)?;
                    let slot = node
                        .catch_all
                        .get_or_insert_with(|| (name.to_string(), Vec::new()));
                    if slot.0 != name {
                        return Err(RouteError(format!(
                            "path template {template:?}: catch-all named {name:?} here but {:?} in another route",
                            slot.0
                        )));
                    }
                    return add_entry(&mut slot.1, methods, value, template);
                }
                check_param_name(template, inner, &mut names)?;
                let slot = node
                    .param
                    .get_or_insert_with(|| (inner.to_string(), Box::default()));
                if slot.0 != inner {
                    return Err(RouteError(format!(
                        "path template {template:?}: parameter named {inner:?} here but {:?} in another route at the same position",
                        slot.0
                    )));
                }
                node = &mut slot.1;
            } else {
                if seg.contains(['{', '}']) {
                    return Err(RouteError(format!(
                        "path template {template:?}: a parameter must fill a whole segment, as in /users/{{id}}"
                    )));
                }
                // Kept sorted so matching is a binary search even with
                // thousands of sibling literals.
                let pos = match node.literals.binary_search_by(|(s, _)| s.as_str().cmp(seg)) {
                    Ok(p) => p,
                    Err(p) => {
                        node.literals.insert(p, (seg.to_string(), Node::default()));
                        p
                    }
                };
                node = &mut node.literals[pos].1;
            }
        }
        add_entry(&mut node.entries, methods, value, template)
    }

    /// Matches `path` (the request path without the query) for `method`.
    /// HEAD falls back to GET routes (RFC 9110 §9.3.2).
    pub fn at<'r, 'p>(&'r self, method: &str, path: &'p str) -> Match<'r, 'p, T> {
        let Some(rest) = path.strip_prefix('/') else {
            return Match::NotFound;
        };
        let mut first_path_hit: Option<&'r [Entry<T>]> = None;
        if let Some(entries) = self.exact.get(path) {
            if let Some(value) = pick(entries, method) {
                return Match::Found(value, Params::new());
            }
            first_path_hit = Some(entries);
        }
        let mut params = Params::new();
        if let Some((value, p)) = walk(&self.root, rest, method, &mut params, &mut first_path_hit) {
            return Match::Found(value, p);
        }
        match first_path_hit {
            Some(entries) => Match::MethodNotAllowed(allow_header(entries)),
            None => Match::NotFound,
        }
    }
}

fn check_param_name<'t>(
    template: &str,
    name: &'t str,
    names: &mut Vec<&'t str>,
) -> Result<(), RouteError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(RouteError(format!(
            "path template {template:?}: parameter name {name:?} must be letters, digits, '_' or '-'"
        )));
    }
    if names.contains(&name) {
        return Err(RouteError(format!(
            "path template {template:?}: parameter {name:?} appears twice"
        )));
    }
    if names.len() == MAX_PATH_PARAMS {
        return Err(RouteError(format!(
            "path template {template:?}: more than {MAX_PATH_PARAMS} parameters"
        )));
    }
    names.push(name);
    Ok(())
}

fn add_entry<T>(
    entries: &mut Vec<Entry<T>>,
    methods: Methods,
    value: T,
    template: &str,
) -> Result<(), RouteError> {
    for e in entries.iter() {
        let overlap = match (&e.methods, &methods) {
            (Methods::Any, _) | (_, Methods::Any) => true,
            (Methods::Only(a), Methods::Only(b)) => a.iter().any(|m| b.contains(m)),
        };
        if overlap {
            return Err(RouteError(format!(
                "path template {template:?} is declared twice for the same method"
            )));
        }
    }
    entries.push(Entry { methods, value });
    Ok(())
}

fn pick<'r, T>(entries: &'r [Entry<T>], method: &str) -> Option<&'r T> {
    if let Some(e) = entries.iter().find(|e| e.methods.allows(method)) {
        return Some(&e.value);
    }
    if method == "HEAD" {
        return entries
            .iter()
            .find(|e| e.methods.allows("GET"))
            .map(|e| &e.value);
    }
    None
}

/// Depth-first walk in priority order (literal, param, catch-all). Returns
/// the first route that matches both path and method; remembers the first
/// path-only match so a miss can become 405 instead of 404.
fn walk<'r, 'p, T>(
    node: &'r Node<T>,
    rest: &'p str,
    method: &str,
    params: &mut Params<'r, 'p>,
    first_path_hit: &mut Option<&'r [Entry<T>]>,
) -> Option<(&'r T, Params<'r, 'p>)> {
    let (seg, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    // Literal segment.
    if let Ok(i) = node.literals.binary_search_by(|(s, _)| s.as_str().cmp(seg)) {
        let child = &node.literals[i].1;
        if let Some(hit) = descend(child, tail, method, params, first_path_hit) {
            return Some(hit);
        }
    }
    // `{param}`: a non-empty segment.
    if let Some((name, child)) = &node.param {
        if !seg.is_empty() && params.len < MAX_PATH_PARAMS {
            params.items[params.len] = (name.as_str(), seg);
            params.len += 1;
            if let Some(hit) = descend(child, tail, method, params, first_path_hit) {
                return Some(hit);
            }
            params.len -= 1;
        }
    }
    // `{*rest}`: everything that remains, possibly empty.
    if let Some((name, entries)) = &node.catch_all {
        if first_path_hit.is_none() && !entries.is_empty() {
            *first_path_hit = Some(entries);
        }
        if let Some(value) = pick(entries, method) {
            if params.len < MAX_PATH_PARAMS {
                params.items[params.len] = (name.as_str(), rest);
                params.len += 1;
                let found = *params;
                params.len -= 1;
                return Some((value, found));
            }
        }
    }
    None
}

fn descend<'r, 'p, T>(
    child: &'r Node<T>,
    tail: Option<&'p str>,
    method: &str,
    params: &mut Params<'r, 'p>,
    first_path_hit: &mut Option<&'r [Entry<T>]>,
) -> Option<(&'r T, Params<'r, 'p>)> {
    match tail {
        None => {
            if child.entries.is_empty() {
                return None;
            }
            if first_path_hit.is_none() {
                *first_path_hit = Some(&child.entries);
            }
            pick(&child.entries, method).map(|v| (v, *params))
        }
        Some(t) => walk(child, t, method, params, first_path_hit),
    }
}

fn allow_header<T>(entries: &[Entry<T>]) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for e in entries {
        match &e.methods {
            Methods::Any => return String::new(),
            Methods::Only(list) => methods.extend(list.iter().map(String::as_str)),
        }
    }
    if let Some(i) = methods.iter().position(|m| *m == "GET") {
        if !methods.contains(&"HEAD") {
            methods.insert(i + 1, "HEAD");
        }
    }
    methods.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(m: &[&str]) -> Methods {
        Methods::Only(m.iter().map(|s| s.to_string()).collect())
    }

    fn router() -> Router<&'static str> {
        let mut r = Router::new();
        r.insert(only(&["GET"]), "/", "root").unwrap();
        r.insert(only(&["GET"]), "/v1/users/{id}", "get-user")
            .unwrap();
        r.insert(only(&["DELETE"]), "/v1/users/{id}", "del-user")
            .unwrap();
        r.insert(only(&["GET"]), "/v1/users/me", "me").unwrap();
        r.insert(only(&["POST"]), "/v1/users/new", "new-user")
            .unwrap();
        r.insert(only(&["GET"]), "/static/{*rest}", "static")
            .unwrap();
        r.insert(Methods::Any, "/any", "any").unwrap();
        r
    }

    fn found(r: &Router<&'static str>, m: &str, p: &str) -> Option<&'static str> {
        match r.at(m, p) {
            Match::Found(v, _) => Some(*v),
            _ => None,
        }
    }

    #[test]
    fn literal_beats_param() {
        let r = router();
        assert_eq!(found(&r, "GET", "/v1/users/me"), Some("me"));
        assert_eq!(found(&r, "GET", "/v1/users/42"), Some("get-user"));
        assert_eq!(found(&r, "GET", "/"), Some("root"));
    }

    #[test]
    fn backtracks_from_literal_to_param_on_method() {
        // POST-only literal `new` must not hide `GET /v1/users/{id}`.
        let r = router();
        assert_eq!(found(&r, "GET", "/v1/users/new"), Some("get-user"));
        assert_eq!(found(&r, "POST", "/v1/users/new"), Some("new-user"));
    }

    #[test]
    fn params_are_captured() {
        let r = router();
        match r.at("GET", "/v1/users/42") {
            Match::Found(_, p) => assert_eq!(p.get("id"), Some("42")),
            other => panic!("{other:?}"),
        }
        match r.at("GET", "/static/css/site.css") {
            Match::Found(_, p) => assert_eq!(p.get("rest"), Some("css/site.css")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn catch_all_matches_empty_remainder() {
        let r = router();
        assert_eq!(found(&r, "GET", "/static/"), Some("static"));
    }

    #[test]
    fn rfc9110_15_5_6_method_not_allowed_lists_allow() {
        let r = router();
        match r.at("PUT", "/v1/users/42") {
            Match::MethodNotAllowed(allow) => assert_eq!(allow, "GET, HEAD, DELETE"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc9110_9_3_2_head_falls_back_to_get() {
        let r = router();
        assert_eq!(found(&r, "HEAD", "/v1/users/7"), Some("get-user"));
    }

    #[test]
    fn not_found() {
        let r = router();
        assert!(matches!(r.at("GET", "/nope"), Match::NotFound));
        assert!(matches!(r.at("GET", "/v1/users/"), Match::NotFound));
        assert!(matches!(r.at("GET", "/v1/users/1/x"), Match::NotFound));
        assert!(matches!(r.at("GET", "*"), Match::NotFound));
    }

    #[test]
    fn any_method() {
        let r = router();
        assert_eq!(found(&r, "PATCH", "/any"), Some("any"));
    }

    #[test]
    fn rejects_bad_templates() {
        let mut r: Router<()> = Router::new();
        assert!(r.insert(Methods::Any, "nope", ()).is_err());
        assert!(r.insert(Methods::Any, "/a/{*x}/b", ()).is_err());
        assert!(r.insert(Methods::Any, "/a/{id}/{id}", ()).is_err());
        assert!(r.insert(Methods::Any, "/a/x{id}", ()).is_err());
        assert!(r.insert(Methods::Any, "/a/{}", ()).is_err());
        r.insert(only(&["GET"]), "/dup", ()).unwrap();
        assert!(r.insert(only(&["GET", "POST"]), "/dup", ()).is_err());
        r.insert(only(&["POST"]), "/dup", ()).unwrap();
        r.insert(only(&["PUT"]), "/dup", ()).unwrap();
        assert!(r.insert(only(&["PUT"]), "/dup", ()).is_err());
    }

    #[test]
    fn thousand_routes() {
        let mut r = Router::new();
        for i in 0..1000 {
            r.insert(only(&["GET"]), &format!("/r{i}/{{id}}"), i)
                .unwrap();
        }
        match r.at("GET", "/r999/x") {
            Match::Found(v, p) => {
                assert_eq!(*v, 999);
                assert_eq!(p.get("id"), Some("x"));
            }
            other => panic!("{other:?}"),
        }
    }
}
