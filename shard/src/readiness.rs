//! Socket readiness from one epoll instance per shard (`readiness =
//! "epoll"`), in place of one io_uring poll per socket wait.
//!
//! glommio waits for a readable socket by arming a one-shot
//! `IORING_OP_POLL_ADD` per wait. When that poll completes while the shard
//! is running (a busy shard, the common case under load), the kernel
//! interrupts the shard with an IPI to run the completion: measured at 0.91
//! IPIs per request at a fixed 65 k req/s on `/plaintext` (under half the
//! shard's maximum), with a p50 of 548 µs against nginx's 51 µs; with this
//! module, 0.06 IPIs and 49 µs (README "Socket readiness"). An edge-triggered epoll registration is made once per
//! connection and costs nothing per wait; a report just joins the epoll
//! instance's ready list, and one `epoll_wait(0)` per pass of the shard's
//! loop collects every connection's reports at once. Only when a pass
//! finds nothing does the shard ask glommio to wake it on the epoll
//! descriptor (one poll for all connections), so an idle shard sleeps.
//!
//! A wait is a stored waker; nothing is allocated per wait.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::event::LocalEvent;
use crate::sys::{Epoll, EpollEvent};

/// How a shard's connections wait for their sockets to become readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadinessMode {
    /// One edge-triggered epoll registration per connection, collected
    /// once per executor pass (this module).
    #[default]
    Epoll,
    /// `Epoll`, and a look that finds nothing first waits up to
    /// [`BRIEF_WAIT`] in `epoll_pwait2` before sleeping through glommio:
    /// less CPU per request below saturation, at a higher p50 (measured;
    /// README "A brief wait in epoll").
    EpollWait,
    /// glommio's own wait: a one-shot io_uring poll per wait.
    IoUring,
}

impl ReadinessMode {
    pub fn name(self) -> &'static str {
        match self {
            ReadinessMode::Epoll => "epoll",
            ReadinessMode::EpollWait => "epoll-wait",
            ReadinessMode::IoUring => "io_uring",
        }
    }
}

thread_local! {
    /// This thread's shard's instance, for sockets the server crate opens
    /// (upstream connections) without a handle on the shard's state.
    static LOCAL: RefCell<Option<Rc<Readiness>>> = const { RefCell::new(None) };
}

/// Makes `r` the instance [`watch_local`] registers with on this thread
/// (the shard's executor thread).
pub(crate) fn install_local(r: Option<Rc<Readiness>>) {
    LOCAL.with(|l| *l.borrow_mut() = r);
}

/// Registers `fd` with this shard's epoll instance; `None` when the shard
/// waits on io_uring (or the registration failed), and the socket's reads
/// then go through glommio.
pub fn watch_local(fd: RawFd) -> Option<Watch> {
    LOCAL.with(|l| l.borrow().as_ref().and_then(|r| r.watch(fd).ok()))
}

/// With `readiness = "epoll-wait"`: how long the readiness loop sleeps in
/// `epoll_pwait2` when a look finds nothing, before it asks glommio to wake
/// it on the epoll descriptor. Not the default: it also costs ~12 µs of p50
/// at partial load (README "A brief wait in epoll"), and proxied requests
/// measured slower at p50 with it.
///
/// Going to sleep through glommio costs a descriptor duplicate, an io_uring
/// poll, glommio's park (ring submit and wait, preemption timer) and a
/// close on waking: at a fixed 65 k req/s on `/plaintext` (requests ~15 µs
/// apart on one shard), 1.4-1.8 `io_uring_enter`, 0.2 `fcntl` + `close`
/// and 0.14 `membarrier` per request, and 13.7-14.2 µs of CPU per request.
/// Waiting in epoll itself first catches the next request in most cases:
/// 0 `io_uring_enter`, 11.5-12.6 µs (README "Socket readiness").
///
/// While it sleeps there, glommio's ring is not looked at, so the wait is
/// short and made at most `LOOKS_PER_RING_POLL` times between two of
/// glommio's polls of its ring (timers, accepts, upstream connects wait at
/// most that many waits extra), and never while a task waits on the ring to
/// write (`RingWrite`); a task woken by another task in the shard may wait
/// one wait longer too.
const BRIEF_WAIT: Duration = Duration::from_micros(50);

thread_local! {
    /// Tasks of this thread's shard waiting on glommio's ring to write
    /// (a socket buffer was full): while any is, the readiness loop makes
    /// no brief wait, which would hold the ring's completion back.
    static RING_WRITES: Cell<usize> = const { Cell::new(0) };
}

/// Held (across `.await`) while a write may wait on glommio's ring; see
/// [`BRIEF_WAIT`].
pub struct RingWrite(());

impl RingWrite {
    pub fn begin() -> RingWrite {
        RING_WRITES.with(|n| n.set(n.get() + 1));
        RingWrite(())
    }
}

impl Drop for RingWrite {
    fn drop(&mut self) {
        RING_WRITES.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Report bits after which a socket stays readable (EOF or an error).
const CLOSED_EVENTS: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// Reports taken per `epoll_wait`; more wait for the next pass.
const EVENTS_PER_PASS: usize = 256;

/// Busy looks (each found reports) in a row before the readiness loop lets
/// glommio poll its ring: bounds how long accepts, timers and write
/// completions wait behind a stream of reports, at a few tasks' runs.
const LOOKS_PER_RING_POLL: u32 = 4;

/// One registered socket's state.
struct Slot {
    /// The task waiting for the socket, if any.
    waker: Option<Waker>,
    /// Whether a `recv` may find bytes: set by every report, cleared when
    /// a `recv` finds the socket drained (`EAGAIN`, or fewer bytes than
    /// asked for). While clear, a read waits without asking the kernel:
    /// after a response is written the next request is rarely there yet,
    /// and that `recv` would fail with `EAGAIN` every time (measured at
    /// ~0.5 to 1 wasted `recvfrom` per request, see [`Watch::try_recv`]).
    ready: bool,
    /// The peer's end is closed, or the socket has an error (a report
    /// with `EPOLLRDHUP`, `EPOLLHUP` or `EPOLLERR`): sticky, since no later
    /// report will come. A short `recv` does not mean drained then: the
    /// last bytes and the FIN can arrive before one report, and that
    /// `recv` returns the bytes, the next the EOF.
    closed: bool,
}

/// The shard's epoll instance and the registered sockets, by token.
pub struct Readiness {
    epoll: Epoll,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    /// Whether a look that finds nothing first waits [`BRIEF_WAIT`] in epoll
    /// (`readiness = "epoll-wait"`).
    brief_wait: bool,
    /// Ends [`Readiness::run`] when the shard stops, so its task (and the
    /// epoll descriptor and duplicate it holds) does not outlive the shard:
    /// an embedding program may start and stop servers many times.
    stop: LocalEvent,
}

/// A socket's registration; frees its token when dropped. Held beside the
/// socket it watches, which stays open for the `Watch`'s life.
pub struct Watch {
    readiness: Rc<Readiness>,
    token: usize,
    fd: RawFd,
}

impl Readiness {
    pub fn new(brief_wait: bool) -> io::Result<Rc<Readiness>> {
        Ok(Rc::new(Readiness {
            brief_wait,
            epoll: Epoll::new()?,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            stop: LocalEvent::new(),
        }))
    }

    /// Registers `fd` (a socket the caller owns for the `Watch`'s life).
    pub fn watch(self: &Rc<Self>, fd: RawFd) -> io::Result<Watch> {
        // A new registration starts ready: the socket may hold bytes that
        // arrived before it was added (epoll reports those too, but a
        // first `recv` need not wait for the report).
        let fresh = Slot {
            waker: None,
            ready: true,
            closed: false,
        };
        let token = match self.free.borrow_mut().pop() {
            Some(t) => {
                if let Some(slot) = self.slots.borrow_mut().get_mut(t) {
                    *slot = fresh;
                }
                t
            }
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(fresh);
                slots.len() - 1
            }
        };
        if let Err(e) = self.epoll.add(fd, token as u64) {
            self.free.borrow_mut().push(token);
            return Err(e);
        }
        Ok(Watch {
            readiness: Rc::clone(self),
            token,
            fd,
        })
    }

    /// Ends [`Readiness::run`] at its next look.
    pub fn stop(&self) {
        self.stop.fire();
    }

    /// The shard's readiness loop: hands reports to the waiting tasks once
    /// per pass of the executor, and sleeps on the epoll descriptor when a
    /// pass finds none. Runs until [`Readiness::stop`].
    pub async fn run(self: Rc<Self>) {
        let mut events = vec![EpollEvent { events: 0, u64: 0 }; EVENTS_PER_PASS];
        // Looks since glommio last polled its own ring.
        let mut looks_without_ring = 0u32;
        // Off for good where the kernel lacks `epoll_pwait2`. A brief wait
        // that finds reports is a busy look, so there are at most
        // `LOOKS_PER_RING_POLL` of them between two of glommio's polls of its
        // ring (its timers, accepts and connects wait at most that many
        // `BRIEF_WAIT`s); one that finds nothing sleeps through glommio.
        let mut brief_wait = self.brief_wait;
        loop {
            if self.stop.is_fired() {
                return;
            }
            let mut n = self.epoll.take_ready(&mut events);
            if n == 0 && brief_wait && RING_WRITES.with(Cell::get) == 0 {
                // Nothing now: wait in epoll itself a little before going
                // through glommio's sleep (see `BRIEF_WAIT`).
                match self.epoll.wait_briefly(&mut events, BRIEF_WAIT) {
                    Some(got) => n = got,
                    None => brief_wait = false,
                }
            }
            if n == 0 {
                looks_without_ring = 0;
                let readable =
                    futures_lite::future::or(async { Some(self.epoll.readable().await) }, async {
                        self.stop.wait().await;
                        None
                    })
                    .await;
                if let Some(Err(_)) = readable {
                    // Out of descriptors for the duplicate: look again soon.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
            for ev in &events[..n] {
                let token = ev.u64 as usize;
                let mask = ev.events;
                let waker = self.slots.borrow_mut().get_mut(token).and_then(|slot| {
                    slot.ready = true;
                    slot.closed |= mask & CLOSED_EVENTS != 0;
                    slot.waker.take()
                });
                if let Some(w) = waker {
                    w.wake();
                }
            }
            // Let the woken tasks run, then look again. Mostly that is a
            // plain yield (back of the queue, behind the woken tasks), so a
            // lone request costs one executor pass, not two; but while
            // every look finds more, the run queue never empties and glommio
            // would not poll its own ring (timers, accepts, writes) until
            // its preemption timer: every few looks, wait for a timer at
            // "now", which fires on the executor's next pass.
            looks_without_ring += 1;
            if looks_without_ring < LOOKS_PER_RING_POLL {
                futures_lite::future::yield_now().await;
            } else {
                looks_without_ring = 0;
                glommio::timer::sleep(Duration::from_nanos(1)).await;
            }
        }
    }
}

impl Watch {
    /// A non-blocking read of the socket, skipped (`WouldBlock` without a
    /// syscall) while the socket is known to be drained.
    ///
    /// A `recv` that returns fewer bytes than asked for drained the socket,
    /// so the slot is marked not ready as for `EAGAIN`. That is sound for
    /// an edge-triggered TCP socket: the kernel reports every arrival of
    /// bytes (and EOF, and errors) after the `recv` that drained it, and a
    /// report marks the slot ready again before its task is woken. A report
    /// for bytes that were already read costs one `recv` that finds
    /// `EAGAIN`, never a lost wake-up. Once a report has said the peer
    /// closed, every read asks the kernel (see `Slot::closed`).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.is_ready() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let res = crate::sys::try_recv(self.fd, buf);
        let drained = match &res {
            Ok(n) => *n > 0 && *n < buf.len(),
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        if drained {
            if let Some(slot) = self.readiness.slots.borrow_mut().get_mut(self.token) {
                slot.ready = false;
            }
        }
        res
    }

    /// Whether the socket is known to be open and to hold nothing: no
    /// report has come since a read drained it. A report the kernel has
    /// queued but the shard has not collected yet (it collects once per
    /// executor pass) is not seen here, so this is a hint: a caller that
    /// cannot recover from sending on a connection the peer just closed
    /// still asks the kernel.
    pub fn known_drained(&self) -> bool {
        self.readiness
            .slots
            .borrow()
            .get(self.token)
            .is_some_and(|slot| !slot.ready && !slot.closed)
    }

    fn is_ready(&self) -> bool {
        self.readiness
            .slots
            .borrow()
            .get(self.token)
            .map_or(true, |slot| slot.ready || slot.closed)
    }

    /// [`Watch::try_recv`], `Pending` (with the waker stored) until the
    /// socket has something.
    pub fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.try_recv(buf) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Edge-triggered: any byte that arrives after the recv that
                // drained the socket makes a new report, so storing the
                // waker now loses none.
                if let Some(slot) = self.readiness.slots.borrow_mut().get_mut(self.token) {
                    match &slot.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => slot.waker = Some(cx.waker().clone()),
                    }
                }
                Poll::Pending
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(slot) = self.readiness.slots.borrow_mut().get_mut(self.token) {
            slot.waker = None;
        }
        self.readiness.free.borrow_mut().push(self.token);
    }
}
