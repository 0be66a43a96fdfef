//! Request validation (issue 5): 415 for a wrong content type, 422 listing
//! each violation with its JSON pointer, path parameter types; inline and
//! upstream routes alike.
#![allow(clippy::unwrap_used)]

mod common;

use common::assert_problem;
use shardline_tests::upstream::{Behaviour, Upstream};
use shardline_tests::{get, post, TestServer};

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["name", "email"],
  "additionalProperties": false,
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 20},
    "email": {"type": "string", "format": "email"},
    "age": {"type": "integer", "minimum": 0},
    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "maxItems": 3}
  }
}"#;

fn server(up: &Upstream, schema_path: &str) -> TestServer {
    TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "create"
method = "POST"
path = "/users"
validate = {{ schema = "{schema_path}" }}
handler = "echo"

[[routes]]
name = "proxied"
method = "POST"
path = "/up/users"
validate = {{ schema = "{schema_path}" }}
upstream = "u"

[[routes]]
name = "get-user"
method = "GET"
path = "/users/{{id}}"
validate = {{ params = {{ id = "integer" }} }}
respond = {{ status = 200, body = "user" }}
"#,
        up.target()
    ))
}

/// The `SCHEMA` written to a scratch directory (removed by the caller),
/// an echoing upstream, and `server` over both.
fn echo_setup(tag: &str) -> (std::path::PathBuf, Upstream, TestServer) {
    let dir = std::env::temp_dir().join(format!("shardline-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("user.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let up = Upstream::start(Behaviour::echo());
    let s = server(&up, &schema.to_string_lossy());
    (dir, up, s)
}

fn errors(r: &shardline_tests::Response) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn bodies_are_checked_on_inline_and_upstream_routes() {
    let (dir, up, s) = echo_setup("validate");
    let mut c = s.client();
    for path in ["/users", "/up/users"] {
        let good = br#"{"name":"ann","email":"ann@example.com","tags":["a"]}"#;
        let r = c.request(&post(path, &["Content-Type: application/json"], good));
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
        assert_eq!(r.body, good.to_vec(), "{path}: the body goes on unchanged");
        let r = c.request(&post(path, &["Content-Type: text/plain"], good));
        assert_problem(&r, 415);
        let r = c.request(&post(path, &[], good));
        assert_problem(&r, 415);
        let r = c.request(&post(
            path,
            &["Content-Type: application/json"],
            br#"{"name":"","email":"nope","age":-1,"tags":["A","b","c","d"],"x":1}"#,
        ));
        assert_problem(&r, 422);
        let mut p = errors(&r);
        p.sort();
        assert_eq!(
            p,
            ["/age", "/email", "/name", "/tags", "/tags/0", "/x"],
            "{path}"
        );
        let r = c.request(&post(
            path,
            &["Content-Type: application/json"],
            br#"{"name":"x""#,
        ));
        assert_problem(&r, 422);
        let r = c.request(&post(path, &["Content-Type: application/json"], br#"{}"#));
        assert_problem(&r, 422);
        let mut p = errors(&r);
        p.sort();
        assert_eq!(p, ["/email", "/name"]);
    }
    // Only the valid requests reached the upstream.
    assert_eq!(up.requests(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn path_parameter_types() {
    let up = Upstream::start(Behaviour::ok("x"));
    let dir = std::env::temp_dir().join(format!("shardline-validate-p-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("user.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let s = server(&up, &schema.to_string_lossy());
    let mut c = s.client();
    assert_eq!(c.request(&get("/users/42", &[])).status, 200);
    let r = c.request(&get("/users/abc", &[]));
    assert_problem(&r, 422);
    assert_eq!(errors(&r), ["/id"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsupported_schema_keywords_stop_start_up() {
    let dir = std::env::temp_dir().join(format!("shardline-validate-k-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("bad.json");
    std::fs::write(&schema, r#"{"anyOf": [{"type": "string"}]}"#).unwrap();
    let e = shardline::Config::from_toml_str(&format!(
        "[[routes]]\nname=\"a\"\nmethod=\"POST\"\npath=\"/a\"\nhandler=\"echo\"\nvalidate = {{ schema = \"{}\" }}\n",
        schema.to_string_lossy()
    ))
    .unwrap_err()
    .0;
    assert!(
        e.starts_with("routes[0] (a).validate.schema") && e.contains("anyOf"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deep_nesting_and_repeated_member_names_are_refused() {
    let (dir, up, s) = echo_setup("validate-deep");
    let mut c = s.client();
    for path in ["/users", "/up/users"] {
        // 10 KB of brackets: parsing it recursively would overflow a
        // shard's stack and take the whole server down.
        let mut deep = "[".repeat(5000);
        deep.push_str(&"]".repeat(5000));
        let r = c.request(&post(
            path,
            &["Content-Type: application/json"],
            deep.as_bytes(),
        ));
        assert_problem(&r, 422);
        assert!(r.text().contains("nested deeper than"), "{}", r.text());
        // Receivers disagree on which of two equal names counts: the
        // checked value must be the value the upstream acts on.
        for body in [
            &br#"{"name":"ann","email":"ann@example.com","age":5,"age":-1}"#[..],
            br#"{"name":"ann","email":"ann@example.com","age":-1,"age":5}"#,
        ] {
            let r = c.request(&post(path, &["Content-Type: application/json"], body));
            assert_problem(&r, 422);
            assert_eq!(errors(&r), ["/age"], "{path}");
        }
    }
    // The server is alive and nothing bad reached the upstream.
    let good = br#"{"name":"ann","email":"ann@example.com"}"#;
    let r = c.request(&post(
        "/up/users",
        &["Content-Type: application/json"],
        good,
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(up.requests(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
