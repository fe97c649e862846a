//! Lexical rules of the R4 primitive types (the `regex` of each type's `value` element), as
//! byte checks: they run for every primitive of every write.

/// Why a primitive value is malformed, in words an integrator can act on.
pub fn check(type_name: &str, text: &str) -> Result<(), &'static str> {
    let ok = match type_name {
        "string" | "markdown" => return string(text),
        "code" => code(text),
        "id" => trialbridge_fhir::id::is_valid_id(text),
        "uri" | "url" | "canonical" => {
            !text.is_empty() && !text.bytes().any(|b| b.is_ascii_whitespace())
        }
        "oid" => oid(text),
        "uuid" => uuid(text),
        "base64Binary" => base64(text),
        "date" => date(text).is_some(),
        "dateTime" => date_time(text),
        "instant" => instant(text),
        "time" => time(text.as_bytes()),
        "xhtml" => !text.is_empty(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(match type_name {
            "code" => "a code has no leading, trailing or double whitespace and is not empty",
            "id" => "an id is 1-64 characters of A-Z a-z 0-9 - .",
            "uri" | "url" | "canonical" => "a URI is not empty and contains no whitespace",
            "oid" => "an OID looks like urn:oid:1.2.3",
            "uuid" => "a UUID looks like urn:uuid:c757873d-ec9a-4326-a141-556f43239520 (lower case)",
            "base64Binary" => "not valid base64",
            "date" => "a date is YYYY, YYYY-MM or YYYY-MM-DD and a real calendar date",
            "dateTime" => {
                "a dateTime is YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss) with a time zone, and a real date and time"
            }
            "instant" => "an instant is YYYY-MM-DDThh:mm:ss(.sss) with a time zone (Z or +hh:mm)",
            "time" => "a time is hh:mm:ss(.sss)",
            _ => "malformed value",
        })
    }
}

fn string(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("a string may not be empty (leave the element out instead)");
    }
    // R4 forbids control characters other than TAB, CR and LF.
    if text
        .bytes()
        .any(|b| b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n')
    {
        return Err("a string may not contain control characters");
    }
    Ok(())
}

fn code(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_whitespace()
        && !b[b.len() - 1].is_ascii_whitespace()
        && !b
            .windows(2)
            .any(|w| w[0].is_ascii_whitespace() && w[1].is_ascii_whitespace())
        && !b.iter().any(|&c| c.is_ascii_whitespace() && c != b' ')
}

fn oid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    matches!(parts.next(), Some("0" | "1" | "2")) && {
        let mut n = 0;
        let ok = parts.all(|p| {
            n += 1;
            !p.is_empty()
                && p.bytes().all(|c| c.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'))
        });
        ok && n > 0
    }
}

fn uuid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

fn base64(text: &str) -> bool {
    let mut n = 0usize;
    let mut pad = 0usize;
    for c in text.bytes() {
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            b'=' => pad += 1,
            c if pad == 0 && (c.is_ascii_alphanumeric() || c == b'+' || c == b'/') => {}
            _ => return false,
        }
        n += 1;
    }
    n.is_multiple_of(4) && pad <= 2
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Length of a valid date prefix (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) that is all of `text`.
fn date(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let year = digits(b.get(0..4)?)?;
    if year == 0 {
        return None;
    }
    match b.len() {
        4 => Some(4),
        7 if b[4] == b'-' => {
            let m = digits(&b[5..7])?;
            (1..=12).contains(&m).then_some(7)
        }
        10 if b[4] == b'-' && b[7] == b'-' => {
            let m = digits(&b[5..7])?;
            let d = digits(&b[8..10])?;
            ((1..=12).contains(&m) && d >= 1 && d <= days_in_month(year, m)).then_some(10)
        }
        _ => None,
    }
}

fn time(b: &[u8]) -> bool {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let (Some(h), Some(m), Some(s)) = (digits(&b[0..2]), digits(&b[3..5]), digits(&b[6..8])) else {
        return false;
    };
    if h > 23 || m > 59 || s > 60 {
        return false;
    }
    match &b[8..] {
        [] => true,
        [b'.', frac @ ..] => !frac.is_empty() && frac.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

fn zone(b: &[u8]) -> bool {
    match b {
        b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2]);
            let m = digits(&[*m1, *m2]);
            matches!((h, m), (Some(h), Some(m)) if (h < 14 && m < 60) || (h == 14 && m == 0))
        }
        _ => false,
    }
}

/// Splits `hh:mm:ss(.fff)` + zone.
fn time_with_zone(b: &[u8]) -> bool {
    let end = b
        .iter()
        .position(|&c| c == b'Z' || c == b'+' || c == b'-')
        .unwrap_or(b.len());
    time(&b[..end]) && zone(&b[end..])
}

fn date_time(text: &str) -> bool {
    match text.split_once('T') {
        None => date(text).is_some(),
        Some((d, t)) => d.len() == 10 && date(d).is_some() && time_with_zone(t.as_bytes()),
    }
}

fn instant(text: &str) -> bool {
    matches!(text.split_once('T'), Some((d, t)) if d.len() == 10 && date(d).is_some() && time_with_zone(t.as_bytes()))
}

/// Checks the JSON number text of an `integer`, `unsignedInt` or `positiveInt`.
pub fn integer(type_name: &str, text: &str) -> Result<(), &'static str> {
    let v: i64 = text
        .parse()
        .map_err(|_| "an integer has no fraction or exponent")?;
    if !(i64::from(i32::MIN)..=i64::from(i32::MAX)).contains(&v) {
        return Err("an integer must lie within -2,147,483,648..2,147,483,647");
    }
    match type_name {
        "unsignedInt" if v < 0 => Err("an unsignedInt may not be negative"),
        "positiveInt" if v < 1 => Err("a positiveInt is at least 1"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_follow_the_calendar() {
        for ok in ["2016", "2016-02", "2016-02-29", "2000-02-29"] {
            assert!(check("date", ok).is_ok(), "{ok}");
        }
        for bad in [
            "2016-13-45",
            "2015-02-29",
            "1900-02-29",
            "16",
            "2016-1",
            "2016-01-01T10:00:00Z",
            "0000",
        ] {
            assert!(check("date", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn date_times_need_a_zone_with_a_time() {
        for ok in [
            "2016",
            "2016-05-18T22:33:22Z",
            "2016-05-18T22:33:22.123+02:00",
            "2016-05-18",
        ] {
            assert!(check("dateTime", ok).is_ok(), "{ok}");
        }
        for bad in [
            "2016-13-45",
            "2016-05-18T22:33:22",
            "2016-05-18T22:33Z",
            "2016-05-18T25:00:00Z",
            "2016-05-18T22:33:22+15:00",
            " 2016",
        ] {
            assert!(check("dateTime", bad).is_err(), "{bad}");
        }
        assert!(check("instant", "2016-05-18").is_err());
        assert!(check("instant", "2016-05-18T22:33:22.5-05:00").is_ok());
    }

    #[test]
    fn codes_ids_and_identifiers() {
        assert!(check("code", "final").is_ok());
        assert!(check("code", "a b").is_ok());
        for bad in ["", " final", "final ", "a  b", "a\tb"] {
            assert!(check("code", bad).is_err(), "{bad:?}");
        }
        assert!(check("id", "a.b-C9").is_ok());
        assert!(check("id", "a_b").is_err());
        assert!(check("oid", "urn:oid:1.2.840.10008").is_ok());
        assert!(check("oid", "urn:oid:3.2").is_err());
        assert!(check("oid", "urn:oid:1.02").is_err());
        assert!(check("uuid", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520").is_ok());
        assert!(check("uuid", "urn:uuid:C757873D-EC9A-4326-A141-556F43239520").is_err());
        assert!(check("base64Binary", "aGVsbG8=").is_ok());
        assert!(check("base64Binary", "aGVsbG8").is_err());
        assert!(check("time", "10:00:00").is_ok());
        assert!(check("time", "24:00:00").is_err());
        assert!(check("string", "").is_err());
        assert!(check("uri", "http://a b").is_err());
    }

    #[test]
    fn integers_by_range() {
        assert!(integer("integer", "-5").is_ok());
        assert!(integer("integer", "2147483648").is_err());
        assert!(integer("integer", "1.0").is_err());
        assert!(integer("unsignedInt", "-1").is_err());
        assert!(integer("positiveInt", "0").is_err());
    }
}
