//! Reading another process's memory, CPU time and open-files limit from /proc.

use std::time::Duration;

use crate::sys;

fn read(pid: u32, file: &str) -> Result<String, String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {path}: {e} (is PID {pid} running?)"))
}

/// The resident set size (VmRSS) of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64, String> {
    let status = read(pid, "status")?;
    parse_vm_rss_kib(&status).ok_or_else(|| format!("no VmRSS line in /proc/{pid}/status"))
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value = fields.next()?.parse().ok()?;
    // The kernel always reports this field in kB (KiB).
    (fields.next()? == "kB").then_some(value)
}

/// User plus system CPU time consumed so far by process `pid` (all its threads).
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = read(pid, "stat")?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| format!("cannot parse /proc/{pid}/stat"))?;
    let per_second =
        sys::clock_ticks_per_second().map_err(|e| format!("sysconf(_SC_CLK_TCK): {e}"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces, so count
    // fields from the last ')': state is field 3, utime 14 and stime 15 (proc(5)).
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft "Max open files" limit of process `pid`, `None` when unlimited or unreadable.
pub fn max_open_files(pid: u32) -> Option<u64> {
    parse_max_open_files(&read(pid, "limits").ok()?)
}

fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tshardline\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t2\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_with_spaces_in_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
    }

    #[test]
    fn parses_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
Max open files            20000                20000                files\n";
        assert_eq!(parse_max_open_files(limits), Some(20000));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(vm_rss_kib(pid).expect("own status") > 0);
        cpu_time(pid).expect("own stat");
        assert!(max_open_files(pid).is_some());
    }
}
