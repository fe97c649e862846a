//! Any bytes: `Message::parse` returns a message or a typed error, never panics or loops; a
//! parsed message can be walked to its last subcomponent and answered with an ACK.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trialbridge_hl7v2::ack::{build, AckCode, AckError, Acknowledged};
use trialbridge_hl7v2::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else {
        return;
    };
    for seg in m.segments() {
        for n in 0..=seg.len() + 1 {
            let f = seg.field(n);
            let _ = f.is_null();
            for rep in f.repetitions() {
                for c in rep.components() {
                    let _ = c.value();
                    let _ = c.subcomponent(1);
                    let _ = c.subcomponent(2);
                }
            }
        }
    }
    let ack = build(
        &Acknowledged::of(&m),
        AckCode::AE,
        &[AckError::message("207", "fuzz")],
        "A1",
        "20260101",
    );
    // What the gateway answers is itself a message it can read.
    assert!(Message::parse(ack.as_bytes()).is_ok(), "{ack:?}");
});
