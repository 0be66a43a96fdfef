//! The validity period of an X.509 certificate (RFC 5280 §4.1.2.5), read
//! from its DER encoding: what the certificate-expiry gauge and the
//! start/reload warnings need, and nothing else of the certificate.
//!
//! rustls and webpki check validity during handshakes but do not expose it,
//! and a full X.509 parser would be a dependency for two timestamps: the
//! walk below reads only the outer sequences up to `validity`, and refuses
//! anything it does not understand (`None`), which leaves the gauge out for
//! that certificate rather than reporting a wrong date.

/// A certificate's `notBefore` and `notAfter`, in seconds since the Unix
/// epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_VERSION: u8 = 0xa0; // [0] EXPLICIT, context-specific, constructed
const TAG_INTEGER: u8 = 0x02;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }`
/// and `TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, ... }`.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (tag, cert, _) = element(der)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, _, rest) = element(tbs)?;
    if tag == TAG_VERSION {
        tbs = rest;
    }
    let (tag, _, rest) = element(tbs)?; // serialNumber
    if tag != TAG_INTEGER {
        return None;
    }
    let (tag, _, rest) = element(rest)?; // signature AlgorithmIdentifier
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, _, rest) = element(rest)?; // issuer Name
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, validity, _) = element(rest)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, before, rest) = element(validity)?;
    let not_before = time(tag, before)?;
    let (tag, after, _) = element(rest)?;
    let not_after = time(tag, after)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

/// One DER element: (tag, contents, what follows it). Single-byte tags
/// and definite lengths only, as DER requires for everything read here.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // 1 to 4 length bytes: a certificate is far below 4 GiB.
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950-2049, RFC 5280 §4.1.2.5.1) or
/// `GeneralizedTime` (`YYYYMMDDHHMMSSZ`), as Unix seconds.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, text.len()) {
        (TAG_UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (TAG_GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60: a leap second, which X.509 allows and Unix time folds.
    if second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil` algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn cert_with(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // 2001-01-01 and 2002-01-01 (UTCTime); 2051-06-30 (GeneralizedTime,
        // RFC 5280 requires it from 2050 on).
        let v = validity(&cert_with((2001, 1, 1), (2002, 1, 1))).expect("parsed");
        assert_eq!(v.not_before, 978_307_200);
        assert_eq!(v.not_after, 1_009_843_200);
        let v = validity(&cert_with((1999, 12, 31), (2051, 6, 30))).expect("parsed");
        assert_eq!(v.not_before, 946_598_400);
        assert_eq!(v.not_after, 2_571_696_000);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn times_outside_the_profile_are_refused() {
        assert_eq!(time(TAG_UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(TAG_UTC_TIME, b"500101000000Z"), Some(-631_152_000));
        for bad in [
            &b"2001010100000Z"[..], // wrong length for UTCTime
            b"010101000000+0100",
            b"011301000000Z", // month 13
            b"0101010000a0Z",
        ] {
            assert_eq!(time(TAG_UTC_TIME, bad), None, "{bad:?}");
        }
        assert_eq!(time(0x04, b"010101000000Z"), None);
    }

    #[test]
    fn truncated_or_foreign_input_is_none() {
        let der = cert_with((2001, 1, 1), (2002, 1, 1));
        for cut in [0, 1, 10, 100, der.len() / 2] {
            assert_eq!(validity(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(validity(b"not a certificate"), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
