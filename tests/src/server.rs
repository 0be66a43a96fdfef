//! Starting an in-process server for a test.

use std::net::SocketAddr;

use crate::client::Client;

/// A running in-process server on `127.0.0.1:<ephemeral>`, one shard, admin
/// listener off unless asked for. Dropping it shuts the server down and
/// joins its shards.
pub struct TestServer {
    running: Option<shardline::RunningServer>,
    /// The address the main listener is bound to.
    pub addr: SocketAddr,
    /// The admin listener's address, if enabled.
    pub admin: Option<SocketAddr>,
    /// The HTTPS listener's address (`[server.tls]`), if configured.
    pub tls: Option<SocketAddr>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("admin", &self.admin)
            .finish()
    }
}

/// Prepares a config for a test: port 0, loopback, one shard, no admin.
///
/// `SHARDLINE_TEST_READINESS=io_uring` (or `epoll`) picks how the server's
/// sockets wait, so the whole suite can run in either mode (`.ci/run` runs
/// it in both); unset, the server's default applies.
pub fn test_config(mut cfg: shardline::Config) -> shardline::Config {
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = None;
    cfg.server.shards = 1;
    match std::env::var("SHARDLINE_TEST_READINESS").as_deref() {
        Ok("io_uring") => cfg.server.readiness = shardline::ReadinessMode::IoUring,
        Ok("epoll") => cfg.server.readiness = shardline::ReadinessMode::Epoll,
        Ok("epoll-wait") => cfg.server.readiness = shardline::ReadinessMode::EpollWait,
        Ok(other) => panic!("SHARDLINE_TEST_READINESS={other:?}: use epoll or io_uring"),
        Err(_) => {}
    }
    cfg
}

/// Parses a TOML config (see the server's config reference); panics with
/// the error if it is refused.
pub fn config_from_toml(text: &str) -> shardline::Config {
    match shardline::Config::from_toml_str(text) {
        Ok(c) => c,
        Err(e) => panic!("test config refused: {e:?}\n{text}"),
    }
}

impl TestServer {
    /// The embedded default config (`/healthz`, `/plaintext`, `/json`,
    /// `POST /echo`).
    pub fn start_default() -> TestServer {
        TestServer::start(shardline::Config::default())
    }

    /// A config given as TOML; `[server]` listen/admin/shards are
    /// overridden for the test.
    pub fn start_toml(text: &str) -> TestServer {
        TestServer::start(config_from_toml(text))
    }

    /// The embedded default config changed by `edit` (e.g. a limit).
    pub fn start_with(edit: impl FnOnce(&mut shardline::Config)) -> TestServer {
        let mut cfg = shardline::Config::default();
        edit(&mut cfg);
        TestServer::start(cfg)
    }

    /// Starts `cfg` after [`test_config`].
    pub fn start(cfg: shardline::Config) -> TestServer {
        TestServer::from_builder(shardline::Server::new(test_config(cfg)))
    }

    /// Starts a server built by the caller (custom handlers).
    pub fn from_builder(server: shardline::Server) -> TestServer {
        let running = match server.start() {
            Ok(r) => r,
            Err(e) => panic!("server did not start: {e:?}"),
        };
        TestServer {
            addr: running.local_addr(),
            admin: running.admin_addr(),
            tls: running.tls_addr(),
            running: Some(running),
        }
    }

    /// A new client connection to the main listener.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Reloads the TLS certificates (what SIGHUP does in the binary).
    pub fn reload_tls(&self) -> Result<bool, String> {
        match &self.running {
            Some(r) => r.reload_tls(),
            None => Ok(false),
        }
    }

    /// The HTTPS listener's address; panics if none is configured.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls.expect("the test config has no [server.tls]")
    }

    /// Reload and log-reopen control (what SIGHUP and SIGUSR1 do).
    pub fn control(&self) -> shardline::ControlHandle {
        self.running
            .as_ref()
            .map(shardline::RunningServer::control_handle)
            .expect("server running")
    }

    /// Begins a graceful drain (non-blocking).
    pub fn shutdown(&self) {
        if let Some(r) = &self.running {
            r.shutdown();
        }
    }

    /// Drains and joins; panics if the server reports an error.
    pub fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            if let Err(e) = r.wait() {
                panic!("server stopped with an error: {e:?}");
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            let _ = r.wait();
        }
    }
}
