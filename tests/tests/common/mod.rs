//! Helpers shared by the integration test files (they may use dev-deps).
#![allow(dead_code)]

use shardline_tests::Response;

/// Asserts an RFC 9457 problem+json error response with `status`, and
/// returns its `type` member.
pub fn assert_problem(resp: &Response, status: u16) -> String {
    assert_eq!(resp.status, status, "status: {}", resp.summary());
    assert_eq!(
        resp.media_type().as_deref(),
        Some("application/problem+json"),
        "error responses are application/problem+json: {}",
        resp.summary()
    );
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("problem body is not JSON ({e}): {}", resp.summary()));
    let ty = v["type"]
        .as_str()
        .unwrap_or_else(|| panic!("problem without string `type`: {}", resp.summary()));
    assert!(
        ty.starts_with("https://shardline.dev/problems/"),
        "problem type {ty:?} is not under https://shardline.dev/problems/"
    );
    assert!(
        v["title"].as_str().is_some_and(|t| !t.is_empty()),
        "problem without title: {}",
        resp.summary()
    );
    assert_eq!(
        v["status"].as_u64(),
        Some(u64::from(status)),
        "problem `status` member must equal the status code: {}",
        resp.summary()
    );
    assert!(
        v["detail"].as_str().is_some(),
        "problem without detail: {}",
        resp.summary()
    );
    ty.to_string()
}

/// Asserts that the response announces the close (`Connection: close`).
pub fn assert_announces_close(resp: &Response) {
    assert!(
        resp.connection_has("close"),
        "after a framing/parse error the response must carry Connection: close: {}",
        resp.summary()
    );
}
