//! Every core R4 invariant's expression (from the generated model) parses, and names only
//! functions the engine has or says it does not offer.

use trialbridge_fhir::structure::INVARIANTS;
use trialbridge_fhirpath::Expression;

#[test]
fn every_core_invariant_parses() {
    let mut failed = Vec::new();
    for inv in INVARIANTS {
        if let Err(e) = Expression::parse(inv.expression) {
            failed.push(format!("{}: {e} in {}", inv.key, inv.expression));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {}:\n{}",
        failed.len(),
        INVARIANTS.len(),
        failed.join("\n")
    );
}
