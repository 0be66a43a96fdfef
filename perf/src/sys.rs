//! The one module of this crate that calls into libc with `unsafe`: CPU pinning,
//! timer slack, the open-files limit, epoll and the clock-tick rate. Everything
//! outside gets a safe wrapper that returns `io::Result`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set once `epoll_pwait2` (Linux 5.11+) turned out to be unavailable; waits then
/// fall back to `epoll_wait` and its millisecond timeout.
static NO_EPOLL_PWAIT2: AtomicBool = AtomicBool::new(false);

/// Sets the calling thread's timer slack (how late the kernel may fire its timers
/// to batch wake-ups; 50 µs by default). The open-loop generator sets 1 ns so its
/// sends are not late by the slack, which would count as latency.
pub fn set_timer_slack(ns: u64) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(ns.max(1)).unwrap_or(libc::c_ulong::MAX);
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to `cpu` (sched_setaffinity with pid 0 = this thread).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // `cpu_set_t` is a fixed bitmap; CPU_SET indexes it without bounds checks.
    let max_cpus = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if cpu >= max_cpus {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond the {max_cpus} CPUs an affinity mask can name"),
        ));
    }
    // SAFETY: cpu_set_t is a plain bitmap of integers, for which all-zero is the
    // valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked against the bitmap's size above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid, initialised cpu_set_t and the size passed is its own.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The soft and hard RLIMIT_NOFILE of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

fn nofile_limit() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill in.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        Ok(lim)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft open-files limit to the hard limit (an unprivileged process may
/// always do that) and returns the limits now in force.
pub fn raise_nofile_limit() -> io::Result<FileLimit> {
    let mut lim = nofile_limit()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let lim = nofile_limit()?;
    Ok(FileLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Clock ticks per second, the unit of utime/stime in /proc/PID/stat.
pub fn clock_ticks_per_second() -> io::Result<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(io::Error::last_os_error)
}

/// Readiness interest registered with [`Epoll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Read,
    ReadWrite,
}

impl Interest {
    fn bits(self) -> u32 {
        // Level-triggered on purpose: a connection that was not drained completely is
        // reported again, so the event loop never has to remember "still readable".
        match self {
            Interest::Read => libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32,
            Interest::ReadWrite => {
                libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32 | libc::EPOLLOUT as u32
            }
        }
    }
}

/// One ready file descriptor, as reported by [`Epoll::wait`].
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up: the connection is finished, a read will say how.
    pub closed: bool,
}

/// An epoll instance, closed on drop.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// `max_events` bounds how many ready descriptors one `wait` reports.
    pub fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory-safety preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1, is valid and owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let empty = libc::epoll_event { events: 0, u64: 0 };
        Ok(Self {
            fd,
            events: vec![empty; max_events.max(1)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: both descriptors are open (the caller owns `fd`) and `ev` is a valid
        // epoll_event that the kernel only reads.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn add(&self, fd: &impl AsRawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), token, interest)
    }

    pub fn modify(&self, fd: &impl AsRawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), token, interest)
    }

    /// Waits up to `timeout_ms`; returns how many descriptors are ready, to be read
    /// with [`Epoll::event`] (indices below the count).
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<usize> {
        let capacity = libc::c_int::try_from(self.events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` holds `capacity` initialised epoll_event slots that the
        // kernel may overwrite; `capacity` never exceeds its length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                capacity,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            // A signal cut the wait short: report nothing ready, the caller loops.
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(err)
            };
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Waits up to `timeout` with nanosecond resolution (`epoll_pwait2`); where the
    /// kernel lacks it, falls back to [`Epoll::wait`] with the timeout rounded up
    /// to whole milliseconds.
    pub fn wait_for(&mut self, timeout: Duration) -> io::Result<usize> {
        if !NO_EPOLL_PWAIT2.load(Ordering::Relaxed) {
            let capacity = libc::c_int::try_from(self.events.len()).unwrap_or(libc::c_int::MAX);
            let ts = libc::timespec {
                tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
                // Below 1e9, so it fits a c_long on every target.
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `events` holds `capacity` initialised epoll_event slots that the
            // kernel may overwrite; `ts` is a valid timespec it only reads; a null
            // signal mask (size 0) means "leave the mask alone".
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.fd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    capacity,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 {
                return Ok(usize::try_from(n).unwrap_or(0));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => return Ok(0),
                // Old kernel, or a seccomp filter that does not know the call.
                Some(libc::ENOSYS) | Some(libc::EPERM) => {
                    NO_EPOLL_PWAIT2.store(true, Ordering::Relaxed);
                }
                _ => return Err(err),
            }
        }
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        self.wait(i32::try_from(ms).unwrap_or(i32::MAX))
    }

    /// Ready descriptor `i` of the last [`Epoll::wait`].
    pub fn event(&self, i: usize) -> Event {
        // Copy out of the (packed on x86-64) struct before reading fields.
        let ev = self.events[i];
        let bits = ev.events;
        let closed_bits = libc::EPOLLERR as u32 | libc::EPOLLHUP as u32 | libc::EPOLLRDHUP as u32;
        Event {
            token: ev.u64,
            readable: bits & libc::EPOLLIN as u32 != 0,
            writable: bits & libc::EPOLLOUT as u32 != 0,
            closed: bits & closed_bits != 0,
        }
    }
}
