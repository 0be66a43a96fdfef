//! Sizes (`64KiB`, `2MiB`, `1048576`) and durations (`250ms`, `10s`, `5m`,
//! `1h`, `30d`) as written in the config file and on the command line.

use std::time::Duration;

/// Parses a size: a plain number of bytes, or a number with `B`, `KiB`,
/// `MiB` or `GiB` (binary units; `KB`/`MB` are refused because they are
/// ambiguous between 1000 and 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    let expected =
        "expected a whole number with an optional unit B, KiB, MiB or GiB, like \"64KiB\"";
    if num.is_empty() {
        return Err(format!("invalid size {text:?}: {expected}"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("invalid size {text:?}: {expected}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Parses a duration: a whole number followed by `us`, `ms`, `s`, `m`, `h` or
/// `d` (`us` exists for the spin/preemption knobs, which live below 1 ms).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let expected = "expected a whole number with a unit us, ms, s, m, h or d, like \"10s\"";
    if num.is_empty() || unit.is_empty() {
        return Err(format!("invalid duration {text:?}: {expected}"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
    let us_per: u64 = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(format!("invalid duration {text:?}: {expected}")),
    };
    n.checked_mul(us_per)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))
}

/// Formats bytes the way the config accepts them (for `check` output and
/// messages).
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= mult && bytes % mult == 0 {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}")
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("7B").unwrap(), 7);
        for bad in [
            "",
            "KiB",
            "1KB",
            "1.5MiB",
            "-1",
            "12XB",
            "99999999999999999999",
            "1GiBx",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("17179869184GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("50us").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        for bad in ["", "10", "s", "1.5s", "-1s", "10 sec", "10S"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip_formatting() {
        assert_eq!(format_size(65536), "64KiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
