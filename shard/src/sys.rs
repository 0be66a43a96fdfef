//! The shard crate's one use of `unsafe`: a non-blocking `recv(2)` on a
//! socket glommio owns, so that a read can be retried after yielding to
//! the shard's other tasks without arming an io_uring poll (see
//! `ShardLimits::read_yields`). glommio's `TcpStream` exposes only
//! `AsRawFd`, not `AsFd`, so no safe socket API can borrow it. The
//! gateway's upstream reads use the same function.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

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
