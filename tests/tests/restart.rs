//! An embedding program may start and stop servers many times in one
//! process: a stopped server must not leave its shards' epoll instances
//! (`readiness = "epoll"`) open. Its own test binary, so no other test's
//! servers are running while descriptors are counted.
#![allow(clippy::unwrap_used)]

use shardline_tests::{get, TestServer};

/// Open epoll descriptors of this process.
fn epoll_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:[eventpoll]")
        .count()
}

#[test]
fn stopped_servers_leave_no_epoll_descriptors() {
    let before = epoll_fds();
    for i in 0..10 {
        let srv = TestServer::start_default();
        let mut c = srv.client();
        assert_eq!(c.request(&get("/plaintext", &[])).status, 200, "server {i}");
        drop(c);
        srv.stop();
    }
    assert_eq!(
        epoll_fds(),
        before,
        "every stopped server's epoll instance is closed"
    );
}
