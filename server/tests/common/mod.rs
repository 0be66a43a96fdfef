//! Helpers for tests that drive the built `shardline` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hang guard for every wait (a read, the ready line, a process exit).
pub const GUARD: Duration = Duration::from_secs(10);

/// What the ready line says.
#[derive(Debug, Clone)]
pub struct Ready {
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shards: usize,
    /// The HTTPS listener (`tls=ADDR`, only when `[server.tls]` is set).
    pub tls: Option<SocketAddr>,
    pub line: String,
}

/// Parses `shardline ready listen=ADDR admin=ADDR|off shards=N [tls=ADDR]`.
pub fn parse_ready(line: &str) -> Ready {
    let mut it = line.split_whitespace();
    assert_eq!(it.next(), Some("shardline"), "ready line: {line:?}");
    assert_eq!(it.next(), Some("ready"), "ready line: {line:?}");
    let mut listen = None;
    let mut admin = None;
    let mut shards = None;
    let mut tls = None;
    for tok in it {
        let (k, v) = tok
            .split_once('=')
            .unwrap_or_else(|| panic!("ready line token {tok:?} in {line:?}"));
        match k {
            "listen" => listen = Some(v.parse().expect("listen address")),
            "admin" => {
                admin = Some(if v == "off" {
                    None
                } else {
                    Some(v.parse().expect("admin address"))
                })
            }
            "shards" => shards = Some(v.parse().expect("shard count")),
            "tls" => tls = Some(v.parse().expect("tls address")),
            other => panic!("unexpected ready line key {other:?} in {line:?}"),
        }
    }
    Ready {
        listen: listen.expect("listen= in the ready line"),
        admin: admin.expect("admin= in the ready line"),
        shards: shards.expect("shards= in the ready line"),
        tls,
        line: line.to_string(),
    }
}

enum Out {
    Line(String),
    Eof,
}

/// A running `shardline` process; killed (by its pid) if still running when
/// dropped.
pub struct Proc {
    child: Child,
    stdout: mpsc::Receiver<Out>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_done: mpsc::Receiver<()>,
    /// Stdout lines seen after the ready line.
    pub stdout_extra: Vec<String>,
}

/// Starts the binary with these arguments.
pub fn spawn(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shardline");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Out::Eof);
                    return;
                }
                Ok(_) => {
                    if tx.send(Out::Line(line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut err = child.stderr.take().unwrap();
    let buf = Arc::new(Mutex::new(Vec::new()));
    let buf2 = Arc::clone(&buf);
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match err.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf2.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
        let _ = etx.send(());
    });
    Proc {
        child,
        stdout: rx,
        stderr: buf,
        stderr_done: erx,
        stdout_extra: Vec::new(),
    }
}

/// Starts the binary and waits for its ready line.
pub fn start(args: &[&str]) -> (Proc, Ready) {
    let mut p = spawn(args);
    let line = p.ready_line();
    let ready = parse_ready(&line);
    (p, ready)
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stdout line (the ready line), within the guard.
    pub fn ready_line(&mut self) -> String {
        match self.stdout.recv_timeout(GUARD) {
            Ok(Out::Line(l)) => l.trim_end_matches(['\r', '\n']).to_string(),
            Ok(Out::Eof) => {
                let st = self.wait_exit();
                panic!(
                    "shardline exited ({st:?}) without a ready line; stderr: {}",
                    self.stderr_text()
                )
            }
            Err(_) => panic!(
                "no ready line within {GUARD:?}; stderr: {}",
                self.stderr_text()
            ),
        }
    }

    /// Everything written to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Sends a signal to the process (by pid) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Waits (within the guard) for the process to exit; kills it and
    /// panics if it does not.
    pub fn wait_exit(&mut self) -> ExitStatus {
        // Its stdout closes when it exits: wait for that first (a read, not
        // a timer), then reap.
        let deadline = Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(Out::Line(l)) => {
                    self.stdout_extra.push(l);
                    continue;
                }
                Ok(Out::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "shardline did not exit within {GUARD:?}; stderr: {}",
                        self.stderr_text()
                    );
                }
            }
        }
        // Bounded poll for the exit status: stdout is closed, so the
        // process is on its way out.
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                let _ = self.stderr_done.recv_timeout(GUARD);
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "shardline closed stdout but did not exit within {GUARD:?}; stderr: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary expecting it to refuse its configuration: returns the
/// exit status and stderr.
pub fn run_expecting_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut p = spawn(args);
    let st = p.wait_exit();
    (st, p.stderr_text())
}

/// A file under the target's temp dir holding `text`.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shardline-bin-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// A minimal HTTP/1.1 response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A connection with a read buffer.
pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect_timeout(&addr, GUARD).expect("connect");
        s.set_read_timeout(Some(GUARD)).unwrap();
        s.set_write_timeout(Some(GUARD)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write");
    }

    fn more(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!(
                "read: {e} (buffered {:?})",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads one response framed by Content-Length (or no body for 1xx).
    pub fn response(&mut self) -> Resp {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.more() > 0,
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header colon");
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let len: usize = if (100..200).contains(&status) {
            0
        } else {
            headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().expect("content-length"))
                .unwrap_or(0)
        };
        while self.buf.len() < end + len {
            assert!(self.more() > 0, "connection closed mid-body");
        }
        let body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Sends a request and reads the response.
    pub fn request(&mut self, b: &[u8]) -> Resp {
        self.send(b);
        self.response()
    }

    /// True when the server closes the connection with nothing more sent.
    pub fn closed(&mut self) -> bool {
        self.more() == 0 && self.buf.is_empty()
    }
}

/// `GET path` with Host.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// Listening TCP sockets of process `pid` on `port` (IPv4 and IPv6), from
/// /proc: the process's socket inodes matched against LISTEN rows.
pub fn listening_sockets(pid: u32, port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd") {
        let Ok(e) = e else { continue };
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(ino) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(ino.to_string());
            }
        }
    }
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // st 0A = TCP_LISTEN.
            if cols[3] == "0A" && local_port == Some(port) && inodes.contains(cols[9]) {
                n += 1;
            }
        }
    }
    n
}
