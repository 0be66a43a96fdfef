//! Cached `Date` header value (RFC 9110 §6.6.1) in IMF-fixdate form
//! (RFC 9110 §5.6.7), reformatted at most once per second.
//!
//! The crate has no clock: the caller passes Unix seconds (a shard updates
//! its cache from its timer), which keeps formatting off the request path.

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const IMF_FIXDATE_LEN_BYTES: usize = 29;

/// Latest instant an IMF-fixdate can express: 9999-12-31T23:59:59Z
/// (`year = 4DIGIT`, RFC 9110 §5.6.7). Later times are clamped to it.
pub const MAX_IMF_FIXDATE_UNIX_SECS: u64 = 253_402_300_799;

const SECS_PER_DAY: u64 = 86_400;

const DAY_NAMES: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// The formatted date and the second it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateCache {
    bytes: [u8; IMF_FIXDATE_LEN_BYTES],
    secs: u64,
}

impl DateCache {
    /// Formats `unix_secs` (seconds since 1970-01-01T00:00:00Z).
    pub fn new(unix_secs: u64) -> Self {
        let secs = unix_secs.min(MAX_IMF_FIXDATE_UNIX_SECS);
        DateCache {
            bytes: format_imf_fixdate(secs),
            secs,
        }
    }

    /// Reformats if `unix_secs` is a different second; otherwise does nothing.
    pub fn update(&mut self, unix_secs: u64) {
        let secs = unix_secs.min(MAX_IMF_FIXDATE_UNIX_SECS);
        if secs != self.secs {
            self.bytes = format_imf_fixdate(secs);
            self.secs = secs;
        }
    }

    /// The 29-byte IMF-fixdate.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The second the cached value stands for.
    pub fn unix_secs(&self) -> u64 {
        self.secs
    }
}

/// Gregorian (year, month 1–12, day 1–31) of a day count since 1970-01-01.
///
/// Works in 400-year eras (146097 days each) of a calendar whose years start
/// on 1 March, so the leap day is the last day of its year and month lengths
/// follow the 153-days-per-5-months pattern.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch from 1970-01-01 to 0000-03-01.
    const DAYS_0000_03_01_TO_1970_01_01: u64 = 719_468;
    const DAYS_PER_ERA: u64 = 146_097;
    let z = days + DAYS_0000_03_01_TO_1970_01_01;
    let era = z / DAYS_PER_ERA;
    let day_of_era = z % DAYS_PER_ERA; // 0..=146096
                                       // Remove the leap days accumulated so far (every 4th year, not every
                                       // 100th, again every 400th) to get the year of the era.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

fn format_imf_fixdate(secs: u64) -> [u8; IMF_FIXDATE_LEN_BYTES] {
    let days = secs / SECS_PER_DAY;
    let rem = secs % SECS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 4 with Sunday = 0).
    let weekday = ((days + 4) % 7) as usize;
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);

    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[0..3].copy_from_slice(DAY_NAMES[weekday]);
    put2(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTH_NAMES[(month - 1) as usize]);
    put2(&mut out[12..14], year / 100);
    put2(&mut out[14..16], year % 100);
    put2(&mut out[17..19], hour);
    put2(&mut out[20..22], minute);
    put2(&mut out[23..25], second);
    out
}

/// Parses an HTTP-date (RFC 9110 §5.6.7) into unix seconds: the
/// IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`) and the two obsolete
/// forms a recipient must also accept, RFC 850 (`Sunday, 06-Nov-94
/// 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`). Dates before
/// 1970 read as 0. `None` for anything else.
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    let (year, month, day, time) = if v.len() == IMF_FIXDATE_LEN_BYTES && v.get(3) == Some(&b',') {
        // "Sun, 06 Nov 1994 08:49:37 GMT"
        if v[4] != b' ' || v[7] != b' ' || v[11] != b' ' || v[16] != b' ' || &v[25..] != b" GMT" {
            return None;
        }
        (
            digits(&v[12..16])?,
            month_index(&v[8..11])?,
            digits(&v[5..7])?,
            &v[17..25],
        )
    } else if let Some(comma) = v.iter().position(|&b| b == b',') {
        // "Sunday, 06-Nov-94 08:49:37 GMT"
        let r = &v[comma + 1..];
        if r.len() != 23
            || r[0] != b' '
            || r[3] != b'-'
            || r[7] != b'-'
            || r[10] != b' '
            || &r[19..] != b" GMT"
        {
            return None;
        }
        // RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is
        // the most recent past year with those digits; read from 1970 on.
        let yy = digits(&r[8..10])?;
        let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
        (year, month_index(&r[4..7])?, digits(&r[1..3])?, &r[11..19])
    } else if v.len() == 24 && v[3] == b' ' && v[7] == b' ' && v[10] == b' ' && v[19] == b' ' {
        // "Sun Nov  6 08:49:37 1994"
        let day = if v[8] == b' ' {
            digits(&v[9..10])?
        } else {
            digits(&v[8..10])?
        };
        (digits(&v[20..24])?, month_index(&v[4..7])?, day, &v[11..19])
    } else {
        return None;
    };
    if time[2] != b':' || time[5] != b':' {
        return None;
    }
    let (h, m, sec) = (
        digits(&time[0..2])?,
        digits(&time[3..5])?,
        digits(&time[6..8])?,
    );
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * SECS_PER_DAY + h * 3600 + m * 60 + sec)
}

/// All ASCII digits, as a number.
fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// 1–12 for a month's three-letter name (case as the grammar has it).
fn month_index(b: &[u8]) -> Option<u64> {
    MONTH_NAMES
        .iter()
        .position(|m| &m[..] == b)
        .map(|i| i as u64 + 1)
}

/// Days since 1970-01-01 of a Gregorian date (0 for earlier dates): the
/// inverse of [`civil_from_days`], in the same March-based eras.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    const DAYS_0000_03_01_TO_1970_01_01: u64 = 719_468;
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let year_of_era = y % 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some((era * 146_097 + day_of_era).saturating_sub(DAYS_0000_03_01_TO_1970_01_01))
}

/// Two decimal digits of `v % 100`.
fn put2(dst: &mut [u8], v: u64) {
    dst[0] = b'0' + (v / 10 % 10) as u8;
    dst[1] = b'0' + (v % 10) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(secs: u64) -> String {
        String::from_utf8(DateCache::new(secs).as_bytes().to_vec()).expect("ascii")
    }

    #[test]
    fn rfc9110_5_6_7_parses_all_three_forms() {
        for v in [
            &b"Sun, 06 Nov 1994 08:49:37 GMT"[..],
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
            b" Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            assert_eq!(parse_http_date(v), Some(784_111_777), "{v:?}");
        }
    }

    #[test]
    fn parse_http_date_round_trips_and_refuses_junk() {
        for secs in [
            0,
            951_782_400,
            951_868_800,
            1_709_164_800,
            MAX_IMF_FIXDATE_UNIX_SECS,
        ] {
            assert_eq!(parse_http_date(DateCache::new(secs).as_bytes()), Some(secs));
        }
        assert_eq!(
            parse_http_date(b"Thu, 19 Nov 1981 08:52:00 GMT"),
            Some(375_007_920)
        );
        assert_eq!(
            parse_http_date(b"Thu, 01 Jan 1960 00:00:00 GMT"),
            Some(0),
            "before 1970"
        );
        for bad in [
            &b"0"[..],
            b"-1",
            b"",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1994 08:49 GMT",
            b"Sunday, 06-Nov-94 08:49:37",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc9110_5_6_7_example_date() {
        assert_eq!(fmt(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn rfc9110_5_6_7_unix_epoch() {
        assert_eq!(fmt(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn rfc9110_5_6_7_leap_day_2000() {
        // 2000 is a leap year (divisible by 400).
        assert_eq!(fmt(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(fmt(951_868_799), "Tue, 29 Feb 2000 23:59:59 GMT");
        assert_eq!(fmt(951_868_800), "Wed, 01 Mar 2000 00:00:00 GMT");
    }

    #[test]
    fn rfc9110_5_6_7_leap_day_2024() {
        assert_eq!(fmt(1_709_164_800), "Thu, 29 Feb 2024 00:00:00 GMT");
        assert_eq!(fmt(1_709_251_199), "Thu, 29 Feb 2024 23:59:59 GMT");
    }

    #[test]
    fn rfc9110_5_6_7_year_2100_is_not_leap() {
        // 2100 is divisible by 100 but not 400: 28 Feb is followed by 1 Mar.
        assert_eq!(fmt(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(fmt(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
    }

    #[test]
    fn rfc9110_5_6_7_end_of_year_and_clamp() {
        assert_eq!(fmt(1_704_067_199), "Sun, 31 Dec 2023 23:59:59 GMT");
        assert_eq!(
            fmt(MAX_IMF_FIXDATE_UNIX_SECS),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        assert_eq!(fmt(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn update_reformats_only_on_a_new_second() {
        // RFC 9110 §6.6.1: Date has one-second resolution, so one format per second.
        let mut d = DateCache::new(0);
        d.update(0);
        assert_eq!(d.as_bytes(), b"Thu, 01 Jan 1970 00:00:00 GMT");
        d.update(61);
        assert_eq!(d.as_bytes(), b"Thu, 01 Jan 1970 00:01:01 GMT");
        assert_eq!(d.unix_secs(), 61);
        assert_eq!(d.as_bytes().len(), IMF_FIXDATE_LEN_BYTES);
    }

    #[test]
    fn civil_from_days_matches_a_naive_calendar_walk() {
        // RFC 9110 §5.6.7: dates are proleptic Gregorian; check the arithmetic.
        // Walk day by day from 1970 to 2500 and compare.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for days in 0..(530 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
