//! Shard-to-shard messages: a full mesh of single-producer/single-consumer
//! glommio shared channels, one per ordered pair of shards.
//!
//! State that must be global (a rate limit for the whole server, a quota,
//! an idempotency key) lives at one *owner* shard; other shards talk to it
//! by message through this mesh, never through a shared lock. Sending never
//! blocks the request path: [`Mesh::send`] puts the message on a
//! shard-local queue that a per-peer task drains into the shared channel
//! (so a full channel or a peer that has not connected yet delays the
//! message, not the caller). Each shard runs one receive task per peer that
//! hands messages to the handlers the apps subscribed ([`Mesh::subscribe`]).
//!
//! The mesh exists only when the server asks for it
//! (`ShardSetConfig::mesh`) and there is more than one shard: N shards need
//! N×(N−1) channels. An app gets its shard's mesh with [`current`] while it
//! is built ([`crate::AppFactory::build`] runs on the shard's thread).

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};

/// A message between shards; handlers downcast it to their own type.
pub type Message = Box<dyn Any + Send>;

/// Called with (sending shard, message) on the receiving shard. Returns the
/// message when it is not this handler's, so the next handler can look.
pub type Handler = Rc<dyn Fn(usize, Message) -> Option<Message>>;

/// Messages queued in one shared channel before its sender waits (the
/// per-peer local queue in front of it is unbounded, so callers never do).
/// 256 × 16 bytes per channel keeps a 64-shard mesh (4032 channels) at
/// 16 MiB while absorbing bursts of several hundred messages.
pub const MESH_CHANNEL_CAPACITY: usize = 256;

/// One shard's ends of every channel, made by [`MeshWiring::new`] on the
/// starting thread and moved to the shard's thread.
pub(crate) struct MeshEnds {
    /// `senders[j]`: to shard j (None for self).
    senders: Vec<Option<SharedSender<Message>>>,
    /// `receivers[j]`: from shard j (None for self).
    receivers: Vec<Option<SharedReceiver<Message>>>,
}

/// Every shard's ends, indexed by shard.
pub(crate) struct MeshWiring(pub Vec<MeshEnds>);

impl MeshWiring {
    pub(crate) fn new(count: usize) -> MeshWiring {
        let mut ends: Vec<MeshEnds> = (0..count)
            .map(|_| MeshEnds {
                senders: (0..count).map(|_| None).collect(),
                receivers: (0..count).map(|_| None).collect(),
            })
            .collect();
        for from in 0..count {
            for to in 0..count {
                if from == to {
                    continue;
                }
                let (tx, rx) = shared_channel::new_bounded(MESH_CHANNEL_CAPACITY);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
        MeshWiring(ends)
    }
}

/// This shard's view of the mesh.
pub struct Mesh {
    id: usize,
    count: usize,
    outboxes: Vec<Option<LocalSender<Message>>>,
    handlers: RefCell<Vec<Handler>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("id", &self.id)
            .field("count", &self.count)
            .finish()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Mesh>>> = const { RefCell::new(None) };
}

/// The mesh of the shard running on this thread, if the server started one.
pub fn current() -> Option<Rc<Mesh>> {
    CURRENT.with(|c| c.borrow().clone())
}

impl Mesh {
    /// This shard's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// How many shards the mesh joins.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Queues `msg` for shard `to`; false when `to` is this shard, out of
    /// range, or gone (shutting down).
    pub fn send(&self, to: usize, msg: Message) -> bool {
        match self.outboxes.get(to) {
            Some(Some(tx)) => tx.try_send(msg).is_ok(),
            _ => false,
        }
    }

    /// Adds a handler for messages arriving on this shard.
    pub fn subscribe(&self, handler: Handler) {
        self.handlers.borrow_mut().push(handler);
    }

    fn deliver(&self, from: usize, msg: Message) {
        let handlers: Vec<Handler> = self.handlers.borrow().clone();
        let mut msg = Some(msg);
        for h in handlers {
            match msg.take() {
                Some(m) => msg = h(from, m),
                None => return,
            }
        }
    }
}

/// Sets up this shard's mesh (before its apps are built) and returns the
/// function that starts its tasks once start-up has moved on (connecting
/// waits for the peers, which start after this shard).
pub(crate) fn install(id: usize, ends: MeshEnds) -> impl FnOnce() {
    let count = ends.senders.len();
    let mut outboxes = Vec::with_capacity(count);
    let mut pumps = Vec::new();
    for (to, tx) in ends.senders.into_iter().enumerate() {
        match tx {
            Some(tx) => {
                let (ltx, lrx) = local_channel::new_unbounded::<Message>();
                outboxes.push(Some(ltx));
                pumps.push((to, tx, lrx));
            }
            None => outboxes.push(None),
        }
    }
    let mesh = Rc::new(Mesh {
        id,
        count,
        outboxes,
        handlers: RefCell::new(Vec::new()),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(Rc::clone(&mesh)));
    let receivers = ends.receivers;
    move || {
        for (_, tx, lrx) in pumps {
            glommio::spawn_local(async move {
                let tx = tx.connect().await;
                while let Some(m) = lrx.recv().await {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
        }
        for (from, rx) in receivers.into_iter().enumerate() {
            let Some(rx) = rx else { continue };
            let mesh = Rc::clone(&mesh);
            glommio::spawn_local(async move {
                let rx = rx.connect().await;
                while let Some(m) = rx.recv().await {
                    mesh.deliver(from, m);
                }
            })
            .detach();
        }
    }
}

/// Forgets this thread's mesh (the shard is ending).
pub(crate) fn uninstall() {
    CURRENT.with(|c| c.borrow_mut().take());
}
