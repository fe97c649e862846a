//! FHIR `instant` values.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats a UTC time as a FHIR instant with microsecond precision (`2026-11-25T09:03:24.123456Z`).
pub fn format(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Parses a FHIR instant or dateTime with time zone (as used by `_since`, `If-Modified-Since` in
/// ISO form). Dates without a time are taken as midnight UTC.
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(d.midnight().assume_utc())
}

/// Parses an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), as in `If-Modified-Since`.
pub fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), fmt)
        .ok()
        .map(|p| p.assume_utc())
}

/// Formats a time as an HTTP date for `Last-Modified`.
pub fn format_http_date(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(fmt)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = parse("2026-11-25T09:03:24.123456Z").unwrap();
        assert_eq!(format(t), "2026-11-25T09:03:24.123456Z");
        let t = parse("2015-08-31T08:14:33+10:00").unwrap();
        assert_eq!(format(t), "2015-08-30T22:14:33.000000Z");
        assert!(parse("2024-13-45").is_none());
        assert_eq!(
            format(parse("2024-02-01").unwrap()),
            "2024-02-01T00:00:00.000000Z"
        );
        let h = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(format_http_date(h), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
