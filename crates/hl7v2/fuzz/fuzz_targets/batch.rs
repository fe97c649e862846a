//! Any bytes as a batch or file: `parse_batches` returns batches of messages or a typed error,
//! never panics; every message it returns parses on its own, and the flat list is the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trialbridge_hl7v2::{parse_batch, parse_batches, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(batches) = parse_batches(data) else {
        return;
    };
    let flat: Vec<String> = batches
        .iter()
        .flatten()
        .map(|m| m.text().to_string())
        .collect();
    for text in &flat {
        assert!(Message::parse(text.as_bytes()).is_ok());
    }
    let again: Vec<String> = parse_batch(data)
        .expect("parse_batch agrees with parse_batches")
        .iter()
        .map(|m| m.text().to_string())
        .collect();
    assert_eq!(flat, again);
});
