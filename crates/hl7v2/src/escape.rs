//! HL7 v2 escape sequences (`\F\ \S\ \T\ \R\ \E\ \Xhh..\ \.br\`), for the delimiters of the
//! message at hand.

use std::borrow::Cow;

use crate::Delimiters;

/// The text of a field part with its escape sequences resolved. Unknown sequences (`\H\`,
/// `\N\` formatting, `\Cxxyy\`) are dropped, as their meaning is presentation only; an
/// unterminated sequence is kept as written.
pub fn unescape<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(text);
    };
    let esc = esc as char;
    if !text.contains(esc) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(esc) {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find(esc) else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let seq = &after[..j];
        match seq {
            "F" => out.push(d.field as char),
            "S" => out.push(d.component as char),
            "T" => out.push(d.subcomponent as char),
            "R" => out.push(d.repetition as char),
            "E" => out.push(esc),
            ".br" => out.push('\n'),
            s if s.starts_with('X') && s.len() > 1 && s.len() % 2 == 1 => {
                let hex = &s[1..];
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(hex.get(k..k + 2)?, 16).ok())
                    .collect();
                match bytes {
                    Some(b) => out.push_str(
                        &String::from_utf8(b.clone())
                            .unwrap_or_else(|_| b.iter().map(|&c| c as char).collect()),
                    ),
                    None => {
                        out.push(esc);
                        out.push_str(seq);
                        out.push(esc);
                    }
                }
            }
            _ => {}
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `text` with every delimiter, line break and control byte escaped, ready to place in a field.
pub fn escape(text: &str, d: &Delimiters) -> String {
    let esc = d.escape.unwrap_or(b'\\') as char;
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if c == d.field as char => out.push_str(&format!("{esc}F{esc}")),
            c if c == d.component as char => out.push_str(&format!("{esc}S{esc}")),
            c if c == d.subcomponent as char => out.push_str(&format!("{esc}T{esc}")),
            c if c == d.repetition as char => out.push_str(&format!("{esc}R{esc}")),
            c if c == esc => out.push_str(&format!("{esc}E{esc}")),
            // Line breaks and every other control byte (a VT or FS would end an MLLP frame).
            c if c.is_ascii_control() => out.push_str(&format!("{esc}X{:02X}{esc}", c as u8)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nhapi_vectors() {
        let text = include_str!("../tests/fixtures/escape_vectors.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let d = Delimiters::default();
        let mut n = 0;
        for c in v["cases"].as_array().unwrap() {
            let input = c["input"].as_str().unwrap();
            let expected = c["expected"].as_str().unwrap();
            if c["test"].as_str().unwrap().starts_with("Escape") {
                assert_eq!(escape(input, &d), expected, "{input:?}");
            } else {
                assert_eq!(unescape(input, &d), expected, "{input:?}");
            }
            n += 1;
        }
        assert_eq!(n, 30);
    }

    #[test]
    fn other_delimiters_and_odd_sequences() {
        let d = Delimiters {
            field: b'#',
            component: b'!',
            repetition: b'*',
            escape: Some(b'$'),
            subcomponent: b'%',
            truncation: None,
        };
        assert_eq!(unescape("a$F$b$S$c$.br$d", &d), "a#b!c\nd");
        assert_eq!(escape("a#b", &d), "a$F$b");
        assert_eq!(escape("a\x0bb\x1c", &d), "a$X0B$b$X1C$");
        let std = Delimiters::default();
        assert_eq!(unescape("\\H\\bold\\N\\", &std), "bold");
        assert_eq!(unescape("open \\F", &std), "open \\F");
        assert_eq!(unescape("\\XC3A9\\", &std), "é");
        assert_eq!(unescape("\\XZZ\\", &std), "\\XZZ\\");
    }
}
