//! Acknowledgements: original mode (MSA-1 AA/AE/AR) and enhanced mode (commit CA/CE/CR as
//! MSH-15 asks), with an ERR segment per problem (location, HL7 table 0357 code, severity,
//! text), in the shape of the acknowledged message's version.

use crate::escape::escape;
use crate::{Delimiters, Message};

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error: the sender should fix the message.
    AE,
    /// Application reject: unsupported type, version or processing id, or the receiver is
    /// unavailable (the sender may resend unchanged).
    AR,
    /// Commit accept (enhanced mode).
    CA,
    /// Commit error (enhanced mode).
    CE,
    /// Commit reject (enhanced mode).
    CR,
}

impl AckCode {
    /// The code as written in MSA-1.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AA => "AA",
            Self::AE => "AE",
            Self::AR => "AR",
            Self::CA => "CA",
            Self::CE => "CE",
            Self::CR => "CR",
        }
    }

    /// The enhanced-mode (commit) code for an application code.
    pub fn commit(self) -> Self {
        match self {
            Self::AA | Self::CA => Self::CA,
            Self::AE | Self::CE => Self::CE,
            Self::AR | Self::CR => Self::CR,
        }
    }
}

/// One problem, for an ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// Segment id (`PID`), empty when the message as a whole is concerned.
    pub segment: String,
    /// Which occurrence of the segment (1-based).
    pub sequence: usize,
    /// Field number, if one.
    pub field: Option<usize>,
    /// Which repetition of the field (1-based; ERR-2.4); the first when not set.
    pub repetition: Option<usize>,
    /// HL7 table 0357 code (`101` required field missing, `102` data type error, `103` table
    /// value not found, `200` unsupported message type, `203` unsupported version id, `207`
    /// application internal error).
    pub code: &'static str,
    /// `E` error, `W` warning, `I` information.
    pub severity: char,
    /// What an integrator should do about it.
    pub text: String,
}

impl AckError {
    /// An error about the whole message.
    pub fn message(code: &'static str, text: impl Into<String>) -> Self {
        Self {
            segment: String::new(),
            sequence: 1,
            field: None,
            repetition: None,
            code,
            severity: 'E',
            text: text.into(),
        }
    }

    /// An error about a whole segment (its `sequence`-th occurrence, or for a header
    /// segment its position in the message).
    pub fn segment(
        segment: &str,
        sequence: usize,
        code: &'static str,
        text: impl Into<String>,
    ) -> Self {
        Self {
            segment: segment.to_string(),
            sequence,
            field: None,
            repetition: None,
            code,
            severity: 'E',
            text: text.into(),
        }
    }

    /// An error at a field.
    pub fn at(
        segment: &str,
        sequence: usize,
        field: usize,
        code: &'static str,
        text: impl Into<String>,
    ) -> Self {
        Self {
            segment: segment.to_string(),
            sequence,
            field: Some(field),
            repetition: None,
            code,
            severity: 'E',
            text: text.into(),
        }
    }
}

impl AckError {
    /// The same error, located in the `n`-th repetition of its field.
    pub fn in_repetition(mut self, n: usize) -> Self {
        self.repetition = Some(n);
        self
    }
}

fn code_text(code: &str) -> &'static str {
    match code {
        "0" => "Message accepted",
        "100" => "Segment sequence error",
        "101" => "Required field missing",
        "102" => "Data type error",
        "103" => "Table value not found",
        "200" => "Unsupported message type",
        "201" => "Unsupported event code",
        "202" => "Unsupported processing id",
        "203" => "Unsupported version id",
        "204" => "Unknown key identifier",
        "205" => "Duplicate key identifier",
        "206" => "Application record locked",
        _ => "Application internal error",
    }
}

/// What the acknowledged message said of itself (from its MSH, or defaults when it had none).
#[derive(Debug, Clone)]
pub struct Acknowledged {
    delimiters: Delimiters,
    sending: (String, String),
    receiving: (String, String),
    trigger: String,
    control_id: String,
    processing_id: String,
    version: String,
    accept_ack: String,
    app_ack: String,
}

impl Acknowledged {
    /// From a parsed message.
    pub fn of(m: &Message) -> Self {
        Self {
            delimiters: *m.delimiters(),
            sending: (m.msh(3).raw().to_string(), m.msh(4).raw().to_string()),
            receiving: (m.msh(5).raw().to_string(), m.msh(6).raw().to_string()),
            trigger: m.msh(9).component(2).into_owned(),
            control_id: m.msh(10).raw().to_string(),
            processing_id: m.msh(11).raw().to_string(),
            version: m.msh(12).raw().to_string(),
            // Some senders pad empty fields with a space: that is no request for enhanced mode.
            accept_ack: m.msh(15).raw().trim().to_string(),
            app_ack: m.msh(16).raw().trim().to_string(),
        }
    }

    /// For bytes that are not a message: an MSA-2 recovered from an MSH line if there is one.
    pub fn unparsed(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let line = text
            .split(['\r', '\n'])
            .find(|l| l.starts_with("MSH"))
            .unwrap_or("");
        let sep = line
            .chars()
            .nth(3)
            .filter(|c| !c.is_alphanumeric())
            .unwrap_or('|');
        let fields: Vec<&str> = line.split(sep).collect();
        let get = |n: usize| fields.get(n - 1).map_or(String::new(), |s| s.to_string());
        Self {
            delimiters: Delimiters::default(),
            sending: (get(3), get(4)),
            receiving: (get(5), get(6)),
            trigger: String::new(),
            control_id: get(10).chars().filter(|c| *c != '\r').collect(),
            processing_id: "P".into(),
            version: "2.5".into(),
            accept_ack: String::new(),
            app_ack: String::new(),
        }
    }

    /// Whether the sender asked for enhanced mode (MSH-15 or MSH-16 present).
    pub fn enhanced(&self) -> bool {
        !self.accept_ack.is_empty() || !self.app_ack.is_empty()
    }

    /// Whether an acknowledgement with this (application) outcome is to be sent on the
    /// connection: always in original mode; in enhanced mode as MSH-15 (AL, ER, SU, NE) says.
    pub fn wants(&self, code: AckCode) -> bool {
        if !self.enhanced() {
            return true;
        }
        let ok = matches!(code, AckCode::AA | AckCode::CA);
        match self.accept_ack.as_str() {
            "NE" => false,
            "ER" => !ok,
            "SU" => ok,
            _ => true,
        }
    }

    /// MSA-2: the control id acknowledged.
    pub fn control_id(&self) -> &str {
        &self.control_id
    }
}

/// A value copied from the acknowledged message into the ACK, without control bytes: a VT,
/// FS or CR echoed from a hostile MSH would cut the sender's ACK frame short or start a
/// segment of the attacker's choosing.
fn echoed(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.chars().any(|c| c.is_control()) {
        std::borrow::Cow::Owned(raw.chars().filter(|c| !c.is_control()).collect())
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// Builds the acknowledgement message. `control_id` is the ACK's own MSH-10 and `now` its
/// MSH-7 (`YYYYMMDDHHMMSS`). In enhanced mode the code becomes the commit code.
pub fn build(
    of: &Acknowledged,
    code: AckCode,
    errors: &[AckError],
    control_id: &str,
    now: &str,
) -> String {
    let d = &of.delimiters;
    let f = d.field as char;
    let c = d.component as char;
    let sub = d.subcomponent as char;
    let code = if of.enhanced() { code.commit() } else { code };
    let version = if of.version.is_empty() {
        "2.5".to_string()
    } else {
        of.version.clone()
    };
    let old = version.as_str() < "2.5";
    let mut out = format!(
        "MSH{f}{enc}{f}{ra}{f}{rf}{f}{sa}{f}{sf}{f}{now}{f}{f}ACK{c}{trig}{c}ACK{f}{cid}{f}{pid}{f}{ver}",
        enc = d.encoding_characters(),
        ra = echoed(&of.receiving.0),
        rf = echoed(&of.receiving.1),
        sa = echoed(&of.sending.0),
        sf = echoed(&of.sending.1),
        trig = escape(&of.trigger, d),
        cid = escape(control_id, d),
        pid = if of.processing_id.is_empty() { "P".into() } else { echoed(&of.processing_id) },
        ver = echoed(&version),
    );
    let acknowledged = echoed(&of.control_id);
    out.push('\r');
    // MSA-3 sums up; each error has its own ERR segment below.
    let text = match errors {
        [] => String::new(),
        [one] => escape(&one.text, d),
        [first, ..] => escape(
            &format!(
                "{} errors, each in an ERR segment; the first: {}",
                errors.len(),
                first.text
            ),
            d,
        ),
    };
    if text.is_empty() {
        out.push_str(&format!("MSA{f}{}{f}{acknowledged}\r", code.as_str()));
    } else {
        out.push_str(&format!(
            "MSA{f}{}{f}{acknowledged}{f}{}\r",
            code.as_str(),
            text
        ));
    }
    for e in errors {
        // ERR-2 (ERL): segment ^ sequence ^ field ^ field repetition; ERR-1 (v2.1-2.4) has
        // no place for the repetition.
        let loc = match (e.segment.is_empty(), e.field) {
            (true, _) => String::new(),
            (false, None) => format!("{}{c}{}", e.segment, e.sequence),
            (false, Some(n)) if old => format!("{}{c}{}{c}{n}", e.segment, e.sequence),
            (false, Some(n)) => format!(
                "{}{c}{}{c}{n}{c}{}",
                e.segment,
                e.sequence,
                e.repetition.unwrap_or(1)
            ),
        };
        let text = escape(&e.text, d);
        if old {
            // ERR-1 (v2.1-2.4): segment ^ sequence ^ field ^ code&text&table.
            let loc = if loc.is_empty() {
                format!("{c}{c}")
            } else {
                loc
            };
            out.push_str(&format!(
                "ERR{f}{loc}{c}{}{sub}{}{sub}HL70357\r",
                e.code,
                code_text(e.code)
            ));
        } else {
            out.push_str(&format!(
                "ERR{f}{f}{loc}{f}{}{c}{}{c}HL70357{f}{}{f}{f}{f}{f}{text}\r",
                e.code,
                code_text(e.code),
                e.severity
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_mode_ack_with_err() {
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260101||ORU^R01|C123|P|2.5.1\rPID|1\r")
            .unwrap();
        let of = Acknowledged::of(&m);
        let ack = build(
            &of,
            AckCode::AE,
            &[AckError::at(
                "OBX",
                2,
                5,
                "102",
                "OBX-5 '1,5' is not a number",
            )],
            "A1",
            "20260101120000",
        );
        let parsed = Message::parse(ack.as_bytes()).unwrap();
        assert_eq!(parsed.msh(3).raw(), "TB");
        assert_eq!(parsed.msh(5).raw(), "LAB");
        assert_eq!(parsed.msh(9).raw(), "ACK^R01^ACK");
        let msa = parsed.segment("MSA").unwrap();
        assert_eq!(msa.field(1).raw(), "AE");
        assert_eq!(msa.field(2).raw(), "C123");
        let err = parsed.segment("ERR").unwrap();
        assert_eq!(err.field(2).raw(), "OBX^2^5^1");
        assert_eq!(err.field(3).component(1), "102");
        assert_eq!(err.field(4).raw(), "E");
        assert!(of.wants(AckCode::AA));
    }

    #[test]
    fn every_error_has_its_own_err_and_msa_sums_up() {
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260101||ORU^R01|C9|P|2.5.1\rPID|1\r")
            .unwrap();
        let errors = [
            AckError::at("OBX", 1, 5, "102", "OBX-5 'x' is not a number"),
            AckError::at(
                "OBX",
                3,
                14,
                "102",
                "OBX-14 '2026-13' is not an HL7 date/time",
            ),
            AckError::at("PID", 1, 7, "102", "PID-7 'abc' is not a date of birth").in_repetition(2),
        ];
        let ack = build(&Acknowledged::of(&m), AckCode::AE, &errors, "A9", "1");
        let parsed = Message::parse(ack.as_bytes()).unwrap();
        let locations: Vec<String> = parsed
            .segments_named("ERR")
            .map(|e| e.field(2).raw().to_string())
            .collect();
        assert_eq!(locations, ["OBX^1^5^1", "OBX^3^14^1", "PID^1^7^2"]);
        let msa3 = parsed.segment("MSA").unwrap().field(3).value().into_owned();
        assert!(
            msa3.starts_with("3 errors, each in an ERR segment; the first: OBX-5"),
            "{msa3}"
        );
    }

    #[test]
    fn enhanced_mode_commit_codes() {
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|1||ADT^A04|9|P|2.5|||ER|AL\r").unwrap();
        let of = Acknowledged::of(&m);
        assert!(of.enhanced());
        assert!(!of.wants(AckCode::AA));
        assert!(of.wants(AckCode::AE));
        let ack = build(&of, AckCode::AE, &[], "A2", "1");
        assert!(ack.contains("MSA|CE|9"));
    }

    #[test]
    fn old_versions_get_err_1() {
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|1||ADT^A04|9|P|2.3\r").unwrap();
        let ack = build(
            &Acknowledged::of(&m),
            AckCode::AR,
            &[AckError::message("200", "no")],
            "A3",
            "1",
        );
        assert!(
            ack.contains("ERR|^^^200&Unsupported message type&HL70357"),
            "{ack}"
        );
    }

    #[test]
    fn no_control_byte_of_the_message_reaches_the_ack() {
        let of = Acknowledged::unparsed(
            b"MSH|^~\\&|A\x0b|B\x1c|C|D|1||ADT^A04|X\x1cY\x0b|P|2.5\rgarbage",
        );
        let ack = build(
            &of,
            AckCode::AE,
            &[AckError::message("100", "bad \x0b\x1c byte")],
            "A4",
            "1",
        );
        assert!(!ack.bytes().any(|b| b == 0x0b || b == 0x1c), "{ack:?}");
        assert!(ack.contains("MSA|AE|XY|"), "{ack:?}");
        // Every segment of the ACK is one line: no CR inside a field.
        let m = Message::parse(ack.as_bytes()).unwrap();
        assert_eq!(m.segments().count(), 3);
    }

    #[test]
    fn nak_for_bytes_that_are_not_a_message() {
        let of = Acknowledged::unparsed(b"MSH|^~\\&|A|B|C|D|1||ADT^A04|XYZ|P|2.5\rgarbage");
        assert_eq!(of.control_id(), "XYZ");
        let of = Acknowledged::unparsed(b"\x00\x01binary");
        assert_eq!(of.control_id(), "");
    }
}
