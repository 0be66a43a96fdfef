//! Process resource limits io_uring and many connections need: raise them
//! when allowed, or explain exactly what to do.

/// Size of the kernel's `struct io_uring_params` (io_uring_setup(2)).
const IO_URING_PARAMS_BYTES: usize = 120;

/// Sets up (and closes) a tiny io_uring, so that a kernel without io_uring,
/// the `kernel.io_uring_disabled` sysctl or a seccomp profile that blocks it
/// (Docker's default) is reported in one line before any shard starts,
/// instead of as a panic inside glommio.
#[allow(unsafe_code)]
pub fn check_io_uring() -> Result<(), String> {
    let mut params = [0u8; IO_URING_PARAMS_BYTES];
    // SAFETY: io_uring_setup(2) reads and writes one `struct io_uring_params`
    // at the pointer; `params` is a writable buffer of exactly that size that
    // outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ENOSYS) => "this kernel has no io_uring (Linux 5.8 or newer is required)",
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "io_uring is not permitted here: check the kernel.io_uring_disabled sysctl, \
                 and run containers with a seccomp profile that allows io_uring_setup, \
                 io_uring_enter and io_uring_register"
            }
            _ => "io_uring could not be set up",
        };
        return Err(format!("{why} ({e})"));
    }
    let fd = i32::try_from(fd).unwrap_or(-1);
    // SAFETY: `fd` is the descriptor io_uring_setup just returned to us; it
    // is closed exactly once and not used afterwards.
    unsafe { libc::close(fd) };
    Ok(())
}

/// glommio refuses to start an executor when RLIMIT_MEMLOCK is below this
/// (it locks its rings' memory).
pub const GLOMMIO_MIN_MEMLOCK_BYTES: u64 = 512 << 10;

/// Ensures RLIMIT_MEMLOCK is enough for `shards` executors with
/// `io_memory` bytes of registered buffers each. Returns a warning when the
/// hard minimum is met but io_memory cannot be fully locked (glommio then
/// falls back to unregistered buffers: it runs, a little slower).
pub fn ensure_memlock(shards: usize, io_memory: u64) -> Result<Option<String>, String> {
    let wanted = (shards as u64).saturating_mul(io_memory + GLOMMIO_MIN_MEMLOCK_BYTES);
    let (soft, hard) = get(libc::RLIMIT_MEMLOCK)?;
    if soft >= wanted {
        return Ok(None);
    }
    // Raise the soft limit as far as the hard one allows; as root (or with
    // CAP_SYS_RESOURCE) raise the hard limit too.
    if set(libc::RLIMIT_MEMLOCK, wanted, wanted.max(hard)).is_ok()
        || set(libc::RLIMIT_MEMLOCK, wanted.min(hard), hard).is_ok()
    {
        let (now, _) = get(libc::RLIMIT_MEMLOCK)?;
        if now >= wanted {
            return Ok(None);
        }
    }
    let (now, hard) = get(libc::RLIMIT_MEMLOCK)?;
    if now < GLOMMIO_MIN_MEMLOCK_BYTES {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB and cannot be raised; io_uring needs at least {} KiB \
             (and {} KiB for {shards} shards with io_memory={}): run `ulimit -l {}` (as root) \
             before starting, or set LimitMEMLOCK=infinity in the systemd unit",
            now / 1024,
            GLOMMIO_MIN_MEMLOCK_BYTES / 1024,
            wanted / 1024,
            crate::units::format_size(io_memory),
            wanted / 1024,
        ));
    }
    Ok(Some(format!(
        "RLIMIT_MEMLOCK is {} KiB (hard {} KiB), below the {} KiB that {shards} shards with \
         io_memory={} want; io buffers will not all be registered (raise it with `ulimit -l`)",
        now / 1024,
        hard / 1024,
        wanted / 1024,
        crate::units::format_size(io_memory),
    )))
}

/// Raises the open-files soft limit to the hard limit: every connection is
/// a descriptor, and the default soft limit (1024) is far below
/// `max_connections_per_shard`.
pub fn raise_nofile() -> Option<u64> {
    let (soft, hard) = get(libc::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        set(libc::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    get(libc::RLIMIT_NOFILE).ok().map(|(s, _)| s)
}

#[allow(unsafe_code)]
fn get(resource: libc::__rlimit_resource_t) -> Result<(u64, u64), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(resource, &mut lim) };
    if rc != 0 {
        return Err(format!(
            "getrlimit failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

#[allow(unsafe_code)]
fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit read by the call.
    let rc = unsafe { libc::setrlimit(resource, &lim) };
    if rc != 0 {
        return Err(format!(
            "setrlimit failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// What a non-blocking peek says about an idle pooled upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleSocket {
    /// Nothing to read: still open, safe to send a request on.
    Quiet,
    /// EOF, an error, or unsolicited bytes: the upstream closed it or broke
    /// the protocol; it must not be reused.
    Unusable,
}

/// Checks an idle keep-alive connection before reuse without waiting, so a
/// request is never written into a socket the upstream already closed
/// (which would turn a non-idempotent request into a 502). One `recv`
/// with MSG_PEEK | MSG_DONTWAIT: cheap, and it consumes nothing.
#[allow(unsafe_code)]
pub(crate) fn peek_idle(fd: std::os::fd::RawFd) -> IdleSocket {
    let mut byte = 0u8;
    // SAFETY: recv(2) writes at most 1 byte into `byte`, a valid writable
    // location that outlives the call; `fd` is borrowed from a live socket
    // owned by the caller for the duration of the call.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return IdleSocket::Quiet;
        }
    }
    IdleSocket::Unusable
}
