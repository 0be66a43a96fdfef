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
