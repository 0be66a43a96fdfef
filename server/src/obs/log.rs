//! Log streams (access log, audit log) written off the request path.
//!
//! Each shard appends JSON lines to its own batch buffer (a `RefCell<Vec>`,
//! no lock). A full batch, or the shard's flush timer, hands the batch to a
//! bounded per-shard channel; a writer thread per stream drains every
//! shard's channel to stdout or a file. When a channel is full (the disk
//! is slow) the batch is dropped and its lines counted: a shard never
//! waits for the disk. SIGUSR1 (`LogControl::reopen`) makes the writer
//! reopen its file, for log rotation.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Select, Sender, TrySendError};

use crate::config_obs::LogTarget;
use crate::obs::metrics::LogCounts;

/// A shard hands its lines over in batches of about this size: one channel
/// send and one write per batch instead of per line.
pub const LOG_BATCH_BYTES: usize = 32 * 1024;
/// Batches queued per shard before lines are dropped: 16 x 32 KiB bounds
/// the memory a stalled disk can pin to 512 KiB per shard per stream.
pub const LOG_QUEUE_BATCHES: usize = 16;
/// A shard flushes a partial batch this often, so lines appear promptly
/// on a quiet server.
pub const LOG_FLUSH_MS: u64 = 200;
/// How often the writer looks at the reopen flag when no lines arrive.
const WRITER_TICK: Duration = Duration::from_millis(100);

thread_local! {
    /// This shard's log buffers, flushed when the shard's thread ends.
    /// A connection task still running when a shard stops is not dropped
    /// by the executor (it is leaked with what it references), so a
    /// buffer's own `Drop` may never run; this guard flushes it anyway.
    static EXIT_FLUSH: ExitFlush = const { ExitFlush(RefCell::new(Vec::new())) };
}

struct ExitFlush(RefCell<Vec<std::rc::Weak<ShardLog>>>);

impl Drop for ExitFlush {
    fn drop(&mut self) {
        for log in self.0.borrow().iter().filter_map(std::rc::Weak::upgrade) {
            log.flush();
        }
    }
}

/// Flushes `log` when this thread (shard) ends.
pub(crate) fn flush_at_exit(log: &std::rc::Rc<ShardLog>) {
    EXIT_FLUSH.with(|f| f.0.borrow_mut().push(std::rc::Rc::downgrade(log)));
}

/// One shard's end of a log stream.
pub(crate) struct ShardLog {
    tx: Sender<Vec<u8>>,
    buf: RefCell<Vec<u8>>,
    /// Lines in `buf`.
    pending: Cell<u64>,
    lines: Cell<u64>,
    dropped: Cell<u64>,
}

impl ShardLog {
    /// Appends one line written by `f` (which must not write a newline).
    pub(crate) fn line(&self, f: impl FnOnce(&mut Vec<u8>)) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            f(&mut buf);
            buf.push(b'\n');
            buf.len() >= LOG_BATCH_BYTES
        };
        self.pending.set(self.pending.get() + 1);
        self.lines.set(self.lines.get() + 1);
        if full {
            self.flush();
        }
    }

    /// Hands the current batch to the writer, or drops it if the queue is full.
    pub(crate) fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut *buf, Vec::with_capacity(LOG_BATCH_BYTES));
        let n = self.pending.replace(0);
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(mut b)) => {
                self.dropped.set(self.dropped.get() + n);
                // Keep the allocation for the next batch.
                b.clear();
                *buf = b;
            }
            Err(TrySendError::Disconnected(_)) => self.dropped.set(self.dropped.get() + n),
        }
    }

    pub(crate) fn counts(&self) -> LogCounts {
        LogCounts {
            lines: self.lines.get(),
            dropped: self.dropped.get(),
        }
    }
}

impl Drop for ShardLog {
    fn drop(&mut self) {
        // The shard is ending: whatever is buffered goes to the writer.
        self.flush();
    }
}

/// A started log stream: per-shard senders (taken once by each shard)
/// and the writer thread.
pub(crate) struct LogStream {
    senders: Mutex<Vec<Option<Sender<Vec<u8>>>>>,
}

impl LogStream {
    /// Shard `id`'s end; `None` if already taken.
    pub(crate) fn take(&self, id: usize) -> Option<ShardLog> {
        let tx = self
            .senders
            .lock()
            .ok()
            .and_then(|mut v| v.get_mut(id).and_then(Option::take))?;
        Some(ShardLog {
            tx,
            buf: RefCell::new(Vec::with_capacity(LOG_BATCH_BYTES)),
            pending: Cell::new(0),
            lines: Cell::new(0),
            dropped: Cell::new(0),
        })
    }
}

/// Process-wide control of the log writers: reopen (SIGUSR1) and join.
#[derive(Clone, Default)]
pub struct LogControl {
    reopen: Vec<Arc<AtomicBool>>,
    /// Set once the shards have ended: writers drain what is queued and
    /// exit (they cannot wait for every sender to be dropped: see
    /// `EXIT_FLUSH`).
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("streams", &self.reopen.len())
            .finish()
    }
}

impl LogControl {
    /// Asks every writer to reopen its file (after a rotation).
    pub fn reopen(&self) {
        for r in &self.reopen {
            r.store(true, Ordering::Release);
        }
    }

    /// Waits for the writers to finish (after the shards ended, which
    /// closes their channels).
    pub(crate) fn join(&self) {
        self.stop.store(true, Ordering::Release);
        let handles: Vec<JoinHandle<()>> = match self.threads.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => return,
        };
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Starts a writer for `target` with one channel per shard; `None` when
/// the stream is off.
pub(crate) fn start(
    name: &str,
    target: &LogTarget,
    shards: usize,
    control: &mut LogControl,
) -> Result<Option<Arc<LogStream>>, String> {
    let sink = match target {
        LogTarget::Off => return Ok(None),
        LogTarget::Stdout => Sink::Stdout,
        LogTarget::File(p) => Sink::File {
            file: BufWriter::new(
                open(p).map_err(|e| format!("{name}: cannot open {}: {e}", p.display()))?,
            ),
            path: p.clone(),
        },
    };
    let mut senders = Vec::with_capacity(shards);
    let mut receivers = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = bounded(LOG_QUEUE_BATCHES);
        senders.push(Some(tx));
        receivers.push(rx);
    }
    let reopen = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&reopen);
    let stop = Arc::clone(&control.stop);
    let handle = std::thread::Builder::new()
        .name(format!("{name}-writer"))
        .spawn(move || writer(sink, receivers, &flag, &stop))
        .map_err(|e| format!("{name}: cannot start the writer thread: {e}"))?;
    control.reopen.push(reopen);
    if let Ok(mut t) = control.threads.lock() {
        t.push(handle);
    }
    Ok(Some(Arc::new(LogStream {
        senders: Mutex::new(senders),
    })))
}

fn open(p: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

enum Sink {
    Stdout,
    File {
        file: BufWriter<File>,
        path: PathBuf,
    },
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) {
        let res = match self {
            Sink::Stdout => io::stdout().lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        };
        if let Err(e) = res {
            tracing::warn!("log write failed: {e}");
        }
    }

    fn flush(&mut self) {
        let _ = match self {
            Sink::Stdout => io::stdout().lock().flush(),
            Sink::File { file, .. } => file.flush(),
        };
    }

    fn reopen(&mut self) {
        if let Sink::File { file, path } = self {
            let _ = file.flush();
            match open(path) {
                Ok(f) => *file = BufWriter::new(f),
                Err(e) => tracing::warn!("cannot reopen {}: {e}", path.display()),
            }
        }
    }
}

fn writer(
    mut sink: Sink,
    mut receivers: Vec<Receiver<Vec<u8>>>,
    reopen: &AtomicBool,
    stop: &AtomicBool,
) {
    while !receivers.is_empty() {
        if reopen.swap(false, Ordering::AcqRel) {
            sink.reopen();
        }
        if stop.load(Ordering::Acquire) {
            // The shards are gone: write what they left and finish.
            for r in &receivers {
                while let Ok(b) = r.try_recv() {
                    sink.write(&b);
                }
            }
            break;
        }
        let mut sel = Select::new();
        for r in &receivers {
            sel.recv(r);
        }
        let Ok(op) = sel.select_timeout(WRITER_TICK) else {
            sink.flush();
            continue;
        };
        let i = op.index();
        match op.recv(&receivers[i]) {
            Ok(batch) => {
                sink.write(&batch);
                // Write whatever else is queued before flushing once.
                for r in &receivers {
                    while let Ok(b) = r.try_recv() {
                        sink.write(&b);
                    }
                }
                sink.flush();
            }
            Err(_) => {
                // That shard ended; drain the others.
                receivers.swap_remove(i);
            }
        }
    }
    sink.flush();
}
