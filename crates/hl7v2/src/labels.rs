//! Field names for people reading a raw message: every non-empty field of every segment with
//! its position (`PID-3`) and its name from the HL7 v2 segment definitions ("Patient
//! Identifier List"). The integrator console shows a message this way beside what it became.

use crate::Message;

mod names {
    include!("field_names.rs");
}

/// The name of field `n` (1-based) of segment `segment`, if an HL7 v2 version defines it.
/// Z-segments and unknown segments have no names.
pub fn field_name(segment: &str, n: usize) -> Option<&'static str> {
    let i = names::FIELD_NAMES
        .binary_search_by(|(s, _)| (*s).cmp(segment))
        .ok()?;
    let name = *names::FIELD_NAMES[i].1.get(n.checked_sub(1)?)?;
    (!name.is_empty()).then_some(name)
}

/// One field as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledField {
    /// `PID-3`.
    pub position: String,
    /// "Patient Identifier List", when the segment is a standard one.
    pub name: Option<&'static str>,
    /// The field as sent (escapes unresolved: what the sender wrote).
    pub value: String,
}

/// One segment with its non-empty fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledSegment {
    /// `PID`.
    pub id: String,
    /// 1 for the first segment of the message.
    pub number: usize,
    /// The non-empty fields in order.
    pub fields: Vec<LabelledField>,
}

/// Every segment of `message` with its non-empty fields labelled.
pub fn labelled(message: &Message) -> Vec<LabelledSegment> {
    message
        .segments()
        .enumerate()
        .map(|(i, segment)| {
            let id = segment.id().to_string();
            let fields = (1..=segment.len())
                .filter_map(|n| {
                    let raw = segment.field(n).raw();
                    (!raw.is_empty()).then(|| LabelledField {
                        position: format!("{id}-{n}"),
                        name: field_name(&id, n),
                        value: raw.to_string(),
                    })
                })
                .collect();
            LabelledSegment {
                id,
                number: i + 1,
                fields,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_are_sorted_for_lookup() {
        assert!(names::FIELD_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn positions_are_named_as_the_standard_names_them() {
        assert_eq!(field_name("PID", 3), Some("Patient Identifier List"));
        assert_eq!(field_name("MSH", 9), Some("Message Type"));
        assert_eq!(field_name("MSH", 10), Some("Message Control ID"));
        assert_eq!(field_name("OBX", 5), Some("Observation Value"));
        // A field added after 2.5.1 and one withdrawn later are both named.
        assert_eq!(field_name("OBX", 29), Some("Observation Type"));
        assert_eq!(field_name("PID", 28), Some("Nationality"));
        // 2.5.1's reserved OBX-20 takes the later standard's name, not a copy of OBX-23.
        assert_eq!(field_name("OBX", 20), Some("Observation Site"));
        assert_eq!(field_name("ZXY", 1), None);
        assert_eq!(field_name("PID", 0), None);
        assert_eq!(field_name("PID", 400), None);
    }

    #[test]
    fn a_message_is_labelled_field_by_field() {
        let m = Message::parse(
            b"MSH|^~\\&|LAB|KH|TB|MC|20260301||ORU^R01|C1|P|2.5.1\rPID|1||4711^^^KH^MR||Doe^Jane\rZXT|a\r",
        )
        .unwrap();
        let l = labelled(&m);
        assert_eq!(l.len(), 3);
        let msh9 = l[0].fields.iter().find(|f| f.position == "MSH-9").unwrap();
        assert_eq!(
            (msh9.name, msh9.value.as_str()),
            (Some("Message Type"), "ORU^R01")
        );
        assert_eq!(l[0].fields[0].position, "MSH-1");
        assert_eq!(l[0].fields[0].value, "|");
        let pid: Vec<_> = l[1].fields.iter().map(|f| f.position.as_str()).collect();
        assert_eq!(
            pid,
            ["PID-1", "PID-3", "PID-5"],
            "empty fields are left out"
        );
        assert_eq!(l[1].fields[1].value, "4711^^^KH^MR");
        assert_eq!(l[2].fields[0].name, None);
        assert_eq!(l[2].number, 3);
    }
}
