//! Request validation (`validate = { schema, params }`): JSON bodies parsed
//! with simd-json and checked against a JSON Schema; path parameters
//! checked against a type.
//!
//! The schema support is a small validator of our own for exactly these
//! keywords (draft 2020-12 meaning): `type`, `properties`, `required`,
//! `additionalProperties`, `enum`, `const`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum`, `minLength`, `maxLength`,
//! `pattern`, `items`, `minItems`, `maxItems`, `format` (`email`, `uuid`,
//! `date-time`), plus annotations (`$schema`, `$id`, `title`,
//! `description`, `default`, `examples`, `$comment`) which are ignored. A
//! schema using any other keyword is refused at start-up rather than half
//! enforced. (The `jsonschema` crate would cover more, at the price of a
//! large dependency tree; this keeps the build small and every supported
//! keyword tested here.)
//!
//! A wrong content type answers 415; an unparseable body or violations
//! answer 422 with one entry per violation, each with the JSON pointer
//! (RFC 6901) of the value at fault.

use regex::Regex;
use serde_json::Value as J;
use simd_json::prelude::*;
use simd_json::BorrowedValue as V;

/// Violations listed in one 422; past this the list is cut (the client has
/// enough to fix, and the response stays small).
pub const MAX_VIOLATIONS: usize = 50;

/// Nesting a schema may have: deeper is a config mistake, and this bounds
/// the recursion when validating.
const MAX_SCHEMA_DEPTH: usize = 64;

/// Nesting a request body may have (arrays and objects). Building the
/// parsed value and walking it recurse once per level, and a shard's stack
/// is finite: 10 KB of `[` would otherwise overflow it and take the whole
/// process down. 128 is far past any real API payload.
pub const MAX_BODY_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Object,
    Array,
    Number,
    Integer,
    String,
}

impl JsonType {
    fn parse(s: &str) -> Option<JsonType> {
        Some(match s {
            "null" => JsonType::Null,
            "boolean" => JsonType::Boolean,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "string" => JsonType::String,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Boolean => "boolean",
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::String => "string",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Email,
    Uuid,
    DateTime,
}

#[derive(Debug)]
enum Additional {
    Allow,
    Deny,
    Schema(Box<Node>),
}

#[derive(Debug)]
struct Node {
    /// `false` schema: nothing is valid.
    reject_all: bool,
    types: Vec<JsonType>,
    properties: Vec<(String, Node)>,
    required: Vec<String>,
    additional: Additional,
    enumeration: Option<Vec<J>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<Regex>,
    items: Option<Box<Node>>,
    min_items: Option<usize>,
    max_items: Option<usize>,
    format: Option<Format>,
}

impl Node {
    fn any() -> Node {
        Node {
            reject_all: false,
            types: Vec::new(),
            properties: Vec::new(),
            required: Vec::new(),
            additional: Additional::Allow,
            enumeration: None,
            minimum: None,
            maximum: None,
            exclusive_minimum: None,
            exclusive_maximum: None,
            min_length: None,
            max_length: None,
            pattern: None,
            items: None,
            min_items: None,
            max_items: None,
            format: None,
        }
    }
}

/// A compiled JSON Schema.
#[derive(Debug)]
pub struct Schema {
    root: Node,
}

/// One way the body fails the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// RFC 6901 pointer into the body ("" is the whole body).
    pub pointer: String,
    pub message: String,
}

fn num(key: &str, v: &J) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("{key} must be a number"))
}

fn count(key: &str, v: &J) -> Result<usize, String> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{key} must be a non-negative integer"))
}

fn compile(v: &J, at: &str, depth: usize) -> Result<Node, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("{at}: nested deeper than {MAX_SCHEMA_DEPTH}"));
    }
    let obj = match v {
        J::Bool(true) => return Ok(Node::any()),
        J::Bool(false) => {
            let mut n = Node::any();
            n.reject_all = true;
            return Ok(n);
        }
        J::Object(o) => o,
        _ => return Err(format!("{at}: a schema is an object or a boolean")),
    };
    let mut n = Node::any();
    for (k, val) in obj {
        let here = format!("{at}/{k}");
        match k.as_str() {
            "$schema" | "$id" | "title" | "description" | "default" | "examples" | "$comment" => {}
            "type" => {
                let names: Vec<&J> = match val {
                    J::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for t in names {
                    let t = t
                        .as_str()
                        .and_then(JsonType::parse)
                        .ok_or_else(|| format!("{here}: unknown type {t}"))?;
                    n.types.push(t);
                }
            }
            "properties" => {
                let J::Object(props) = val else {
                    return Err(format!("{here}: must be an object"));
                };
                for (name, s) in props {
                    n.properties.push((
                        name.clone(),
                        compile(s, &format!("{here}/{name}"), depth + 1)?,
                    ));
                }
            }
            "required" => {
                let J::Array(a) = val else {
                    return Err(format!("{here}: must be an array of strings"));
                };
                for r in a {
                    n.required.push(
                        r.as_str()
                            .ok_or_else(|| format!("{here}: must be an array of strings"))?
                            .to_string(),
                    );
                }
            }
            "additionalProperties" => {
                n.additional = match val {
                    J::Bool(true) => Additional::Allow,
                    J::Bool(false) => Additional::Deny,
                    s => Additional::Schema(Box::new(compile(s, &here, depth + 1)?)),
                }
            }
            "enum" => {
                let J::Array(a) = val else {
                    return Err(format!("{here}: must be an array"));
                };
                n.enumeration = Some(a.clone());
            }
            "const" => n.enumeration = Some(vec![val.clone()]),
            "minimum" => n.minimum = Some(num(&here, val)?),
            "maximum" => n.maximum = Some(num(&here, val)?),
            "exclusiveMinimum" => n.exclusive_minimum = Some(num(&here, val)?),
            "exclusiveMaximum" => n.exclusive_maximum = Some(num(&here, val)?),
            "minLength" => n.min_length = Some(count(&here, val)?),
            "maxLength" => n.max_length = Some(count(&here, val)?),
            "minItems" => n.min_items = Some(count(&here, val)?),
            "maxItems" => n.max_items = Some(count(&here, val)?),
            "pattern" => {
                let p = val
                    .as_str()
                    .ok_or_else(|| format!("{here}: must be a string"))?;
                n.pattern = Some(Regex::new(p).map_err(|e| format!("{here}: {e}"))?);
            }
            "items" => n.items = Some(Box::new(compile(val, &here, depth + 1)?)),
            "format" => {
                n.format = Some(match val.as_str() {
                    Some("email") => Format::Email,
                    Some("uuid") => Format::Uuid,
                    Some("date-time") => Format::DateTime,
                    _ => {
                        return Err(format!(
                            "{here}: supported formats are email, uuid, date-time"
                        ))
                    }
                })
            }
            other => {
                return Err(format!(
                    "{at}: the keyword {other:?} is not supported by shardline's validator"
                ))
            }
        }
    }
    Ok(n)
}

fn escape(seg: &str, out: &mut String) {
    for c in seg.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

fn type_of(v: &V<'_>) -> JsonType {
    match v {
        V::String(_) => JsonType::String,
        V::Array(_) => JsonType::Array,
        V::Object(_) => JsonType::Object,
        V::Static(_) if v.is_null() => JsonType::Null,
        V::Static(_) if v.is_bool() => JsonType::Boolean,
        V::Static(_) if v.is_i64() || v.is_u64() => JsonType::Integer,
        V::Static(_) => match v.cast_f64() {
            Some(f) if f.fract() == 0.0 && f.is_finite() => JsonType::Integer,
            _ => JsonType::Number,
        },
    }
}

fn same(a: &V<'_>, b: &J) -> bool {
    match (a, b) {
        (V::String(s), J::String(t)) => s == t,
        (V::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (V::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && y.iter()
                    .all(|(k, q)| x.get(k.as_str()).is_some_and(|p| same(p, q)))
        }
        (V::Static(_), J::Null) => a.is_null(),
        (V::Static(_), J::Bool(t)) => a.as_bool() == Some(*t),
        (V::Static(_), J::Number(n)) => match (a.cast_f64(), n.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        _ => false,
    }
}

struct Run {
    out: Vec<Violation>,
}

impl Run {
    fn add(&mut self, pointer: &str, message: String) {
        if self.out.len() < MAX_VIOLATIONS {
            self.out.push(Violation {
                pointer: pointer.to_string(),
                message,
            });
        }
    }

    fn check(&mut self, n: &Node, v: &V<'_>, ptr: &mut String) {
        if self.out.len() >= MAX_VIOLATIONS {
            return;
        }
        if n.reject_all {
            self.add(ptr, "no value is allowed here".into());
            return;
        }
        let t = type_of(v);
        if !n.types.is_empty()
            && !n
                .types
                .iter()
                .any(|w| *w == t || (*w == JsonType::Number && t == JsonType::Integer))
        {
            let want: Vec<&str> = n.types.iter().map(|t| t.name()).collect();
            self.add(
                ptr,
                format!("expected {}, got {}", want.join(" or "), t.name()),
            );
            return;
        }
        if let Some(e) = &n.enumeration {
            if !e.iter().any(|x| same(v, x)) {
                let list: Vec<String> = e.iter().map(|x| x.to_string()).collect();
                self.add(ptr, format!("must be one of {}", list.join(", ")));
            }
        }
        match v {
            V::String(s) => {
                let len = s.chars().count();
                if let Some(m) = n.min_length {
                    if len < m {
                        self.add(ptr, format!("must be at least {m} characters long"));
                    }
                }
                if let Some(m) = n.max_length {
                    if len > m {
                        self.add(ptr, format!("must be at most {m} characters long"));
                    }
                }
                if let Some(p) = &n.pattern {
                    if !p.is_match(s) {
                        self.add(ptr, format!("must match the pattern {:?}", p.as_str()));
                    }
                }
                if let Some(f) = n.format {
                    let ok = match f {
                        Format::Email => is_email(s),
                        Format::Uuid => is_uuid(s),
                        Format::DateTime => is_date_time(s),
                    };
                    if !ok {
                        let name = match f {
                            Format::Email => "an email address",
                            Format::Uuid => "a UUID",
                            Format::DateTime => "an RFC 3339 date-time",
                        };
                        self.add(ptr, format!("must be {name}"));
                    }
                }
            }
            V::Static(_) if matches!(t, JsonType::Integer | JsonType::Number) => {
                let x = v.cast_f64().unwrap_or(f64::NAN);
                if let Some(m) = n.minimum {
                    if x < m {
                        self.add(ptr, format!("must be at least {m}"));
                    }
                }
                if let Some(m) = n.maximum {
                    if x > m {
                        self.add(ptr, format!("must be at most {m}"));
                    }
                }
                if let Some(m) = n.exclusive_minimum {
                    if x <= m {
                        self.add(ptr, format!("must be greater than {m}"));
                    }
                }
                if let Some(m) = n.exclusive_maximum {
                    if x >= m {
                        self.add(ptr, format!("must be less than {m}"));
                    }
                }
            }
            V::Array(a) => {
                if let Some(m) = n.min_items {
                    if a.len() < m {
                        self.add(ptr, format!("must have at least {m} items"));
                    }
                }
                if let Some(m) = n.max_items {
                    if a.len() > m {
                        self.add(ptr, format!("must have at most {m} items"));
                    }
                }
                if let Some(items) = &n.items {
                    for (i, item) in a.iter().enumerate() {
                        let len = ptr.len();
                        ptr.push('/');
                        ptr.push_str(itoa::Buffer::new().format(i));
                        self.check(items, item, ptr);
                        ptr.truncate(len);
                    }
                }
            }
            V::Object(o) => {
                for r in &n.required {
                    if o.get(r.as_str()).is_none() {
                        let mut p = ptr.clone();
                        p.push('/');
                        escape(r, &mut p);
                        self.add(&p, "is required".into());
                    }
                }
                let mut keys: Vec<&str> = o.keys().map(|k| k.as_ref()).collect();
                // Report in a stable order, not hash order.
                keys.sort_unstable();
                for k in keys {
                    let Some(val) = o.get(k) else { continue };
                    let len = ptr.len();
                    ptr.push('/');
                    escape(k, ptr);
                    match n.properties.iter().find(|(name, _)| name == k) {
                        Some((_, s)) => self.check(s, val, ptr),
                        None => match &n.additional {
                            Additional::Allow => {}
                            Additional::Deny => self.add(ptr, "is not an allowed property".into()),
                            Additional::Schema(s) => self.check(s, val, ptr),
                        },
                    }
                    ptr.truncate(len);
                }
            }
            V::Static(_) => {}
        }
    }
}

impl Schema {
    pub fn compile_text(text: &str) -> Result<Schema, String> {
        let v: J = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        Ok(Schema {
            root: compile(&v, "#", 0)?,
        })
    }

    fn validate_value(&self, v: &V<'_>) -> Vec<Violation> {
        let mut run = Run { out: Vec::new() };
        let mut ptr = String::new();
        run.check(&self.root, v, &mut ptr);
        run.out
    }
}

/// Why a body was refused.
#[derive(Debug)]
pub enum BodyProblem {
    /// Not `application/json` (or `+json`): 415.
    UnsupportedMediaType,
    /// Not JSON at all: 422.
    Malformed(String),
    /// JSON that breaks the schema: 422.
    Invalid(Vec<Violation>),
}

/// Whether a `Content-Type` value is JSON (`application/json` or a
/// `+json` suffix type, any parameters).
pub fn is_json(content_type: &[u8]) -> bool {
    let ct = content_type.split(|b| *b == b';').next().unwrap_or(b"");
    let ct = String::from_utf8_lossy(ct).trim().to_ascii_lowercase();
    ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
}

/// Checks a request body against `schema`.
pub fn check_body(
    schema: &Schema,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<(), BodyProblem> {
    if !content_type.is_some_and(is_json) {
        return Err(BodyProblem::UnsupportedMediaType);
    }
    if nesting_depth(body) > MAX_BODY_DEPTH {
        return Err(BodyProblem::Malformed(format!(
            "nested deeper than {MAX_BODY_DEPTH} levels"
        )));
    }
    let mut copy = body.to_vec();
    let v = simd_json::to_borrowed_value(&mut copy)
        .map_err(|e| BodyProblem::Malformed(e.to_string()))?;
    // RFC 8259 §4: receivers disagree on a repeated member name (most keep
    // the last, the parsed value here shows the first): a body checked one
    // way and acted on another is a bypass, so it is refused.
    if let Some(pointer) = first_duplicate_member(&v) {
        return Err(BodyProblem::Invalid(vec![Violation {
            pointer,
            message: "this member name appears more than once in its object".to_string(),
        }]));
    }
    let out = schema.validate_value(&v);
    if out.is_empty() {
        Ok(())
    } else {
        Err(BodyProblem::Invalid(out))
    }
}

/// The deepest nesting of arrays and objects in `body`, outside strings.
/// One pass, no recursion; malformed text is left to the parser.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The pointer of the first object member whose name its object already
/// has. Recursion is bounded by [`MAX_BODY_DEPTH`] (checked before).
fn first_duplicate_member(v: &V<'_>) -> Option<String> {
    fn walk(v: &V<'_>, ptr: &mut String) -> Option<String> {
        match v {
            V::Object(map) => {
                let mut seen = std::collections::HashSet::with_capacity(map.len());
                for (k, child) in map.iter() {
                    let len = ptr.len();
                    ptr.push('/');
                    escape(k, ptr);
                    if !seen.insert(k.as_ref()) {
                        return Some(ptr.clone());
                    }
                    let found = walk(child, ptr);
                    if found.is_some() {
                        return found;
                    }
                    ptr.truncate(len);
                }
                None
            }
            V::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&i.to_string());
                    let found = walk(child, ptr);
                    if found.is_some() {
                        return found;
                    }
                    ptr.truncate(len);
                }
                None
            }
            _ => None,
        }
    }
    walk(v, &mut String::new())
}

/// The type a path parameter must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Integer,
    Number,
    Boolean,
    Uuid,
    String,
}

impl ParamType {
    pub fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "integer" => ParamType::Integer,
            "number" => ParamType::Number,
            "boolean" => ParamType::Boolean,
            "uuid" => ParamType::Uuid,
            "string" => ParamType::String,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ParamType::Integer => "an integer",
            ParamType::Number => "a number",
            ParamType::Boolean => "true or false",
            ParamType::Uuid => "a UUID",
            ParamType::String => "a string",
        }
    }

    pub fn accepts(self, v: &str) -> bool {
        match self {
            ParamType::Integer => v.parse::<i64>().is_ok(),
            ParamType::Number => v.parse::<f64>().is_ok_and(f64::is_finite),
            ParamType::Boolean => v == "true" || v == "false",
            ParamType::Uuid => is_uuid(v),
            ParamType::String => !v.is_empty(),
        }
    }
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && domain.len() <= 253
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && s.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii())
        && !local.contains('@')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// RFC 3339 §5.6 `date-time`.
fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if d == 0 || d > dim || h > 23 || mi > 59 || sec > 60 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            let (Some(oh), Some(om)) = (digits(i + 1..i + 3), digits(i + 4..i + 6)) else {
                return false;
            };
            b.get(i + 3) == Some(&b':') && i + 6 == b.len() && oh <= 23 && om <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name", "age"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"enum": ["admin", "user"]},
            "email": {"type": "string", "format": "email"},
            "id": {"type": "string", "format": "uuid"},
            "at": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
            "a/b": {"type": "number"}
        }
    }"#;

    fn errs(body: &str) -> Vec<(String, String)> {
        let s = Schema::compile_text(SCHEMA).unwrap();
        match check_body(
            &s,
            Some(b"application/json; charset=utf-8"),
            body.as_bytes(),
        ) {
            Ok(()) => vec![],
            Err(BodyProblem::Invalid(v)) => v.into_iter().map(|v| (v.pointer, v.message)).collect(),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn pointers(body: &str) -> Vec<String> {
        errs(body).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn valid_body_passes() {
        assert!(errs(r#"{"name":"bob","age":30,"role":"user","email":"b@x.io","id":"123e4567-e89b-12d3-a456-426614174000","at":"2024-02-29T12:00:00.5+01:00","tags":["a"],"a/b":1.5}"#).is_empty());
    }

    #[test]
    fn each_keyword_reports_its_pointer() {
        assert_eq!(pointers(r#"{"age":1}"#), ["/name"]);
        assert_eq!(pointers(r#"{"name":"b","age":1}"#), ["/name"]);
        assert_eq!(pointers(r#"{"name":"bobbyy","age":1}"#), ["/name"]);
        assert_eq!(pointers(r#"{"name":"BOB","age":1}"#), ["/name"]);
        assert_eq!(pointers(r#"{"name":"bob","age":1.5}"#), ["/age"]);
        assert_eq!(pointers(r#"{"name":"bob","age":-1}"#), ["/age"]);
        assert_eq!(pointers(r#"{"name":"bob","age":151}"#), ["/age"]);
        assert_eq!(
            pointers(r#"{"name":"bob","age":1,"role":"root"}"#),
            ["/role"]
        );
        assert_eq!(
            pointers(r#"{"name":"bob","age":1,"email":"nope"}"#),
            ["/email"]
        );
        assert_eq!(pointers(r#"{"name":"bob","age":1,"id":"123"}"#), ["/id"]);
        assert_eq!(
            pointers(r#"{"name":"bob","age":1,"at":"2023-02-29T00:00:00Z"}"#),
            ["/at"]
        );
        assert_eq!(pointers(r#"{"name":"bob","age":1,"tags":[]}"#), ["/tags"]);
        assert_eq!(
            pointers(r#"{"name":"bob","age":1,"tags":["a","b","c"]}"#),
            ["/tags"]
        );
        assert_eq!(
            pointers(r#"{"name":"bob","age":1,"tags":["a",2]}"#),
            ["/tags/1"]
        );
        assert_eq!(pointers(r#"{"name":"bob","age":1,"x":1}"#), ["/x"]);
        assert_eq!(pointers(r#"{"name":"bob","age":1,"a/b":"s"}"#), ["/a~1b"]);
        assert_eq!(pointers(r#"[1]"#), [""]);
        // Several at once, each listed.
        assert_eq!(pointers(r#"{"name":"B","age":"x","x":1}"#).len(), 4);
    }

    #[test]
    fn media_type_and_syntax() {
        let s = Schema::compile_text(SCHEMA).unwrap();
        assert!(matches!(
            check_body(&s, Some(b"text/plain"), b"{}"),
            Err(BodyProblem::UnsupportedMediaType)
        ));
        assert!(matches!(
            check_body(&s, None, b"{}"),
            Err(BodyProblem::UnsupportedMediaType)
        ));
        assert!(matches!(
            check_body(&s, Some(b"application/json"), b"{"),
            Err(BodyProblem::Malformed(_))
        ));
        assert!(is_json(b"application/problem+json"));
    }

    #[test]
    fn unsupported_keywords_are_refused() {
        assert!(Schema::compile_text(r#"{"oneOf":[]}"#)
            .unwrap_err()
            .contains("oneOf"));
        assert!(Schema::compile_text(r#"{"format":"ipv4"}"#).is_err());
        assert!(Schema::compile_text(r#"{"pattern":"("}"#).is_err());
    }

    #[test]
    fn params() {
        assert!(ParamType::Integer.accepts("-12"));
        assert!(!ParamType::Integer.accepts("1.5"));
        assert!(ParamType::Uuid.accepts("123e4567-e89b-12d3-a456-426614174000"));
        assert!(!ParamType::Boolean.accepts("yes"));
    }
}
