//! Authentication and authorization (issue 5): API keys and JWTs, 401 with
//! `WWW-Authenticate`, 403 for missing scopes, forged and confused tokens.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::assert_problem;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use shardline_tests::{get, TestServer};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
const KEY_A: &str = "key-aaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "key-bbbbbbbbbbbbbbbbbbbb";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A scratch directory for key files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "shardline-policy-{tag}-{}-{}",
            std::process::id(),
            now()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hs(claims: serde_json::Value, secret: &str, alg: Algorithm, kid: Option<&str>) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://id.test", "aud": "api", "exp": now() + 600, "scope": "users:read"})
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn jwt_server(secret_line: &str) -> TestServer {
    TestServer::start_toml(&format!(
        r#"
[auth.users]
type = "jwt"
{secret_line}
issuer = "https://id.test"
audience = "api"
leeway = "5s"

[[routes]]
name = "me"
method = "GET"
path = "/me"
auth = "users"
respond = {{ status = 200, body = "hello" }}

[[routes]]
name = "admin"
method = "GET"
path = "/admin"
auth = "users"
scopes = ["admin"]
respond = {{ status = 200, body = "root" }}
"#
    ))
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

#[test]
fn jwt_good_token_passes_and_repeats_from_cache() {
    let s = jwt_server(&format!("secret = \"{SECRET}\""));
    let mut c = s.client();
    let t = hs(claims(), SECRET, Algorithm::HS256, None);
    for _ in 0..3 {
        let r = c.request(&get("/me", &[&bearer(&t)]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), "hello");
    }
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let r = c.request(&get("/me", &[&bearer(&hs(claims(), SECRET, alg, None))]));
        assert_eq!(r.status, 200, "{alg:?}: {}", r.summary());
    }
}

#[test]
fn jwt_missing_credentials_is_401_with_challenge() {
    let s = jwt_server(&format!("secret = \"{SECRET}\""));
    let mut c = s.client();
    let r = c.request(&get("/me", &[]));
    assert_problem(&r, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Bearer realm=\"users\""
    );
    let r = c.request(&get("/me", &["Authorization: Basic YTpi"]));
    assert_problem(&r, 401);
}

#[test]
fn jwt_refuses_forged_expired_early_and_misaddressed_tokens() {
    let s = jwt_server(&format!("secret = \"{SECRET}\""));
    let mut c = s.client();
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut x = claims();
    x["exp"] = json!(now() - 60);
    cases.push(("expired", hs(x, SECRET, Algorithm::HS256, None)));
    let mut x = claims();
    x["nbf"] = json!(now() + 120);
    cases.push(("not yet valid", hs(x, SECRET, Algorithm::HS256, None)));
    let mut x = claims();
    x["aud"] = json!("other-api");
    cases.push(("wrong audience", hs(x, SECRET, Algorithm::HS256, None)));
    let mut x = claims();
    x["iss"] = json!("https://evil.test");
    cases.push(("wrong issuer", hs(x, SECRET, Algorithm::HS256, None)));
    let mut x = claims();
    x.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", hs(x, SECRET, Algorithm::HS256, None)));
    cases.push((
        "wrong key",
        hs(
            claims(),
            "another-secret-another-secret-0000",
            Algorithm::HS256,
            None,
        ),
    ));
    // alg none: a header and payload with an empty signature.
    let body = b64(claims().to_string().as_bytes());
    for none in ["none", "None", "NONE"] {
        let head = b64(format!(r#"{{"alg":"{none}","typ":"JWT"}}"#).as_bytes());
        cases.push(("alg none", format!("{head}.{body}.")));
    }
    // A valid token with its payload swapped (signature no longer covers it).
    let good = hs(claims(), SECRET, Algorithm::HS256, None);
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims();
    evil["sub"] = json!("mallory");
    evil["scope"] = json!("admin");
    cases.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(evil.to_string().as_bytes()),
            parts[2]
        ),
    ));
    cases.push(("garbage", "not.a.jwt".into()));
    for (what, token) in cases {
        let r = c.request(&get("/me", &[&bearer(&token)]));
        assert_problem(&r, 401);
        let ch = r.header("www-authenticate").unwrap();
        assert!(ch.contains("error=\"invalid_token\""), "{what}: {ch}");
    }
}

#[test]
fn missing_scopes_are_403() {
    let s = jwt_server(&format!("secret = \"{SECRET}\""));
    let mut c = s.client();
    let t = hs(claims(), SECRET, Algorithm::HS256, None);
    let r = c.request(&get("/admin", &[&bearer(&t)]));
    assert_problem(&r, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    let mut x = claims();
    x["scope"] = json!("users:read admin");
    let r = c.request(&get(
        "/admin",
        &[&bearer(&hs(x, SECRET, Algorithm::HS256, None))],
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// An RSA public key handed out as the "secret" of an HS256 token
/// (algorithm confusion) must not verify against an RSA-keyed section.
#[test]
fn algorithm_confusion_is_refused() {
    let dir = Scratch::new("confusion");
    // A 2048-bit RSA public key (the matching private key is not needed:
    // the attack only uses the public one).
    let pem = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u
+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh
kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ
0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg
cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc
mwIDAQAB
-----END PUBLIC KEY-----
";
    let path = dir.file("rsa.pem", pem);
    let s = jwt_server(&format!("public_key_pem = \"{path}\""));
    let mut c = s.client();
    let forged = hs(claims(), pem, Algorithm::HS256, None);
    let r = c.request(&get("/me", &[&bearer(&forged)]));
    assert_problem(&r, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
}

#[test]
fn jwks_kid_selection_and_rotation_by_a_new_file() {
    let dir = Scratch::new("jwks");
    let k1 = "first-secret-first-secret-first-secret!!";
    let k2 = "second-secret-second-secret-second-secret";
    let jwks = |keys: &[(&str, &str)]| {
        let list: Vec<serde_json::Value> = keys
            .iter()
            .map(|(kid, k)| json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(k.as_bytes())}))
            .collect();
        json!({ "keys": list }).to_string()
    };
    let path = dir.file("jwks.json", &jwks(&[("one", k1)]));
    let s = jwt_server(&format!("jwks_file = \"{path}\""));
    let mut c = s.client();
    let t1 = hs(claims(), k1, Algorithm::HS256, Some("one"));
    let t2 = hs(claims(), k2, Algorithm::HS256, Some("two"));
    assert_eq!(c.request(&get("/me", &[&bearer(&t1)])).status, 200);
    assert_problem(&c.request(&get("/me", &[&bearer(&t2)])), 401);
    // Rotate: key "two" in, key "one" out. Picked up within a couple of
    // seconds (an unknown kid triggers a look at the file, at most once a
    // second); bounded polling, no fixed sleep.
    std::fs::write(&path, jwks(&[("two", k2)])).unwrap();
    let deadline = std::time::Instant::now() + shardline_tests::GUARD;
    loop {
        let r = c.request(&get("/me", &[&bearer(&t2)]));
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new key never accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The old key is gone (its cached tokens dropped with the reload).
    assert_problem(&c.request(&get("/me", &[&bearer(&t1)])), 401);
}

fn key_server(keys_file: &str) -> TestServer {
    TestServer::start_toml(&format!(
        r#"
[auth.partners]
type = "api_key"
header = "x-api-key"
query = "api_key"
keys_file = "{keys_file}"

[[routes]]
name = "data"
method = "GET"
path = "/data"
auth = "partners"
scopes = ["read"]
respond = {{ status = 200, body = "data" }}
"#
    ))
}

#[test]
fn api_keys_from_header_or_query_with_scopes() {
    let dir = Scratch::new("keys");
    let f = dir.file(
        "keys.txt",
        &format!("# partners\n{KEY_A} acme read,write\n{KEY_B} beta write\n"),
    );
    let s = key_server(&f);
    let mut c = s.client();
    let r = c.request(&get("/data", &[&format!("X-Api-Key: {KEY_A}")]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let r = c.request(&get(&format!("/data?x=1&api_key={KEY_A}"), &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let r = c.request(&get("/data", &[&format!("X-Api-Key: {KEY_B}")]));
    assert_problem(&r, 403);
    let r = c.request(&get("/data", &["X-Api-Key: key-aaaaaaaaaaaaaaaaaaab"]));
    assert_problem(&r, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("ApiKey realm=\"partners\""));
    let r = c.request(&get("/data", &[]));
    assert_problem(&r, 401);
}

#[test]
fn bad_auth_config_names_the_key() {
    let e = shardline::Config::from_toml_str(
        "[auth.x]\ntype = \"jwt\"\nsecret = \"short\"\n[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\n",
    )
    .unwrap_err()
    .0;
    assert!(e.starts_with("auth.x.secret"), "{e}");
    let e = shardline::Config::from_toml_str(
        "[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\nauth=\"nope\"\n",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("routes[0] (a).auth"), "{e}");
    let e = shardline::Config::from_toml_str(
        "[auth.k]\ntype = \"api_key\"\nkeys_file = \"/nonexistent/keys\"\n[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\n",
    )
    .unwrap_err()
    .0;
    assert!(e.starts_with("auth.k.keys_file"), "{e}");
}

/// RS256/PS256, ES256 and EdDSA against PEM public keys (test-only key
/// pairs in `policy_keys/`, made with openssl), and a token of another
/// family against each key.
#[test]
fn asymmetric_keys_verify_their_own_family_only() {
    let dir = Scratch::new("pem");
    let cases: [(&str, &str, &[Algorithm]); 3] = [
        (
            include_str!("policy_keys/rsa.key"),
            include_str!("policy_keys/rsa.pub"),
            &[Algorithm::RS256, Algorithm::RS512, Algorithm::PS256],
        ),
        (
            include_str!("policy_keys/ec.key"),
            include_str!("policy_keys/ec.pub"),
            &[Algorithm::ES256],
        ),
        (
            include_str!("policy_keys/ed.key"),
            include_str!("policy_keys/ed.pub"),
            &[Algorithm::EdDSA],
        ),
    ];
    let sign = |alg: Algorithm, private: &str| -> String {
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private.as_bytes()),
        }
        .unwrap();
        encode(&Header::new(alg), &claims(), &key).unwrap()
    };
    for (i, (private, public, algs)) in cases.iter().enumerate() {
        let path = dir.file(&format!("k{i}.pem"), public);
        let s = jwt_server(&format!("public_key_pem = \"{path}\""));
        let mut c = s.client();
        for alg in *algs {
            let r = c.request(&get("/me", &[&bearer(&sign(*alg, private))]));
            assert_eq!(r.status, 200, "{alg:?}: {}", r.summary());
        }
        // Signed by another family's key: refused.
        let (other_private, _, other_algs) = cases[(i + 1) % cases.len()];
        let r = c.request(&get("/me", &[&bearer(&sign(other_algs[0], other_private))]));
        assert_problem(&r, 401);
        // The public key itself as an HMAC secret: refused.
        let r = c.request(&get(
            "/me",
            &[&bearer(&hs(claims(), public, Algorithm::HS256, None))],
        ));
        assert_problem(&r, 401);
    }
}

#[test]
fn a_credentials_field_sent_twice_is_refused() {
    // Which copy counts differs between implementations (a proxy in front
    // may have checked the other one): neither is taken.
    let s = jwt_server(&format!("secret = \"{SECRET}\""));
    let mut c = s.client();
    let good = hs(claims(), SECRET, Algorithm::HS256, None);
    let r = c.request(&get("/me", &[&bearer(&good), &bearer("garbage")]));
    assert_problem(&r, 401);
    assert!(r.text().contains("more than once"), "{}", r.text());
    let dir = Scratch::new("keys-twice");
    let f = dir.file("keys.txt", &format!("{KEY_A} acme read\n"));
    let s = key_server(&f);
    let mut c = s.client();
    let one = format!("X-Api-Key: {KEY_A}");
    let r = c.request(&get(
        "/data",
        &[&one, "X-Api-Key: key-zzzzzzzzzzzzzzzzzzzz"],
    ));
    assert_problem(&r, 401);
    assert_eq!(c.request(&get("/data", &[&one])).status, 200);
}

#[test]
fn tokens_with_critical_extensions_or_non_numeric_dates_are_refused() {
    let s = jwt_server(&format!("secret = \"{SECRET}\""));
    let mut c = s.client();
    // Hand-made HS256 tokens (the encoder's header type has no `crit`).
    let sign = |header: &str, claims: &serde_json::Value| {
        let signing_input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let sig =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{signing_input}.{sig}")
    };
    let plain = r#"{"alg":"HS256","typ":"JWT"}"#;
    assert_eq!(
        c.request(&get("/me", &[&bearer(&sign(plain, &claims()))]))
            .status,
        200
    );
    // RFC 7515 §4.1.11: extensions the server does not understand.
    let crit = r#"{"alg":"HS256","typ":"JWT","crit":["exp-ext"],"exp-ext":1}"#;
    let r = c.request(&get("/me", &[&bearer(&sign(crit, &claims()))]));
    assert_problem(&r, 401);
    assert!(r.text().contains("crit"), "{}", r.text());
    // RFC 7519 §2: NumericDate is a number; a string is not skipped.
    let mut odd = claims();
    odd["nbf"] = json!("2099-01-01");
    assert_problem(&c.request(&get("/me", &[&bearer(&sign(plain, &odd))])), 401);
    // A fractional `exp` is a NumericDate too.
    let mut frac = claims();
    frac["exp"] = json!(now() as f64 + 600.5);
    assert_eq!(
        c.request(&get("/me", &[&bearer(&sign(plain, &frac))]))
            .status,
        200
    );
}
