//! HL7 v2 for trialbridge: a parser that never panics and never loops (every malformed input
//! is a [`ParseError`] with its position), escapes, MLLP framing ([`mllp`]) and
//! acknowledgements ([`ack`]).
//!
//! A [`Message`] keeps the decoded text and the byte spans of its segments and fields; parts
//! are cut out on access, so parsing costs one pass over the bytes.

pub mod ack;
pub mod escape;
pub mod file;
pub mod labels;
pub mod mllp;

use std::borrow::Cow;
use std::ops::Range;

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: u8,
    /// Component separator, usually `^`.
    pub component: u8,
    /// Repetition separator, usually `~`.
    pub repetition: u8,
    /// Escape character, usually `\`; a message may declare none.
    pub escape: Option<u8>,
    /// Subcomponent separator, usually `&`.
    pub subcomponent: u8,
    /// Truncation character (v2.7+, usually `#`).
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: Some(b'\\'),
            subcomponent: b'&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// MSH-2 as written for these delimiters.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::new();
        s.push(self.component as char);
        s.push(self.repetition as char);
        if let Some(e) = self.escape {
            s.push(e as char);
        }
        s.push(self.subcomponent as char);
        if let Some(t) = self.truncation {
            s.push(t as char);
        }
        s
    }
}

/// Why bytes are not an HL7 v2 message, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("the message is empty")]
    Empty,
    /// The first segment is not MSH (or FHS/BHS for a batch).
    #[error("the message does not start with an MSH segment (found {found:?} at byte {offset})")]
    NoMsh {
        /// What was found instead.
        found: String,
        /// Byte offset.
        offset: usize,
    },
    /// MSH ends before its encoding characters.
    #[error("the MSH segment is truncated before MSH-2 (the encoding characters)")]
    TruncatedMsh,
    /// MSH-1/MSH-2 do not declare usable delimiters.
    #[error("MSH-1/MSH-2 declare unusable delimiters: {0}")]
    BadEncodingCharacters(String),
    /// A segment id is not three upper-case letters or digits.
    #[error("segment {index} has no valid segment id (found {found:?} at byte {offset})")]
    BadSegmentId {
        /// 1-based segment number.
        index: usize,
        /// What was found.
        found: String,
        /// Byte offset.
        offset: usize,
    },
    /// MSH-18 names a character set that cannot be decoded.
    #[error("MSH-18 character set {0:?} is not supported (ASCII, 8859/1, UNICODE UTF-8 are)")]
    UnsupportedCharset(String),
    /// The bytes are not valid in the declared character set.
    #[error("the message is not valid UTF-8 at byte {offset} and MSH-18 declares no 8-bit set")]
    BadEncoding {
        /// Byte offset of the first bad byte.
        offset: usize,
    },
    /// A batch envelope is malformed.
    #[error("batch envelope: {0}")]
    BadBatch(String),
    /// A header segment (a second MSH, or FHS/BHS/BTS/FTS) inside a message: two messages
    /// were run together, and reading them as one would attach the second one's segments to
    /// the first one's patient.
    #[error("segment {index} is {segment}: a second message starts inside this one (send one message per MLLP frame, or several inside a BHS/BTS batch)")]
    NestedHeader {
        /// The header segment found (`MSH`, `BHS`, ...).
        segment: String,
        /// 1-based segment number.
        index: usize,
        /// Byte offset.
        offset: usize,
    },
}

impl ParseError {
    /// The byte offset the error points at, when it points at one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            Self::NoMsh { offset, .. }
            | Self::BadSegmentId { offset, .. }
            | Self::BadEncoding { offset }
            | Self::NestedHeader { offset, .. } => Some(*offset),
            _ => None,
        }
    }
}

/// One segment: its span and the spans of its fields (index 0 is the segment id).
#[derive(Debug, Clone)]
struct SegmentSpan {
    fields: Vec<Range<usize>>,
}

/// A parsed HL7 v2 message.
#[derive(Debug, Clone)]
pub struct Message {
    text: String,
    delimiters: Delimiters,
    segments: Vec<SegmentSpan>,
}

/// Strips a UTF-8 byte order mark.
fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn segment_lines(text: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i <= bytes.len() {
            let at_end = i == bytes.len();
            if at_end || bytes[i] == b'\r' || bytes[i] == b'\n' {
                let r = start..i;
                i += 1;
                start = i;
                if r.is_empty() || text[r.clone()].trim().is_empty() {
                    if at_end {
                        return None;
                    }
                    continue;
                }
                return Some(r);
            }
            i += 1;
        }
        None
    })
}

fn decode(bytes: &[u8]) -> Result<String, ParseError> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            // An 8-bit message: allowed when MSH-18 says 8859/1 (or says nothing, as many
            // German systems send Latin-1 without declaring it).
            let charset = msh18(bytes);
            match charset.as_deref() {
                None | Some("") | Some("8859/1") | Some("8859/15") => {
                    Ok(bytes.iter().map(|&b| b as char).collect())
                }
                Some("UNICODE UTF-8") | Some("ASCII") => Err(ParseError::BadEncoding {
                    offset: e.valid_up_to(),
                }),
                Some(other) => Err(ParseError::UnsupportedCharset(other.to_string())),
            }
        }
    }
}

/// MSH-18 read from raw bytes (before decoding): the 18th field of the first line.
fn msh18(bytes: &[u8]) -> Option<String> {
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..line_end];
    let sep = *line.get(3)?;
    // MSH-1 is the separator itself, so MSH-n is split index n-1.
    let field = line.split(|&b| b == sep).nth(17)?;
    let comp = field.split(|&b| b == b'^').next()?;
    Some(String::from_utf8_lossy(comp).trim().to_string())
}

impl Message {
    /// Parses one message (CR, LF or CRLF segment ends, an optional UTF-8 BOM, any delimiters).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let bytes = without_bom(bytes);
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or(ParseError::Empty)?;
        let bytes = &bytes[start..];
        if !bytes.starts_with(b"MSH") {
            let found = String::from_utf8_lossy(&bytes[..bytes.len().min(3)]).into_owned();
            return Err(ParseError::NoMsh {
                found,
                offset: start,
            });
        }
        if bytes.len() < 8 {
            return Err(ParseError::TruncatedMsh);
        }
        let text = decode(bytes)?;
        let delimiters = Self::read_delimiters(text.as_bytes())?;
        let mut segments = Vec::new();
        for (n, line) in segment_lines(&text).enumerate() {
            let b = &text.as_bytes()[line.clone()];
            let id_ok = b.len() >= 3
                && b[..3]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                && (b.len() == 3 || b[3] == delimiters.field);
            if !id_ok {
                let found: String = text[line.clone()].chars().take(8).collect();
                return Err(ParseError::BadSegmentId {
                    index: n + 1,
                    found,
                    offset: line.start + start,
                });
            }
            if n > 0 && matches!(&b[..3], b"MSH" | b"FHS" | b"BHS" | b"BTS" | b"FTS") {
                return Err(ParseError::NestedHeader {
                    segment: text[line.start..line.start + 3].to_string(),
                    index: n + 1,
                    offset: line.start + start,
                });
            }
            let mut fields = Vec::with_capacity(24);
            let mut fs = line.start;
            for (k, &c) in b.iter().enumerate() {
                if c == delimiters.field {
                    fields.push(fs..line.start + k);
                    fs = line.start + k + 1;
                }
            }
            fields.push(fs..line.end);
            segments.push(SegmentSpan { fields });
        }
        Ok(Self {
            text,
            delimiters,
            segments,
        })
    }

    fn read_delimiters(b: &[u8]) -> Result<Delimiters, ParseError> {
        let field = b[3];
        let bad = |why: &str| Err(ParseError::BadEncodingCharacters(why.to_string()));
        if !field.is_ascii_punctuation() {
            return bad("MSH-1 (the field separator) must be an ASCII punctuation character");
        }
        let enc: Vec<u8> = b[4..]
            .iter()
            .take_while(|&&c| c != field && c != b'\r' && c != b'\n')
            .copied()
            .collect();
        if enc.len() < 3 || enc.len() > 5 {
            return bad("MSH-2 must have 3 to 5 encoding characters (^~\\& and optionally #)");
        }
        let mut seen = vec![field];
        for &c in &enc {
            if !c.is_ascii_punctuation() || seen.contains(&c) {
                return bad("the encoding characters must be distinct ASCII punctuation, different from the field separator");
            }
            seen.push(c);
        }
        // With three characters the escape character is absent (component, repetition, subcomponent).
        Ok(match enc.len() {
            3 => Delimiters {
                field,
                component: enc[0],
                repetition: enc[1],
                escape: None,
                subcomponent: enc[2],
                truncation: None,
            },
            4 => Delimiters {
                field,
                component: enc[0],
                repetition: enc[1],
                escape: Some(enc[2]),
                subcomponent: enc[3],
                truncation: None,
            },
            _ => Delimiters {
                field,
                component: enc[0],
                repetition: enc[1],
                escape: Some(enc[2]),
                subcomponent: enc[3],
                truncation: Some(enc[4]),
            },
        })
    }

    /// The delimiters of this message.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// The decoded text (UTF-8).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every segment in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        self.segments
            .iter()
            .map(move |s| Segment { msg: self, span: s })
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<Segment<'_>> {
        self.segments().find(|s| s.id() == id)
    }

    /// Every segment with this id.
    pub fn segments_named<'a>(&'a self, id: &'a str) -> impl Iterator<Item = Segment<'a>> + 'a {
        self.segments().filter(move |s| s.id() == id)
    }

    /// MSH-n, unescaped first component (`MSH-9` → `ORU`).
    pub fn msh(&self, n: usize) -> Field<'_> {
        self.segment("MSH").map(|s| s.field(n)).unwrap_or(Field {
            msg: self,
            text: "",
        })
    }

    /// Message type, trigger and structure (MSH-9.1, 9.2, 9.3).
    pub fn message_type(&self) -> (String, String, String) {
        let f = self.msh(9);
        (
            f.component(1).to_string(),
            f.component(2).to_string(),
            f.component(3).to_string(),
        )
    }

    /// MSH-10, the message control id.
    pub fn control_id(&self) -> String {
        self.msh(10).value().into_owned()
    }

    /// MSH-12.1, the version (`2.5.1`).
    pub fn version(&self) -> String {
        self.msh(12).component(1).to_string()
    }
}

/// A segment of a message.
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    msg: &'a Message,
    span: &'a SegmentSpan,
}

impl<'a> Segment<'a> {
    /// The segment id (`PID`).
    pub fn id(&self) -> &'a str {
        &self.msg.text[self.span.fields[0].clone()]
    }

    /// Field `n` (1-based, as HL7 numbers them; for MSH, MSH-1 is the field separator and
    /// MSH-2 the encoding characters). Absent fields are empty.
    pub fn field(&self, n: usize) -> Field<'a> {
        let empty = Field {
            msg: self.msg,
            text: "",
        };
        if n == 0 {
            return empty;
        }
        if self.id() == "MSH" {
            if n == 1 {
                let i = self.span.fields[0].end;
                return Field {
                    msg: self.msg,
                    text: &self.msg.text[i..i + 1],
                };
            }
            return self.span.fields.get(n - 1).map_or(empty, |r| Field {
                msg: self.msg,
                text: &self.msg.text[r.clone()],
            });
        }
        self.span.fields.get(n).map_or(empty, |r| Field {
            msg: self.msg,
            text: &self.msg.text[r.clone()],
        })
    }

    /// How many fields the segment has (without the id).
    pub fn len(&self) -> usize {
        self.span.fields.len() - 1 + usize::from(self.id() == "MSH")
    }

    /// Whether the segment has no fields.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A field, a repetition, a component or a subcomponent: raw text plus the message's
/// delimiters for cutting it further.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    msg: &'a Message,
    text: &'a str,
}

impl<'a> Field<'a> {
    fn split(&self, sep: u8, n: usize) -> Field<'a> {
        let text = if n == 0 {
            ""
        } else {
            self.text.split(sep as char).nth(n - 1).unwrap_or("")
        };
        Field {
            msg: self.msg,
            text,
        }
    }

    /// The raw text, escapes unresolved.
    pub fn raw(&self) -> &'a str {
        self.text
    }

    /// The text with escapes resolved; the HL7 null `""` reads as empty (see [`Field::is_null`]).
    pub fn value(&self) -> Cow<'a, str> {
        if self.is_null() {
            return Cow::Borrowed("");
        }
        escape::unescape(self.text, &self.msg.delimiters)
    }

    /// Whether the part is empty (or `""`, the HL7 null, which reads as empty here).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() || self.is_null()
    }

    /// Whether the part is the HL7 null `""`: the sender says the value is now empty (a
    /// receiver clears what it had), where an empty part says nothing about it.
    pub fn is_null(&self) -> bool {
        self.text == "\"\""
    }

    /// Every repetition.
    pub fn repetitions(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let msg = self.msg;
        self.text
            .split(self.msg.delimiters.repetition as char)
            .map(move |t| Field { msg, text: t })
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Field<'a> {
        self.split(self.msg.delimiters.repetition, n)
    }

    /// Every component of this part (of a repetition, or of the first repetition of a field).
    pub fn components(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let msg = self.msg;
        let first = self
            .text
            .split(msg.delimiters.repetition as char)
            .next()
            .unwrap_or("");
        first
            .split(msg.delimiters.component as char)
            .map(move |t| Field { msg, text: t })
    }

    /// Component `n` (1-based) of the first repetition, unescaped.
    pub fn component(&self, n: usize) -> Cow<'a, str> {
        self.component_part(n).value()
    }

    /// Component `n` (1-based) of the first repetition, for cutting into subcomponents.
    pub fn component_part(&self, n: usize) -> Field<'a> {
        self.repetition(1).split(self.msg.delimiters.component, n)
    }

    /// Subcomponent `n` (1-based).
    pub fn subcomponent(&self, n: usize) -> Cow<'a, str> {
        self.split(self.msg.delimiters.subcomponent, n).value()
    }
}

/// Splits a batch or file (FHS/BHS ... BTS/FTS envelopes) into its messages; a single message
/// without an envelope is a batch of one. Envelope counts (BTS-1, FTS-1) are checked when given.
pub fn parse_batch(bytes: &[u8]) -> Result<Vec<Message>, ParseError> {
    Ok(parse_batches(bytes)?.into_iter().flatten().collect())
}

/// Splits a file into its batches (each BHS..BTS; messages outside any BHS form a batch of
/// their own), each into its messages; counts checked as by [`parse_batch`].
pub fn parse_batches(bytes: &[u8]) -> Result<Vec<Vec<Message>>, ParseError> {
    let bytes = without_bom(bytes);
    let text = std::str::from_utf8(bytes)
        .map(Cow::Borrowed)
        .unwrap_or_else(|_| Cow::Owned(bytes.iter().map(|&b| b as char).collect()));
    let lines: Vec<Range<usize>> = segment_lines(&text).collect();
    let Some(first) = lines.first() else {
        return Err(ParseError::Empty);
    };
    if !(text[first.clone()].starts_with("FHS") || text[first.clone()].starts_with("BHS")) {
        return Ok(vec![vec![Message::parse(bytes)?]]);
    }
    let mut messages: Vec<Vec<Message>> = vec![Vec::new()];
    let mut current: Option<usize> = None;
    // Each BHS..BTS is counted on its own (BTS-1: its messages); FTS-1 counts the batches.
    let mut in_batch = 0usize;
    let mut batches = 0usize;
    let flush = |from: usize, to: usize, out: &mut Vec<Vec<Message>>| -> Result<(), ParseError> {
        let chunk = &text[from..to];
        let m = Message::parse(chunk.as_bytes())?;
        out.last_mut().expect("one batch at least").push(m);
        Ok(())
    };
    let count = |seg: &str| -> Option<usize> {
        let sep = seg.as_bytes().get(3).copied().unwrap_or(b'|') as char;
        seg.split(sep)
            .nth(1)
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .and_then(|c| c.parse().ok())
    };
    for line in &lines {
        let seg = &text[line.clone()];
        let id = seg.get(..3).unwrap_or("");
        match id {
            "MSH" => {
                if let Some(s) = current.take() {
                    flush(s, line.start, &mut messages)?;
                }
                current = Some(line.start);
                in_batch += 1;
            }
            "BTS" | "FTS" | "BHS" | "FHS" => {
                if let Some(s) = current.take() {
                    flush(s, line.start, &mut messages)?;
                }
                match id {
                    "BHS" => {
                        in_batch = 0;
                        batches += 1;
                        if messages.last().is_some_and(|b| !b.is_empty()) {
                            messages.push(Vec::new());
                        }
                    }
                    "BTS" => {
                        if let Some(n) = count(seg) {
                            if n != in_batch {
                                return Err(ParseError::BadBatch(format!(
                                    "BTS-1 of batch {batches} declares {n} messages, the batch has {in_batch}"
                                )));
                            }
                        }
                    }
                    "FTS" => {
                        if let Some(n) = count(seg) {
                            if n != batches {
                                return Err(ParseError::BadBatch(format!(
                                    "FTS-1 declares {n} batches, the file has {batches}"
                                )));
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if let Some(s) = current {
        flush(s, text.len(), &mut messages)?;
    }
    messages.retain(|b| !b.is_empty());
    if messages.is_empty() {
        return Err(ParseError::BadBatch("the envelope holds no message".into()));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|LAB|SITE01|TB|SPONSOR|20260316101500||ORU^R01^ORU_R01|MSG0001|P|2.5.1\rPID|1||4711^^^KH&1.2.3&ISO^MR||Muster^Erika||19880412|F\rOBX|1|NM|39156-5^BMI^LN||27.4|kg/m2^^UCUM|||||F|||20260302\r";

    #[test]
    fn reads_fields_components_and_msh_numbering() {
        let m = Message::parse(ORU.as_bytes()).unwrap();
        assert_eq!(m.msh(1).raw(), "|");
        assert_eq!(m.msh(2).raw(), "^~\\&");
        assert_eq!(m.msh(3).value(), "LAB");
        assert_eq!(
            m.message_type(),
            ("ORU".into(), "R01".into(), "ORU_R01".into())
        );
        assert_eq!(m.control_id(), "MSG0001");
        assert_eq!(m.version(), "2.5.1");
        let pid = m.segment("PID").unwrap();
        assert_eq!(pid.field(3).component(1), "4711");
        assert_eq!(pid.field(3).component_part(4).subcomponent(2), "1.2.3");
        assert_eq!(pid.field(5).component(2), "Erika");
        assert_eq!(m.segment("OBX").unwrap().field(5).value(), "27.4");
        assert!(pid.field(40).is_empty());
    }

    #[test]
    fn any_delimiters_and_line_ends() {
        let text = "MSH#!*$%#A#B\nPID#1##4711!!!X!MR*0815!!!Y!MR\r\nOBX#1#ST#c##a$F$b\n";
        let m = Message::parse(text.as_bytes()).unwrap();
        let pid = m.segment("PID").unwrap();
        let ids: Vec<String> = pid
            .field(3)
            .repetitions()
            .map(|r| r.component(1).into_owned())
            .collect();
        assert_eq!(ids, ["4711", "0815"]);
        assert_eq!(m.segment("OBX").unwrap().field(5).value(), "a#b");
    }

    #[test]
    fn latin1_by_msh18_and_a_bom() {
        let bytes = b"\xEF\xBB\xBFMSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.3|||||DE|8859/1\rPID|1||1||M\xFCller\r";
        let m = Message::parse(bytes).unwrap();
        assert_eq!(m.segment("PID").unwrap().field(5).value(), "Müller");
        let bad = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.3|||||DE|UNICODE UTF-8\rPID|1||1||M\xFCller\r";
        assert!(matches!(
            Message::parse(bad),
            Err(ParseError::BadEncoding { .. })
        ));
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        assert_eq!(Message::parse(b"  \r\n").unwrap_err(), ParseError::Empty);
        assert!(matches!(
            Message::parse(b"PID|1"),
            Err(ParseError::NoMsh { .. })
        ));
        assert_eq!(
            Message::parse(b"MSH|^~").unwrap_err(),
            ParseError::TruncatedMsh
        );
        assert!(matches!(
            Message::parse(b"MSH|^^\\&|A|B"),
            Err(ParseError::BadEncodingCharacters(_))
        ));
        assert!(matches!(
            Message::parse(b"MSH|^~\\&|A|B\rpid|1"),
            Err(ParseError::BadSegmentId { index: 2, .. })
        ));
        assert!(matches!(
            Message::parse(b"MSHA^~\\&|A|B"),
            Err(ParseError::BadEncodingCharacters(_))
        ));
    }

    #[test]
    fn a_second_header_inside_a_message_is_refused() {
        let two = "MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\rPID|1||1\rMSH|^~\\&|A|B|C|D|1||ORU^R01|2|P|2.5\rPID|1||2\r";
        assert_eq!(
            Message::parse(two.as_bytes()).unwrap_err(),
            ParseError::NestedHeader {
                segment: "MSH".into(),
                index: 3,
                offset: 45
            }
        );
        let batch_inside = "MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\rBTS|1\r";
        assert!(matches!(
            Message::parse(batch_inside.as_bytes()),
            Err(ParseError::NestedHeader { index: 2, .. })
        ));
    }

    #[test]
    fn batches_split_and_count() {
        let one = "MSH|^~\\&|A|B|C|D|1||ADT^A04|1|P|2.5\rPID|1||1\r";
        let two = "MSH|^~\\&|A|B|C|D|1||ADT^A08|2|P|2.5\rPID|1||1\r";
        let batch = format!("FHS|^~\\&\rBHS|^~\\&\r{one}{two}BTS|2\rFTS|1\r");
        let msgs = parse_batch(batch.as_bytes()).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].control_id(), "2");
        let wrong = format!("BHS|^~\\&\r{one}BTS|3\r");
        assert!(matches!(
            parse_batch(wrong.as_bytes()),
            Err(ParseError::BadBatch(_))
        ));
        assert_eq!(parse_batch(one.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn a_file_of_several_batches_counts_each_batch_and_the_file() {
        let m = |id: u32| format!("MSH|^~\\&|A|B|C|D|1||ADT^A08|{id}|P|2.5\rPID|1||1\r");
        let file = format!(
            "FHS|^~\\&\rBHS|^~\\&\r{}{}BTS|2\rBHS|^~\\&\r{}BTS|1\rFTS|2\r",
            m(1),
            m(2),
            m(3)
        );
        assert_eq!(parse_batch(file.as_bytes()).unwrap().len(), 3);
        let sizes: Vec<usize> = parse_batches(file.as_bytes())
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [2, 1]);
        let wrong_batch = file.replace("BTS|1", "BTS|3");
        let e = parse_batch(wrong_batch.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("BTS-1 of batch 2 declares 3 messages, the batch has 1"),
            "{e}"
        );
        let wrong_file = file.replace("FTS|2", "FTS|1");
        let e = parse_batch(wrong_file.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("FTS-1 declares 1 batches, the file has 2"),
            "{e}"
        );
        // An empty count says nothing (BTS-1 and FTS-1 are optional).
        assert_eq!(
            parse_batch(file.replace("BTS|2", "BTS|").as_bytes())
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn the_hl7_null_reads_as_empty_and_is_told_apart() {
        let m =
            Message::parse(b"MSH|^~\\&|A|B|C|D|1||ADT^A08|1|P|2.5\rPV1|1|O|\"\"|\"\"^x\r").unwrap();
        let pv1 = m.segment("PV1").unwrap();
        assert!(pv1.field(3).is_null() && pv1.field(3).is_empty());
        assert_eq!(pv1.field(3).value(), "");
        assert_eq!(pv1.field(3).component(1), "");
        assert!(!pv1.field(4).is_null());
        assert_eq!(pv1.field(4).component(1), "");
        assert_eq!(pv1.field(4).component(2), "x");
        assert!(!pv1.field(5).is_null() && pv1.field(5).is_empty());
    }
}
