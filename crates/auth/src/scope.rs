//! SMART App Launch v2 scopes (`system/Observation.rs`, `user/*.cruds`) and their v1 spellings
//! (`user/*.read`, `system/Patient.write`, `.*`).

/// The launch context a scope is granted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeContext {
    /// `patient/`: limited to one patient's compartment. trialbridge has no patient launch,
    /// so such scopes grant nothing.
    Patient,
    /// `user/`: what the signed-in user may see.
    User,
    /// `system/`: a backend service.
    System,
}

/// One FHIR interaction, in SMART's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `c`
    Create,
    /// `r` (read, vread, history of an instance)
    Read,
    /// `u`
    Update,
    /// `d`
    Delete,
    /// `s` (search, type and system history)
    Search,
}

impl Interaction {
    fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

/// A granted resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `patient`, `user` or `system`.
    pub context: ScopeContext,
    /// The resource type, `None` for `*`.
    pub resource_type: Option<String>,
    /// Granted interaction letters, a subset of `cruds`.
    pub permissions: String,
}

impl Scope {
    /// Parses one scope; `None` for scopes that are not resource scopes (`openid`,
    /// `launch`, ...) or are malformed. Search parameters after `?` (v2 granular scopes) are
    /// not supported and make the scope grant nothing.
    pub fn parse(s: &str) -> Option<Scope> {
        let (ctx, rest) = s.split_once('/')?;
        let context = match ctx {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return None,
        };
        let (ty, perms) = rest.split_once('.')?;
        let permissions = match perms {
            "read" => "rs".to_string(),
            "write" => "cud".to_string(),
            "*" => "cruds".to_string(),
            p => {
                // v2: letters in the order c, r, u, d, s, each at most once.
                let mut last = None;
                for ch in p.chars() {
                    let pos = "cruds".find(ch)?;
                    if last.is_some_and(|l| pos <= l) {
                        return None;
                    }
                    last = Some(pos);
                }
                if p.is_empty() {
                    return None;
                }
                p.to_string()
            }
        };
        let resource_type = match ty {
            "*" => None,
            t if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphabetic()) => Some(t.into()),
            _ => return None,
        };
        Some(Scope {
            context,
            resource_type,
            permissions,
        })
    }

    /// Parses a space-separated `scope` claim, keeping the resource scopes.
    pub fn parse_all(s: &str) -> Vec<Scope> {
        s.split_ascii_whitespace()
            .filter_map(Scope::parse)
            .collect()
    }

    /// Whether this scope grants `interaction` on `resource_type`.
    pub fn grants(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.context != ScopeContext::Patient
            && self
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type)
            && self.permissions.contains(interaction.letter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_spellings() {
        let s = Scope::parse("system/Observation.rs").unwrap();
        assert!(s.grants("Observation", Interaction::Read));
        assert!(s.grants("Observation", Interaction::Search));
        assert!(!s.grants("Observation", Interaction::Create));
        assert!(!s.grants("Patient", Interaction::Read));
        let all = Scope::parse("user/*.cruds").unwrap();
        assert!(all.grants("Procedure", Interaction::Delete));
        let v1 = Scope::parse("user/*.write").unwrap();
        assert!(v1.grants("Patient", Interaction::Update));
        assert!(!v1.grants("Patient", Interaction::Read));
        assert!(Scope::parse("system/*.*")
            .unwrap()
            .grants("X", Interaction::Search));
    }

    #[test]
    fn malformed_and_other_scopes_grant_nothing() {
        for s in [
            "openid",
            "launch/patient",
            "user/*.rc",
            "user/*.rr",
            "user/.rs",
            "x/*.rs",
            "user/Obs-1.r",
            "user/*.",
        ] {
            assert_eq!(Scope::parse(s), None, "{s}");
        }
        let p = Scope::parse("patient/*.rs").unwrap();
        assert!(!p.grants("Observation", Interaction::Read));
        assert_eq!(Scope::parse_all("openid user/Patient.r fhirUser").len(), 1);
    }
}
