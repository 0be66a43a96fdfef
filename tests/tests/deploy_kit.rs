//! The deploy kit (`deploy/`) stays in step with the server: every metric
//! the Grafana dashboard and the Prometheus rules query is one `/metrics`
//! actually exports, and the files parse.
#![allow(clippy::unwrap_used)]

use shardline_tests::metrics;
use shardline_tests::server::config_from_toml;
use shardline_tests::tls::{Ca, ScratchDir};
use shardline_tests::upstream::{Behaviour, Upstream};
use shardline_tests::{get, Client, TestServer};

const DASHBOARD: &str = include_str!("../../deploy/grafana-dashboard.json");
const RULES: &str = include_str!("../../deploy/prometheus-rules.yml");

/// Metric names (`shardline_...`) mentioned in `text`.
fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("shardline_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // Skip words that are not metric names (e.g. "shardline_tests").
        if name.len() > "shardline_".len() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_and_rules_query_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    assert!(!dash["panels"].as_array().unwrap().is_empty());

    let up = Upstream::start(Behaviour::ok("x"));
    // An HTTPS listener too, for the TLS families the rules query.
    let dir = ScratchDir::new("deploy-kit");
    let leaf = Ca::new("deploy kit CA").server(&["localhost"]);
    let (cert, key) = (
        dir.write("server.crt", &leaf.cert_pem),
        dir.write("server.key", &leaf.key_pem),
    );
    let mut cfg = config_from_toml(&format!(
        r#"
[server.tls]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"

[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "p"
path = "/p"
upstream = "u"
cache = {{ ttl = "1s" }}

[[slos]]
name = "s"
objective = 0.99
"#,
        up.addr
    ));
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.server.shards = 1;
    let srv = TestServer::from_builder(shardline::Server::new(cfg));
    srv.client().request(&get("/p", &[]));
    let text = Client::connect(srv.admin.unwrap())
        .request(&get("/metrics", &[]))
        .text();
    let exp = metrics::parse(&text, false).unwrap();
    let exported: Vec<String> = exp.samples.iter().map(|s| s.name.clone()).collect();
    for (file, body) in [
        ("grafana-dashboard.json", DASHBOARD),
        ("prometheus-rules.yml", RULES),
    ] {
        let used = names(body);
        assert!(!used.is_empty(), "{file} queries no shardline metric");
        for n in used {
            assert!(
                exported.contains(&n),
                "{file} queries {n}, which /metrics does not export"
            );
        }
    }
    // The burn-rate alerts cover the workbook's four window pairs.
    for pair in [
        ("\"1h\"", "\"5m\""),
        ("\"6h\"", "\"30m\""),
        ("\"1d\"", "\"2h\""),
        ("\"3d\"", "\"6h\""),
    ] {
        assert!(RULES.contains(&format!("window={}", pair.0)), "{pair:?}");
        assert!(RULES.contains(&format!("window={}", pair.1)), "{pair:?}");
    }
}
