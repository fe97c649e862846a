//! The R4 element model the validator walks: every data type, resource and backbone element
//! with its elements, cardinalities, bindings and invariants, generated from the official
//! StructureDefinitions (`codegen/structure.py`).

use std::collections::HashMap;
use std::sync::OnceLock;

pub use crate::generated::profiles::{CORE_EXTENSIONS, VITAL_SIGNS_PROFILES};
pub use crate::generated::structure::{INVARIANTS, TYPES};
pub use crate::generated::value_sets::VALUE_SETS;

/// What kind of type a [`TypeDef`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// A primitive (`string`, `date`, ...): a JSON scalar plus an optional `_name` element.
    Primitive,
    /// A complex data type (`CodeableConcept`, `Quantity`, ...).
    Complex,
    /// A concrete resource type.
    Resource,
    /// `Resource` and `DomainResource`: never instantiated.
    Abstract,
    /// A backbone element, named by its path (`Observation.component`).
    Backbone,
}

/// One type of the model.
#[derive(Debug)]
pub struct TypeDef {
    /// Type name, or the path of a backbone element.
    pub name: &'static str,
    /// Kind of type.
    pub kind: TypeKind,
    /// Invariants declared on the type itself (besides `ele-1`).
    pub invariants: &'static [&'static Invariant],
    /// Elements sorted by JSON name; a choice element appears once per allowed type.
    pub elements: &'static [ElementDef],
}

/// One element of a type, under one JSON name.
#[derive(Debug)]
pub struct ElementDef {
    /// JSON member name (`valueQuantity` for the Quantity branch of `value[x]`).
    pub name: &'static str,
    /// For a choice branch, the base name (`value`); empty otherwise.
    pub choice: &'static str,
    /// Minimum cardinality.
    pub min: u32,
    /// Whether the element repeats (JSON array).
    pub many: bool,
    /// Whether the element is prohibited (max 0).
    pub prohibited: bool,
    /// The element's type.
    pub ty: TypeRef,
    /// A required or extensible binding with an expansion, if any.
    pub binding: Option<Binding>,
    /// Invariants declared on this element (not those of its type).
    pub invariants: &'static [&'static Invariant],
}

/// An element's type: a type name and, for references, the allowed target types.
#[derive(Debug)]
pub struct TypeRef {
    /// Type name (`Quantity`, `string`, `Observation.component`, `Resource`).
    pub name: &'static str,
    /// For `Reference`/`canonical`: allowed target resource types (`Resource` means any).
    pub targets: &'static [&'static str],
}

/// Binding strength that the validator enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingStrength {
    /// A code must come from the value set.
    Required,
    /// A code should come from the value set if one fits.
    Extensible,
}

/// A coded element's binding.
#[derive(Debug)]
pub struct Binding {
    /// How strictly the value set applies.
    pub strength: BindingStrength,
    /// The value set's expansion.
    pub value_set: &'static ValueSetDef,
}

/// A value-set expansion.
#[derive(Debug)]
pub struct ValueSetDef {
    /// Canonical URL.
    pub url: &'static str,
    /// Included codes per code system, sorted by system.
    pub includes: &'static [ValueSetInclude],
}

/// The codes of one code system in a value set.
#[derive(Debug)]
pub struct ValueSetInclude {
    /// Code system URL.
    pub system: &'static str,
    /// Sorted codes; `None` when every code of the system is included (e.g. BCP-47).
    pub codes: Option<&'static [&'static str]>,
}

/// A core invariant (StructureDefinition constraint).
#[derive(Debug)]
pub struct Invariant {
    /// Constraint key (`obs-6`).
    pub key: &'static str,
    /// Whether a violation is an error (else a warning).
    pub error: bool,
    /// Human description.
    pub human: &'static str,
    /// The FHIRPath expression of the specification.
    pub expression: &'static str,
}

/// An extension defined by the R4 core specification.
#[derive(Debug)]
pub struct CoreExtension {
    /// Canonical URL.
    pub url: &'static str,
    /// Types its `value[x]` may have; empty for a complex extension.
    pub value_types: &'static [&'static str],
    /// The element contexts it may be used in (`HumanName.family`, `Patient`, `Element`);
    /// `None` when the definition states its context otherwise (not checked).
    pub contexts: Option<&'static [&'static str]>,
}

/// The core extension with URL `url`.
pub fn core_extension(url: &str) -> Option<&'static CoreExtension> {
    CORE_EXTENSIONS
        .binary_search_by(|e| e.url.cmp(url))
        .ok()
        .map(|i| &CORE_EXTENSIONS[i])
}

/// A core vital-signs profile as its differential fixes it.
#[derive(Debug)]
pub struct VitalSignsProfile {
    /// Canonical URL.
    pub url: &'static str,
    /// Profile name.
    pub name: &'static str,
    /// The LOINC code `Observation.code` must carry (none for the base profile).
    pub loinc: Option<&'static str>,
    /// UCUM codes allowed for `valueQuantity.code`.
    pub units: &'static [&'static str],
    /// Whether `valueQuantity` is prohibited (panels such as blood pressure).
    pub value_prohibited: bool,
    /// Component slices that must be present.
    pub components: &'static [VitalSignsComponent],
}

/// A required component slice of a vital-signs profile.
#[derive(Debug)]
pub struct VitalSignsComponent {
    /// LOINC code of `component.code`.
    pub code: &'static str,
    /// UCUM codes allowed for its `valueQuantity.code` (empty: any vital-signs unit).
    pub units: &'static [&'static str],
}

/// The type whose elements a type has: a profile of Quantity (SimpleQuantity, MoneyQuantity)
/// has Quantity's.
pub fn model_name(ty: &str) -> &str {
    match ty {
        "SimpleQuantity" | "MoneyQuantity" => "Quantity",
        t => t,
    }
}

/// How a choice element's JSON name ends for a value of type `ty`: the type code with its
/// first letter capitalised (`valueString`, `valueCodeableConcept`); Quantity's profiles are
/// `...Quantity`.
pub fn json_type_suffix(ty: &str) -> String {
    let ty = model_name(ty);
    let mut c = ty.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// SNOMED CT body temperature, which the HL7 Java validator also takes as the body
/// temperature vital sign (R4 names the LOINC codes only; this one is in its examples).
const SNOMED_BODY_TEMPERATURE: (&str, &str) = ("http://snomed.info/sct", "276885007");

impl VitalSignsProfile {
    /// Whether a coding `(system, code)` makes an Observation this vital sign: the profile's
    /// LOINC code, or SNOMED CT body temperature for the body temperature profile.
    pub fn is_code(&self, system: &str, code: &str) -> bool {
        match self.loinc {
            Some(l) if system == "http://loinc.org" && code == l => true,
            Some("8310-5") => (system, code) == SNOMED_BODY_TEMPERATURE,
            _ => false,
        }
    }
}

/// The type named `name`. A hash look-up: validation and FHIRPath ask this for every
/// element they visit, and a binary search over a thousand names was a third of validation.
pub fn type_def(name: &str) -> Option<&'static TypeDef> {
    type Index = HashMap<&'static str, &'static TypeDef, foldhash::fast::FixedState>;
    static BY_NAME: OnceLock<Index> = OnceLock::new();
    BY_NAME
        .get_or_init(|| TYPES.iter().map(|t| (t.name, t)).collect())
        .get(name)
        .copied()
}

impl TypeDef {
    /// The element with JSON name `name`.
    pub fn element(&self, name: &str) -> Option<&'static ElementDef> {
        self.elements
            .binary_search_by(|e| e.name.cmp(name))
            .ok()
            .map(|i| &self.elements[i])
    }
}

impl ValueSetDef {
    /// Whether `code` of `system` (or of any system when `system` is `None`) is in the set.
    pub fn contains(&self, system: Option<&str>, code: &str) -> bool {
        let hit = |inc: &ValueSetInclude| match inc.codes {
            None => true,
            Some(codes) => codes.binary_search(&code).is_ok(),
        };
        match system {
            Some(s) => self
                .includes
                .binary_search_by(|i| i.system.cmp(s))
                .map(|i| hit(&self.includes[i]))
                .unwrap_or(false),
            None => self.includes.iter().any(hit),
        }
    }

    /// Whether the set draws codes from `system`.
    pub fn has_system(&self, system: &str) -> bool {
        self.includes
            .binary_search_by(|i| i.system.cmp(system))
            .is_ok()
    }
}

/// The invariant with key `key`.
pub fn invariant(key: &str) -> Option<&'static Invariant> {
    INVARIANTS
        .binary_search_by(|i| i.key.cmp(key))
        .ok()
        .map(|i| &INVARIANTS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(TYPES.windows(2).all(|w| w[0].name < w[1].name));
        for t in TYPES {
            assert!(
                t.elements.windows(2).all(|w| w[0].name < w[1].name),
                "{}",
                t.name
            );
        }
        for vs in VALUE_SETS {
            assert!(vs.includes.windows(2).all(|w| w[0].system < w[1].system));
            for inc in vs.includes {
                if let Some(c) = inc.codes {
                    assert!(c.windows(2).all(|w| w[0] < w[1]), "{}", vs.url);
                }
            }
        }
        assert!(INVARIANTS.windows(2).all(|w| w[0].key < w[1].key));
        assert!(CORE_EXTENSIONS.windows(2).all(|w| w[0].url < w[1].url));
    }

    /// R4's JSON names a choice branch after the element's type code: a branch typed with a
    /// profile of Quantity (SimpleQuantity, MoneyQuantity) is `...Quantity`
    /// (`Dosage.doseAndRate.doseQuantity`), its rules those of the profile.
    #[test]
    fn every_choice_branch_is_named_by_its_json_type() {
        let mut quantity_profiles = Vec::new();
        for t in TYPES {
            for e in t.elements.iter().filter(|e| !e.choice.is_empty()) {
                let suffix = &e.name[e.choice.len()..];
                if model_name(e.ty.name) != e.ty.name {
                    quantity_profiles.push(format!("{}.{}", t.name, e.name));
                }
                assert_eq!(suffix, json_type_suffix(e.ty.name), "{}.{}", t.name, e.name);
                assert!(
                    type_def(model_name(e.ty.name)).is_some(),
                    "{}: {}",
                    e.name,
                    e.ty.name
                );
            }
        }
        quantity_profiles.sort();
        assert_eq!(
            quantity_profiles,
            [
                "Coverage.costToBeneficiary.valueQuantity",
                "Dosage.doseAndRate.doseQuantity",
                "Dosage.doseAndRate.rateQuantity",
                "MedicationAdministration.dosage.rateQuantity",
                "MedicationKnowledge.administrationGuidelines.patientCharacteristics.characteristicQuantity",
                "MedicationKnowledge.drugCharacteristic.valueQuantity",
                "NutritionOrder.enteralFormula.administration.rateQuantity",
                "SpecimenDefinition.typeTested.container.minimumVolumeQuantity",
            ]
        );
    }

    #[test]
    fn observation_model_matches_the_specification() {
        let obs = type_def("Observation").unwrap();
        assert_eq!(obs.kind, TypeKind::Resource);
        let status = obs.element("status").unwrap();
        assert_eq!((status.min, status.many), (1, false));
        let b = status.binding.as_ref().unwrap();
        assert_eq!(b.strength, BindingStrength::Required);
        assert!(b.value_set.contains(None, "final"));
        assert!(!b.value_set.contains(None, "done"));
        assert_eq!(obs.element("valueQuantity").unwrap().choice, "value");
        assert!(obs.element("value").is_none());
        let performer = obs.element("performer").unwrap();
        assert!(performer.ty.targets.contains(&"Practitioner"));
        assert!(!performer.ty.targets.contains(&"Encounter"));
        assert!(obs.invariants.iter().any(|i| i.key == "obs-6"));
        assert_eq!(
            obs.element("component").unwrap().ty.name,
            "Observation.component"
        );
        assert!(type_def("Observation.component").is_some());
    }
}
