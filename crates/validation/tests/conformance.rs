//! The HL7 validator test cases: how often trialbridge's verdict (any error or none) agrees
//! with the HL7 Java reference validator. The floor only goes up.

use std::path::Path;
use trialbridge_validation::{validate_bytes, Options};

/// Agreements required; raise it when the validator gets better.
const FLOOR: usize = 45;

#[test]
fn agrees_with_the_reference_validator() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/validator-cases");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["test-cases"].as_array().unwrap();
    assert_eq!(cases.len(), 48);
    let mut agree = 0;
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let body = std::fs::read(dir.join("inputs").join(file)).unwrap();
        // A case may set the reference validator's options; the ones trialbridge has apply.
        // Unknown extensions as the Java validator treats them by default (strict).
        let options = Options {
            extensions: trialbridge_validation::ExtensionPolicy::Strict,
            no_html_in_markdown: case["noHtmlInMarkdown"].as_bool().unwrap_or(false),
            extension_domains: case["allowed-extension-domain"]
                .as_str()
                .map(String::from)
                .into_iter()
                .collect(),
            ..Options::default()
        };
        let report = validate_bytes(&body, &options);
        let expected_error = case["expected"]["errors"].as_u64().unwrap() > 0;
        let ours = report.has_errors();
        if ours == expected_error {
            agree += 1;
        } else {
            println!(
                "DISAGREE {} ({}): reference {} error(s) {:?}; trialbridge: {:#?}",
                case["name"],
                file,
                case["expected"]["errors"],
                case["expected"]["issues"].as_array().map(|a| a
                    .iter()
                    .map(|i| i["expression"].clone())
                    .collect::<Vec<_>>()),
                report.errors().collect::<Vec<_>>()
            );
        }
    }
    println!(
        "validator cases: {agree} of {} agree with the HL7 Java validator",
        cases.len()
    );
    assert!(agree >= FLOOR, "{agree} agreements, floor {FLOOR}");
}
