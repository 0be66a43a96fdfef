//! The shard crate's one use of `unsafe`: the raw socket and epoll calls
//! that glommio 0.9 has no safe API for.
//!
//! - [`try_recv`]: a non-blocking `recv(2)` on a socket glommio owns, so a
//!   read can be retried after yielding (`ShardLimits::read_yields`) or
//!   after [`crate::readiness`] says the socket is readable, without arming
//!   an io_uring poll. glommio's `TcpStream` exposes only `AsRawFd`, not
//!   `AsFd`, so no safe socket API can borrow it. The gateway's upstream
//!   reads use the same function.
//! - [`Epoll`]: the shard-owned epoll instance behind `readiness = "epoll"`
//!   (`epoll_ctl`, `epoll_wait`, `epoll_pwait2` for the brief wait).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One `recv(fd, buf, MSG_DONTWAIT)`: `Ok(0)` is EOF, `WouldBlock` means
/// nothing is there yet.
pub fn try_recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`, a valid,
    // exclusively borrowed slice that outlives the call; `fd` is borrowed
    // from a socket the caller owns and keeps open for the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// An epoll instance with edge-triggered read interest in many sockets.
pub struct Epoll {
    fd: OwnedFd,
}

/// One readiness report: the token a socket was added with.
pub type EpollEvent = libc::epoll_event;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is
        // a new descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned here.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Edge-triggered interest in `fd` becoming readable (data, EOF or an
    /// error), reported with `token`. The kernel drops the interest itself
    /// when the socket's last descriptor closes, so there is no `remove`: a
    /// removal by number after close could hit a new socket reusing it.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the call's duration; both
        // descriptors are open (the caller owns `fd`, we own `self.fd`).
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes the reports waiting now, without sleeping; returns how many
    /// were written to the front of `events`.
    pub fn take_ready(&self, events: &mut [EpollEvent]) -> usize {
        let cap = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `cap` events into `events`, an
        // exclusively borrowed slice of that many initialised elements.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), cap, 0) };
        // EINTR (or any error) reads as "nothing now": the caller waits for
        // readiness and asks again.
        n.max(0) as usize
    }

    /// Takes the reports waiting now, sleeping in the kernel up to
    /// `timeout` for one when there are none (`epoll_pwait2`, Linux 5.11+;
    /// `None` where the kernel lacks it).
    pub fn wait_briefly(
        &self,
        events: &mut [EpollEvent],
        timeout: std::time::Duration,
    ) -> Option<usize> {
        let cap = events.len().min(i32::MAX as usize) as i32;
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the kernel writes at most `cap` events into `events`, an
        // exclusively borrowed slice of that many initialised elements;
        // `ts` lives across the call; a null sigmask means none.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                cap,
                &ts,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOSYS) {
                None
            } else {
                Some(0)
            };
        }
        Some(n as usize)
    }

    /// Waits, through glommio's ring, until the epoll instance has reports.
    ///
    /// glommio 0.9 has no public way to wait on an arbitrary descriptor (an
    /// `AsyncFd` is an open request, DataDog/glommio#687). A glommio stream
    /// built over a duplicate of the epoll descriptor arms exactly one
    /// `IORING_OP_POLL_ADD(POLLIN)` when constructed, and its first read
    /// waits for that poll; when the poll completes the read tries `recv`
    /// on the epoll descriptor, which fails with `ENOTSOCK`. That failure
    /// is the readiness signal. The duplicate is closed with the stream.
    /// Should a later glommio try `recv` before arming its poll, this
    /// returns at once and the caller's loop polls instead of sleeping (the
    /// `idle shard stays idle` test catches that).
    pub async fn readable(&self) -> io::Result<()> {
        // SAFETY: dup takes no pointers; the result is a new descriptor.
        let dup = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor owned by nothing else; the
        // stream takes ownership and closes it when dropped.
        let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(dup) };
        let mut byte = [0u8; 1];
        let _ = futures_lite::io::AsyncReadExt::read(&mut stream, &mut byte).await;
        Ok(())
    }
}
