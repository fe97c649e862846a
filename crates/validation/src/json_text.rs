//! Layer 1: the body as text. Limits on size, nesting and string length, and the JSON rules
//! that a lenient parser lets through (duplicate keys, comments, trailing commas, NaN, a byte
//! order mark inside the body), each reported with its line and column.

use trialbridge_fhir::{IssueType, OutcomeIssue};

/// Bounds applied before anything else looks at a body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays.
    pub max_depth: usize,
    /// Longest string in bytes (base64 attachments included).
    pub max_string_bytes: usize,
    /// Most JSON values (objects, arrays, members and items) in one body: memory of a parsed
    /// body grows with its values, not its bytes (`[{},{},...]` is 3 bytes a value).
    pub max_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            max_depth: 64,
            max_string_bytes: 8 * 1024 * 1024,
            // A 16 MB Bundle of real resources holds well under a million values (20 bytes
            // or more each); a parsed value costs about 80 bytes, so this caps one parse
            // near 120 MB.
            max_values: 1_500_000,
        }
    }
}

/// Parses `bytes` as one JSON value under `limits`: a leading UTF-8 BOM is tolerated, every
/// other deviation from RFC 8259 or the limits is a `structure` error with line and column.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<serde_json::Value, OutcomeIssue> {
    if bytes.len() > limits.max_bytes {
        return Err(OutcomeIssue::error(
            IssueType::TooLong,
            format!(
                "the body has {} bytes; the limit is {}",
                bytes.len(),
                limits.max_bytes
            ),
        ));
    }
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let values = count_values(body);
    if values > limits.max_values {
        return Err(OutcomeIssue::error(
            IssueType::TooCostly,
            format!(
                "the body holds about {values} JSON values; the limit is {}",
                limits.max_values
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let what = if e.to_string().contains("recursion limit") {
            format!("the JSON nests deeper than {} levels", limits.max_depth)
        } else {
            e.to_string()
        };
        OutcomeIssue::error(IssueType::Structure, format!("malformed JSON: {what}"))
    })?;
    Scan {
        b: body,
        pos: 0,
        limits,
    }
    .value(0)
    .map_err(|(pos, msg)| {
        let (line, column) = line_column(body, pos);
        OutcomeIssue::error(
            IssueType::Structure,
            format!("{msg} at line {line}, column {column}"),
        )
    })?;
    Ok(value)
}

/// About how many values a JSON text holds (a value per separator and per opening bracket),
/// counted in one pass over the bytes without parsing: cheap enough to run before the parse.
fn count_values(b: &[u8]) -> usize {
    let mut n = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &c in b {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b',' | b'{' | b'[' => n += 1,
            _ => {}
        }
    }
    n
}

fn line_column(b: &[u8], pos: usize) -> (usize, usize) {
    let before = &b[..pos.min(b.len())];
    let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |p| p + 1);
    let column =
        std::str::from_utf8(&before[start..]).map_or(pos - start, |s| s.chars().count()) + 1;
    (line, column)
}

/// A walk over JSON that serde_json has already accepted: only the rules it does not enforce.
struct Scan<'a> {
    b: &'a [u8],
    pos: usize,
    limits: &'a Limits,
}

type ScanResult<T> = Result<T, (usize, String)>;

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn value(&mut self, depth: usize) -> ScanResult<()> {
        self.ws();
        if depth > self.limits.max_depth {
            return Err((
                self.pos,
                format!(
                    "the JSON nests deeper than {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        match self.b.get(self.pos) {
            Some(b'{') => self.object(depth),
            Some(b'[') => {
                self.pos += 1;
                loop {
                    self.ws();
                    if self.b.get(self.pos) == Some(&b']') {
                        self.pos += 1;
                        return Ok(());
                    }
                    self.value(depth + 1)?;
                    self.ws();
                    if self.b.get(self.pos) == Some(&b',') {
                        self.pos += 1;
                    }
                }
            }
            Some(b'"') => self.string().map(|_| ()),
            Some(_) => {
                while let Some(c) = self.b.get(self.pos) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                        break;
                    }
                    self.pos += 1;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn object(&mut self, depth: usize) -> ScanResult<()> {
        self.pos += 1;
        let mut keys: Vec<(usize, &'a [u8])> = Vec::new();
        let mut large: Option<std::collections::HashSet<Vec<u8>>> = None;
        loop {
            self.ws();
            if self.b.get(self.pos) == Some(&b'}') {
                self.pos += 1;
                return Ok(());
            }
            let at = self.pos;
            let raw = self.string()?;
            let key = if raw.contains(&b'\\') {
                std::borrow::Cow::Owned(
                    serde_json::from_slice::<String>(
                        &{
                            let b: &'a [u8] = self.b;
                            b
                        }[at..self.pos],
                    )
                    .map(String::into_bytes)
                    .unwrap_or_else(|_| raw.to_vec()),
                )
            } else {
                std::borrow::Cow::Borrowed(raw)
            };
            let duplicate = match &mut large {
                Some(set) => !set.insert(key.to_vec()),
                None => {
                    let dup = keys.iter().any(|(_, k)| *k == &key[..]);
                    if keys.len() >= 32 {
                        let mut set: std::collections::HashSet<Vec<u8>> =
                            keys.iter().map(|(_, k)| k.to_vec()).collect();
                        set.insert(key.to_vec());
                        large = Some(set);
                    } else if let std::borrow::Cow::Borrowed(k) = key {
                        keys.push((at, k));
                    } else {
                        large = Some(
                            keys.iter()
                                .map(|(_, k)| k.to_vec())
                                .chain([key.to_vec()])
                                .collect(),
                        );
                    }
                    dup
                }
            };
            if duplicate {
                return Err((
                    at,
                    format!("duplicate member \"{}\"", String::from_utf8_lossy(&key)),
                ));
            }
            self.ws();
            self.pos += 1; // ':'
            self.value(depth + 1)?;
            self.ws();
            if self.b.get(self.pos) == Some(&b',') {
                self.pos += 1;
            }
        }
    }

    /// Skips a string, returning its raw (escaped) content.
    fn string(&mut self) -> ScanResult<&'a [u8]> {
        let start = self.pos + 1;
        let mut i = start;
        while let Some(&c) = self.b.get(i) {
            match c {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        let end = i.min(self.b.len());
        self.pos = end + 1;
        let b: &'a [u8] = self.b;
        let s = &b[start..end];
        if s.len() > self.limits.max_string_bytes {
            return Err((
                start,
                format!(
                    "a string of {} bytes exceeds the limit of {}",
                    s.len(),
                    self.limits.max_string_bytes
                ),
            ));
        }
        if s.windows(3).any(|w| w == b"\xEF\xBB\xBF")
            || s.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\ufeff"))
        {
            return Err((
                start,
                "a byte order mark (U+FEFF) inside the body".to_string(),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text.as_bytes(), &Limits::default())
            .unwrap_err()
            .diagnostics
    }

    #[test]
    fn counts_values_outside_strings_and_refuses_too_many() {
        assert_eq!(count_values(br#"{"a":[1,{"b":"c,[{"}],"d":"\","}"#), 6);
        let limits = Limits {
            max_values: 10,
            ..Limits::default()
        };
        let many = format!("[{}]", ["{}"; 20].join(","));
        let e = parse(many.as_bytes(), &limits).unwrap_err();
        assert_eq!(e.code, IssueType::TooCostly);
        assert!(e.diagnostics.contains("limit is 10"), "{}", e.diagnostics);
        let few = format!("[{}]", ["{}"; 3].join(","));
        assert!(parse(few.as_bytes(), &limits).is_ok());
    }

    #[test]
    fn accepts_plain_json_and_a_leading_bom() {
        assert!(parse(b"\xEF\xBB\xBF{\"a\":[1,{\"b\":\"c\"}]}", &Limits::default()).is_ok());
    }

    #[test]
    fn rejects_what_lenient_parsers_allow_with_a_position() {
        assert!(err("{\"a\":1,\n \"a\":2}").contains("duplicate member \"a\" at line 2, column 2"));
        assert!(err("{\"a\":1, \"\\u0061\":2}").contains("duplicate member"));
        assert!(err("{\"a\":1,}").contains("line 1"));
        assert!(err("{\"a\":1 // c\n}").contains("malformed JSON"));
        assert!(err("{\"a\":NaN}").contains("malformed JSON"));
        assert!(err("{\"a\":\"x\u{feff}y\"}").contains("byte order mark"));
        assert!(err("{\"a\":1} \u{feff}").contains("malformed JSON"));
    }

    #[test]
    fn enforces_limits() {
        let deep = "[".repeat(70) + &"]".repeat(70);
        assert!(err(&deep).contains("nests deeper"));
        let limits = Limits {
            max_string_bytes: 4,
            ..Limits::default()
        };
        assert!(parse(b"{\"a\":\"12345\"}", &limits)
            .unwrap_err()
            .diagnostics
            .contains("exceeds"));
        let limits = Limits {
            max_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(
            parse(b"{\"a\":1}", &limits).unwrap_err().code,
            IssueType::TooLong
        );
        // Many keys switch to a set; duplicates are still found.
        let mut many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":1")).collect();
        many.push("\"k7\":2".into());
        assert!(err(&format!("{{{}}}", many.join(","))).contains("duplicate member \"k7\""));
    }
}
