//! The 19 real-shaped messages of the FHIR-Converter fixtures parse (LF line ends, BOMs,
//! versions 2.3 to 2.8), and arbitrary bytes never make the parser or the framer panic.

use proptest::prelude::*;
use std::path::Path;
use trialbridge_hl7v2::mllp::{frame, FrameEvent, Framer};
use trialbridge_hl7v2::{parse_batch, Message};

fn messages() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir-converter/messages");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_reference_message_parses() {
    let all = messages();
    assert_eq!(all.len(), 19);
    for (name, bytes) in &all {
        let m = Message::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (ty, trigger, _) = m.message_type();
        assert!(matches!(ty.as_str(), "ADT" | "ORU"), "{name}: {ty}");
        assert!(!trigger.is_empty(), "{name}");
        assert!(!m.control_id().is_empty(), "{name}");
        assert!(m.version().starts_with("2."), "{name}");
        assert!(m.segment("PID").is_some(), "{name}");
        // Through an MLLP frame, split into small reads, the same message comes back.
        let mut framer = Framer::new(1 << 20);
        let mut events = Vec::new();
        for chunk in frame(bytes).chunks(7) {
            events.extend(framer.push(chunk));
        }
        assert_eq!(events, [FrameEvent::Frame(bytes.clone())], "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Message::parse(&bytes);
        let _ = parse_batch(&bytes);
        let mut f = Framer::new(64);
        let _ = f.push(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(i in 0usize..19, cuts in proptest::collection::vec((0usize..4000, any::<u8>()), 1..6)) {
        let all = messages();
        let mut bytes = all[i].1.clone();
        for (pos, b) in cuts {
            if bytes.is_empty() { break; }
            let p = pos % bytes.len();
            if b % 3 == 0 { bytes.truncate(p); } else { bytes[p] = b; }
        }
        if let Ok(m) = Message::parse(&bytes) {
            for s in m.segments() {
                for n in 0..30 {
                    let f = s.field(n);
                    let _ = f.value();
                    let _ = f.component(2);
                    let _ = f.component_part(4).subcomponent(2);
                    let _ = f.repetitions().count();
                }
            }
        }
    }
}
