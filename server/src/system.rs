//! Process resource limits io_uring and many connections need: raise them
//! when allowed, or explain exactly what to do.

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
