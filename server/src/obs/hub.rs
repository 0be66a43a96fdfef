//! Shard-to-shard messaging for scrapes and reloads.
//!
//! Shard 0 (which serves the admin listener and handles SIGHUP) is the
//! coordinator. For every other shard there is a pair of glommio shared
//! channels (single producer, single consumer, woken through the
//! executors' eventfds, no lock): requests from shard 0, replies back. Each
//! shard runs a responder task that answers from its own state, so a scrape
//! reads a shard's counters on that shard's thread, between its requests,
//! and the request path never takes a lock. Shard 0 answers itself
//! directly.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::sync::Semaphore;

use crate::obs::metrics::ShardSnapshot;

/// Requests in flight per channel: a scrape or reload sends one at a time.
const CHANNEL_SLOTS: usize = 4;
/// A shard that does not answer a scrape within this long is left out of
/// it (the reply says so) rather than hanging the scraper.
pub const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often shard 0 looks for a SIGHUP reload request (from the signal
/// thread). Reloads are rare; a poll this slow costs nothing.
pub const RELOAD_POLL_MS: u64 = 100;

/// What a shard can do when asked by the coordinator.
pub(crate) trait ShardControl {
    fn snapshot(&self) -> ShardSnapshot;
    /// Swaps in a new config generation; the plan was validated already.
    fn reload(&self, plan: &Arc<crate::app::ReloadPlan>);
}

pub(crate) enum Request {
    Snapshot(u64),
    Reload(u64, Arc<crate::app::ReloadPlan>),
}

pub(crate) enum Reply {
    Snapshot(u64, Box<ShardSnapshot>),
    Reloaded(u64),
}

impl Reply {
    fn seq(&self) -> u64 {
        match self {
            Reply::Snapshot(s, _) | Reply::Reloaded(s) => *s,
        }
    }
}

type Peer = (ConnectedSender<Request>, ConnectedReceiver<Reply>);
type ShardEnd = (SharedReceiver<Request>, SharedSender<Reply>);
type CoordEnd = (SharedSender<Request>, SharedReceiver<Reply>);

/// The channel ends, created before the shards start and taken by each
/// shard once while it builds its app (never on the request path).
pub(crate) struct Hub {
    shard_ends: Mutex<Vec<Option<ShardEnd>>>,
    coord_ends: Mutex<Option<Vec<CoordEnd>>>,
    /// Reload requests from the signal thread (SIGHUP).
    pub sighup: crossbeam_channel::Receiver<()>,
}

/// Where a reload reads the config from.
#[derive(Clone)]
pub struct ReloadSource {
    pub path: PathBuf,
    pub overrides: crate::config::ServerOverrides,
}

impl Hub {
    /// Channels for `shards` shards, and the sender the signal thread uses
    /// to ask for a reload.
    pub(crate) fn new(shards: usize) -> (Arc<Hub>, crossbeam_channel::Sender<()>) {
        let mut shard_ends = vec![None];
        let mut coord_ends = Vec::new();
        for _ in 1..shards {
            let (req_tx, req_rx) = shared_channel::new_bounded(CHANNEL_SLOTS);
            let (rep_tx, rep_rx) = shared_channel::new_bounded(CHANNEL_SLOTS);
            shard_ends.push(Some((req_rx, rep_tx)));
            coord_ends.push((req_tx, rep_rx));
        }
        // One pending SIGHUP is enough: more while one waits add nothing.
        let (tx, rx) = crossbeam_channel::bounded(1);
        (
            Arc::new(Hub {
                shard_ends: Mutex::new(shard_ends),
                coord_ends: Mutex::new(Some(coord_ends)),
                sighup: rx,
            }),
            tx,
        )
    }

    /// Starts shard `id`'s responder (shards other than 0).
    pub(crate) fn serve_shard(&self, id: usize, control: Rc<dyn ShardControl>) {
        let end = self
            .shard_ends
            .lock()
            .ok()
            .and_then(|mut v| v.get_mut(id).and_then(Option::take));
        let Some((req_rx, rep_tx)) = end else { return };
        glommio::spawn_local(async move {
            let rx = req_rx.connect().await;
            let tx = rep_tx.connect().await;
            while let Some(req) = rx.recv().await {
                let reply = match req {
                    Request::Snapshot(seq) => Reply::Snapshot(seq, Box::new(control.snapshot())),
                    Request::Reload(seq, plan) => {
                        control.reload(&plan);
                        Reply::Reloaded(seq)
                    }
                };
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        })
        .detach();
    }

    /// The coordinator's ends (shard 0, once).
    pub(crate) fn take_coordinator(&self) -> Vec<CoordEnd> {
        self.coord_ends
            .lock()
            .ok()
            .and_then(|mut c| c.take())
            .unwrap_or_default()
    }
}

/// Shard 0's side: asks every shard and collects the answers.
pub(crate) struct Coordinator {
    pending: RefCell<Option<Vec<CoordEnd>>>,
    peers: RefCell<Rc<Vec<Peer>>>,
    /// One conversation at a time, so replies match their requests.
    lock: Semaphore,
    seq: Cell<u64>,
    pub local: Rc<dyn ShardControl>,
}

impl Coordinator {
    pub(crate) fn new(ends: Vec<CoordEnd>, local: Rc<dyn ShardControl>) -> Self {
        Coordinator {
            pending: RefCell::new(Some(ends)),
            peers: RefCell::new(Rc::new(Vec::new())),
            lock: Semaphore::new(1),
            seq: Cell::new(0),
            local,
        }
    }

    /// Connects every channel now, at shard 0's start. A glommio shared
    /// channel end that waits in `connect()` for its peer re-polls on every
    /// pass of its executor (glommio's `Connector` registers a waker that
    /// each reactor pass wakes), so the other shards, which connect their
    /// ends when they start, would spin their cores until the first scrape
    /// or reload if shard 0 connected lazily.
    pub(crate) async fn connect_now(self: Rc<Self>) {
        let _turn = self.lock.acquire_permit(1).await;
        self.connect().await;
    }

    async fn connect(&self) {
        let pending = self.pending.borrow_mut().take();
        let Some(ends) = pending else {
            return;
        };
        let mut peers = Vec::with_capacity(ends.len());
        for (tx, rx) in ends {
            let tx = tx.connect().await;
            let rx = rx.connect().await;
            peers.push((tx, rx));
        }
        *self.peers.borrow_mut() = Rc::new(peers);
    }

    /// Sends `make(seq)` to every other shard and collects one reply from
    /// each (`None` for a shard that did not answer in time).
    async fn ask(&self, make: impl Fn(u64) -> Request) -> Vec<Option<Reply>> {
        let _turn = self.lock.acquire_permit(1).await;
        self.connect().await;
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let peers = Rc::clone(&self.peers.borrow());
        let mut sent = Vec::with_capacity(peers.len());
        for (tx, _) in peers.iter() {
            // Bounded too: a shard that stopped answering fills its queue,
            // and a scrape must not wait on it forever.
            let ok = future::or(async { tx.send(make(seq)).await.is_ok() }, async {
                glommio::timer::sleep(SHARD_REPLY_TIMEOUT).await;
                false
            })
            .await;
            sent.push(ok);
        }
        let mut replies = Vec::with_capacity(peers.len());
        for ((_, rx), ok) in peers.iter().zip(sent) {
            if !ok {
                replies.push(None);
                continue;
            }
            // Skip late replies to an earlier, timed-out conversation.
            let reply = future::or(
                async {
                    loop {
                        match rx.recv().await {
                            Some(r) if r.seq() == seq => return Some(r),
                            Some(_) => continue,
                            None => return None,
                        }
                    }
                },
                async {
                    glommio::timer::sleep(SHARD_REPLY_TIMEOUT).await;
                    None
                },
            )
            .await;
            replies.push(reply);
        }
        replies
    }

    /// Every shard's snapshot, shard 0's first.
    pub(crate) async fn gather(&self) -> Vec<ShardSnapshot> {
        let mut out = vec![self.local.snapshot()];
        for r in self.ask(Request::Snapshot).await {
            if let Some(Reply::Snapshot(_, s)) = r {
                out.push(*s);
            }
        }
        out
    }

    /// Applies a validated plan on every shard; the number of shards that
    /// confirmed (including this one).
    pub(crate) async fn apply(&self, plan: Arc<crate::app::ReloadPlan>) -> usize {
        self.local.reload(&plan);
        let replies = self
            .ask(|seq| Request::Reload(seq, Arc::clone(&plan)))
            .await;
        1 + replies
            .iter()
            .filter(|r| matches!(r, Some(Reply::Reloaded(_))))
            .count()
    }
}

thread_local! {
    /// Shard 0's coordinator, for the admin app built on the same thread.
    static COORDINATOR: RefCell<Option<Rc<Coordinator>>> = const { RefCell::new(None) };
}

pub(crate) fn install_coordinator(c: Rc<Coordinator>) {
    COORDINATOR.with(|slot| *slot.borrow_mut() = Some(c));
}

pub(crate) fn coordinator() -> Option<Rc<Coordinator>> {
    COORDINATOR.with(|slot| slot.borrow().clone())
}
