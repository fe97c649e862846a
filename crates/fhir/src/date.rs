//! FHIR date, dateTime and instant values as ranges of time, for search.
//!
//! A value of lower precision covers a range: `2024` is all of 2024, `2024-03-05T10:00` a
//! minute. Ranges are half-open `[low, high)` in microseconds since the epoch (UTC). Values
//! without a time zone are taken as UTC.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A half-open range of time in microseconds since 1970-01-01T00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// First microsecond in the range.
    pub low: i64,
    /// First microsecond after the range.
    pub high: i64,
}

fn us(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn num(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a dateTime/instant with hours and minutes,
/// optional seconds and fraction, and an optional zone (`Z`, `+hh:mm`). `None` if malformed or
/// not a real calendar date (`2024-13-45`).
pub fn parse_range(s: &str) -> Option<TimeRange> {
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut it = date_part.split('-');
    let year = num(it.next()?, 4)? as i32;
    let month = match it.next() {
        Some(m) => Some(num(m, 2)?),
        None => None,
    };
    let day = match it.next() {
        Some(d) => Some(num(d, 2)?),
        None => None,
    };
    if it.next().is_some() {
        return None;
    }
    let month_v = Month::try_from(month.unwrap_or(1) as u8).ok()?;
    let date = Date::from_calendar_date(year, month_v, day.unwrap_or(1) as u8).ok()?;
    let Some(t) = time_part else {
        let low = date.midnight().assume_utc();
        // The width in days, so that the last day of 9999 needs no date after it.
        let days = match (month, day) {
            (None, _) => i64::from(time::util::days_in_year(year)),
            (Some(_), None) => i64::from(month_v.length(year)),
            (Some(_), Some(_)) => 1,
        };
        return Some(TimeRange {
            low: us(low),
            high: us(low) + days * 86_400_000_000,
        });
    };
    // A time needs a full date.
    day?;
    // Split off the zone.
    let (clock, offset) = if let Some(c) = t.strip_suffix('Z') {
        (c, UtcOffset::UTC)
    } else if let Some(pos) = t.rfind(['+', '-']) {
        let (c, z) = t.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (h, m) = z[1..].split_once(':')?;
        let off = UtcOffset::from_hms(
            (sign * num(h, 2)? as i32) as i8,
            (sign * num(m, 2)? as i32) as i8,
            0,
        )
        .ok()?;
        (c, off)
    } else {
        (t, UtcOffset::UTC)
    };
    let mut parts = clock.split(':');
    let hour = num(parts.next()?, 2)?;
    let minute = num(parts.next()?, 2)?;
    let (second, frac, frac_digits) = match parts.next() {
        None => (None, 0, 0),
        Some(sec) => {
            let (whole, frac) = match sec.split_once('.') {
                Some((w, f))
                    if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    (w, f)
                }
                Some(_) => return None,
                None => (sec, ""),
            };
            let frac_ns: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}").parse().ok()?
            };
            (Some(num(whole, 2)?), frac_ns, frac.len())
        }
    };
    if parts.next().is_some() {
        return None;
    }
    let time =
        Time::from_hms_nano(hour as u8, minute as u8, second.unwrap_or(0) as u8, frac).ok()?;
    let low = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let width_us: i64 = match (second, frac_digits) {
        (None, _) => 60_000_000,
        (Some(_), 0) => 1_000_000,
        (Some(_), d) => 10i64.pow(6u32.saturating_sub(d as u32)).max(1),
    };
    let low = us(low);
    Some(TimeRange {
        low,
        high: low + width_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_day_of_the_calendar_has_a_range() {
        for d in [
            "9999",
            "9999-12",
            "9999-12-31",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999+14:00",
        ] {
            let r = parse_range(d).unwrap_or_else(|| panic!("{d}"));
            assert!(r.high > r.low, "{d}");
        }
        let day = parse_range("9999-12-31").unwrap();
        assert_eq!(day.high - day.low, 86_400_000_000);
        assert_eq!(
            parse_range("2024").unwrap().high - parse_range("2024").unwrap().low,
            366 * 86_400_000_000
        );
    }

    fn r(s: &str) -> (String, String) {
        let t = parse_range(s).unwrap();
        let f = |u: i64| {
            crate::instant::format(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(u) * 1000).unwrap(),
            )
        };
        (f(t.low), f(t.high))
    }

    #[test]
    fn precision_ranges() {
        assert_eq!(
            r("2024"),
            (
                "2024-01-01T00:00:00.000000Z".into(),
                "2025-01-01T00:00:00.000000Z".into()
            )
        );
        assert_eq!(
            r("2024-12"),
            (
                "2024-12-01T00:00:00.000000Z".into(),
                "2025-01-01T00:00:00.000000Z".into()
            )
        );
        assert_eq!(
            r("2024-02-29"),
            (
                "2024-02-29T00:00:00.000000Z".into(),
                "2024-03-01T00:00:00.000000Z".into()
            )
        );
        assert_eq!(
            r("2024-03-05T10:00+01:00"),
            (
                "2024-03-05T09:00:00.000000Z".into(),
                "2024-03-05T09:01:00.000000Z".into()
            )
        );
        assert_eq!(
            r("2024-03-05T10:00:07Z"),
            (
                "2024-03-05T10:00:07.000000Z".into(),
                "2024-03-05T10:00:08.000000Z".into()
            )
        );
        assert_eq!(
            r("2024-03-05T10:00:07.25Z"),
            (
                "2024-03-05T10:00:07.250000Z".into(),
                "2024-03-05T10:00:07.260000Z".into()
            )
        );
    }

    #[test]
    fn rejects_impossible_dates() {
        for bad in [
            "2024-13-45",
            "2023-02-29",
            "24",
            "2024-1-05",
            "2024-03-05T25:00Z",
            "2024-03-05T10:00:07.Z",
            "abc",
            "",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
    }
}
