//! Quotas (`quota = { per_day | per_month, key }`): a count per UTC day or
//! month, kept at the key's owner shard (see `limiter`), saved under
//! `server.data_dir` every few seconds and when the shard stops, so a
//! restart does not hand out a fresh quota.
//!
//! Each shard writes the quotas it owns to `quotas/shard-N.tsv` (one line
//! per key: route name in hex, period, requests used, key in hex) by writing a
//! temporary file and renaming it. On start every shard reads every such
//! file and keeps the lines it owns under the current shard count, taking
//! the highest count when two files name the same key (a count only grows
//! within a period), so changing the number of shards keeps the counts.
//! Leases out at other shards count as used: a restart may lose at most
//! one unused lease per shard and key, never give requests back.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::config::QuotaPeriod;
use super::limiter::{Budget, Limiters, Owned};

/// How often owner shards save changed quotas: what a crash (not a clean
/// stop) may lose.
pub const QUOTA_SAVE_SECS: u64 = 5;

const DAY_SECS: u64 = 86_400;

/// Days since 1970-01-01 → (year, month 1-12) (H. Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32)
}

/// (year, month) → days since 1970-01-01 of its first day.
fn days_from_civil(y: i64, m: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The period (UTC day number, or year × 12 + month) `unix` falls in.
pub(crate) fn period_of(period: QuotaPeriod, unix: u64) -> u64 {
    match period {
        QuotaPeriod::Day => unix / DAY_SECS,
        QuotaPeriod::Month => {
            let (y, m) = civil((unix / DAY_SECS) as i64);
            (y * 12 + i64::from(m) - 1).max(0) as u64
        }
    }
}

/// Seconds until the period `unix` falls in ends.
pub(crate) fn secs_to_period_end(period: QuotaPeriod, unix: u64) -> u64 {
    match period {
        QuotaPeriod::Day => DAY_SECS - unix % DAY_SECS,
        QuotaPeriod::Month => {
            let (y, m) = civil((unix / DAY_SECS) as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let end = days_from_civil(ny, nm).max(0) as u64 * DAY_SECS;
            end.saturating_sub(unix).max(1)
        }
    }
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("quotas")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Writes the quotas this shard owns. Blocking file I/O on the shard's
/// thread: a small file, every few seconds at most, and at shutdown. Only
/// the shutdown save is `durable` (fsync): an fsync every few seconds would
/// stall the shard's requests for milliseconds, and what a crash loses is
/// bounded by the save interval anyway.
pub(crate) fn save(
    l: &Limiters,
    data_dir: &Path,
    shard: usize,
    durable: bool,
) -> std::io::Result<()> {
    if !l.dirty.replace(false) {
        return Ok(());
    }
    let d = dir(data_dir);
    std::fs::create_dir_all(&d)?;
    let mut text = String::new();
    for (k, o) in l.owned.borrow().iter() {
        let Some(id) = k
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
        else {
            continue;
        };
        let Some(spec) = l.specs.get(id as usize) else {
            continue;
        };
        if let Budget::Quota { limit, .. } = spec.budget {
            let used = (limit as f64 - o.tokens).max(0.0) as u64;
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                hex(spec.route.as_bytes()),
                o.at as u64,
                used,
                hex(&k[4..])
            ));
        }
    }
    let path = d.join(format!("shard-{shard}.tsv"));
    let tmp = d.join(format!(".shard-{shard}.tsv.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)
}

/// Loads the quotas this shard owns from every shard's file.
pub(crate) fn load(l: &Limiters, data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir(data_dir)) else {
        return;
    };
    let unix = super::limiter::unix_now();
    let mut full = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("shard-") && name.ends_with(".tsv")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let mut f = line.split('\t');
            let (Some(route), Some(period), Some(used), Some(key)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let (Ok(period), Ok(used), Some(key), Some(route)) = (
                period.parse::<u64>(),
                used.parse::<u64>(),
                unhex(key),
                unhex(route).and_then(|r| String::from_utf8(r).ok()),
            ) else {
                continue;
            };
            let Some((id, limit)) = l
                .specs
                .iter()
                .enumerate()
                .find_map(|(i, s)| match s.budget {
                    Budget::Quota { limit, period: p }
                        if *s.route == *route && period_of(p, unix) == period =>
                    {
                        Some((i, limit))
                    }
                    _ => None,
                })
            else {
                continue;
            };
            super::limiter::full_key(&mut full, id, &key);
            if l.owner_of(&full) != shard_of(l) {
                continue;
            }
            let left = limit as f64 - used as f64;
            let mut owned = l.owned.borrow_mut();
            let o = owned.entry(full.as_slice().into()).or_insert(Owned {
                tokens: limit as f64,
                at: period as f64,
            });
            if left < o.tokens {
                o.tokens = left;
            }
        }
    }
}

fn shard_of(l: &Limiters) -> usize {
    l.me()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        // 2024-02-29 12:00 UTC.
        let t = 1_709_208_000;
        assert_eq!(period_of(QuotaPeriod::Day, t), 19_782);
        assert_eq!(secs_to_period_end(QuotaPeriod::Day, t), 12 * 3600);
        assert_eq!(period_of(QuotaPeriod::Month, t), 2024 * 12 + 1);
        // March 1st 00:00 is 12 h away.
        assert_eq!(secs_to_period_end(QuotaPeriod::Month, t), 12 * 3600);
        // 2023-12-31 23:00 → next month is January 2024.
        let t = 1_704_063_600;
        assert_eq!(period_of(QuotaPeriod::Month, t), 2023 * 12 + 11);
        assert_eq!(secs_to_period_end(QuotaPeriod::Month, t), 3600);
        assert_eq!(unhex(&hex(b"\x00ab")).unwrap(), b"\x00ab");
    }
}
