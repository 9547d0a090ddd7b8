//! Civil dates and the UTC timestamp formats the daemon writes: the one place that converts
//! between Unix time and a proleptic Gregorian calendar date (Howard Hinnant's algorithms).
//!
//! Users: the authorizer (`aws:CurrentTime`, `aws:TokenIssueTime`), both doors' dates
//! ([`iso8601`]), the audit trail ([`iso8601_ms`]), SigV4 (`X-Amz-Date`, [`format_amz_date`],
//! [`parse_amz_date`]) and the policy `Date*` operators ([`days_from_civil`]). Pure: no clock,
//! no I/O (the clock is `core::clock`).

/// Seconds in a day.
const DAY_SECS: i64 = 86_400;

/// Days since 1970-01-01 for a proleptic Gregorian date (`m` 1..=12; `d` is not checked
/// against the month, so day 31 of a 30-day month is the 1st of the next).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of a day count since
/// 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days in month `m` (1..=12) of year `y`.
pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// A UTC date and time of day, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Proleptic Gregorian year.
    pub year: i64,
    /// 1..=12.
    pub month: i64,
    /// 1..=31.
    pub day: i64,
    /// 0..=23.
    pub hour: i64,
    /// 0..=59.
    pub minute: i64,
    /// 0..=60 (a leap second is accepted on input).
    pub second: i64,
}

impl DateTime {
    /// The date and time of Unix seconds `secs`.
    pub fn from_unix(secs: i64) -> DateTime {
        let (year, month, day) = civil_from_days(secs.div_euclid(DAY_SECS));
        let t = secs.rem_euclid(DAY_SECS);
        DateTime {
            year,
            month,
            day,
            hour: t / 3600,
            minute: (t % 3600) / 60,
            second: t % 60,
        }
    }

    /// Unix seconds, or `None` when a field is out of range (month, day of that month, hour,
    /// minute, second).
    pub fn to_unix(&self) -> Option<i64> {
        let valid = (1..=12).contains(&self.month)
            && (1..=days_in_month(self.year, self.month)).contains(&self.day)
            && (0..24).contains(&self.hour)
            && (0..60).contains(&self.minute)
            && (0..=60).contains(&self.second);
        valid.then(|| {
            days_from_civil(self.year, self.month, self.day) * DAY_SECS
                + self.hour * 3600
                + self.minute * 60
                + self.second
        })
    }
}

/// ISO 8601 UTC to the second (`2026-11-23T10:38:17Z`) for Unix milliseconds (AWS's dates
/// in policy keys and STS replies).
pub fn iso8601(unix_ms: i64) -> String {
    let t = DateTime::from_unix(unix_ms.div_euclid(1000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// ISO 8601 UTC with milliseconds (`2026-11-23T10:38:17.042Z`) for Unix milliseconds (the
/// audit trail's times).
pub fn iso8601_ms(unix_ms: i64) -> String {
    let t = DateTime::from_unix(unix_ms.div_euclid(1000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        unix_ms.rem_euclid(1000)
    )
}

/// Formats Unix seconds as SigV4's `yyyymmddThhmmssZ` (ISO 8601 basic format).
pub fn format_amz_date(unix_secs: i64) -> String {
    let t = DateTime::from_unix(unix_secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// Parses SigV4's `yyyymmddThhmmssZ` to Unix seconds; `None` unless it is exactly that shape
/// with fields in range.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if s.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    DateTime {
        year: digits(s, 0..4)?,
        month: digits(s, 4..6)?,
        day: digits(s, 6..8)?,
        hour: digits(s, 9..11)?,
        minute: digits(s, 11..13)?,
        second: digits(s, 13..15)?,
    }
    .to_unix()
}

/// The decimal number in `s[range]`, which must be all ASCII digits and non-empty.
pub fn digits(s: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = s.get(range)?;
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instants the five former converters were tested with, and edges around them.
    const KNOWN: &[(i64, &str)] = &[
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (951_868_800, "2000-03-01T00:00:00Z"),
        (1_440_938_160, "2015-08-30T12:36:00Z"),
        (1_577_836_800, "2020-01-01T00:00:00Z"),
        (1_700_000_000, "2023-11-14T22:13:20Z"),
        (1_795_437_497, "2026-11-23T12:38:17Z"),
        (4_107_542_400, "2100-03-01T00:00:00Z"),
        (-62_135_596_800, "0001-01-01T00:00:00Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),
    ];

    #[test]
    fn formats_known_instants() {
        for &(secs, want) in KNOWN {
            assert_eq!(iso8601(secs * 1000), want, "{secs}");
        }
        assert_eq!(iso8601(-1000), "1969-12-31T23:59:59Z");
        assert_eq!(iso8601(1_999), "1970-01-01T00:00:01Z");
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_amz_date(1_440_938_160), "20150830T123600Z");
    }

    #[test]
    fn parses_what_it_formats() {
        for &(secs, _) in KNOWN.iter().filter(|(s, _)| *s >= 0) {
            assert_eq!(parse_amz_date(&format_amz_date(secs)), Some(secs), "{secs}");
        }
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
    }

    #[test]
    fn days_round_trip_over_four_centuries() {
        // Every day from 1800 to 2200 (leap rules of 4, 100 and 400 all exercised).
        let (start, end) = (days_from_civil(1800, 1, 1), days_from_civil(2200, 1, 1));
        assert_eq!(end - start, 146_097, "400 Gregorian years");
        let mut expect = (1800, 1, 1);
        for day in start..end {
            assert_eq!(civil_from_days(day), expect, "day {day}");
            let (y, m, d) = expect;
            assert_eq!(days_from_civil(y, m, d), day);
            expect = if d < days_in_month(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn leap_years() {
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2023, 2), 28);
        assert!(parse_amz_date("20240229T000000Z").is_some());
        assert!(parse_amz_date("20000229T000000Z").is_some());
        assert_eq!(parse_amz_date("20230229T000000Z"), None);
        assert_eq!(parse_amz_date("21000229T000000Z"), None);
    }

    #[test]
    fn rejects_out_of_range_and_malformed() {
        for s in [
            "20151330T123600Z",
            "20150800T123600Z",
            "20150431T000000Z",
            "20150830T243600Z",
            "20150830T126000Z",
            "20150830T123661Z",
            "20150830 123600Z",
            "20150830T123600",
            "2015083T123600ZZ",
            "2015-8-30T12:36Z",
            "+0150830T123600Z",
        ] {
            assert_eq!(parse_amz_date(s), None, "{s}");
        }
        assert!(parse_amz_date("20150830T235960Z").is_some(), "leap second");
    }
}
