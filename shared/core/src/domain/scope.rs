//! Scopes: the management scopes this IdP checks, and the free-form scopes agents request.

use std::collections::BTreeSet;
use std::fmt;

pub const AGENTS_READ: &str = "agents:read";
pub const AGENTS_WRITE: &str = "agents:write";
pub const AUDIT_READ: &str = "audit:read";
pub const RESOURCES_READ: &str = "resources:read";
pub const RESOURCES_WRITE: &str = "resources:write";

/// The scopes that open this IdP's own management API.
pub const MANAGEMENT_SCOPES: [&str; 5] = [
    AGENTS_READ,
    AGENTS_WRITE,
    AUDIT_READ,
    RESOURCES_READ,
    RESOURCES_WRITE,
];

/// The management scopes there were before resources: an agent holding all of them is a full
/// admin of its organization, which the migration to the resource scopes looks for.
pub const FULL_ADMIN_SCOPES_BEFORE_RESOURCES: [&str; 3] = [AGENTS_READ, AGENTS_WRITE, AUDIT_READ];

/// What a management endpoint requires of the caller's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    AgentsRead,
    AgentsWrite,
    AuditRead,
    ResourcesRead,
    ResourcesWrite,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::AgentsRead,
        Scope::AgentsWrite,
        Scope::AuditRead,
        Scope::ResourcesRead,
        Scope::ResourcesWrite,
    ];

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AgentsRead => AGENTS_READ,
            Scope::AgentsWrite => AGENTS_WRITE,
            Scope::AuditRead => AUDIT_READ,
            Scope::ResourcesRead => RESOURCES_READ,
            Scope::ResourcesWrite => RESOURCES_WRITE,
        }
    }
}

/// A set of scope tokens (RFC 6749 §3.3), kept sorted so the wire form is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    pub fn parse(space_separated: &str) -> Self {
        Self(
            space_separated
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn from_list<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Self {
        Self(items.into_iter().map(Into::into).collect())
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }

    /// `agents:write` implies `agents:read`, and `resources:write` implies `resources:read`.
    pub fn permits(&self, required: Scope) -> bool {
        match required {
            Scope::AgentsRead => self.contains(AGENTS_READ) || self.contains(AGENTS_WRITE),
            Scope::ResourcesRead => self.contains(RESOURCES_READ) || self.contains(RESOURCES_WRITE),
            Scope::AgentsWrite | Scope::AuditRead | Scope::ResourcesWrite => {
                self.contains(required.as_str())
            }
        }
    }

    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The management scopes in `self` that `holder` lacks: a caller can never grant these.
    /// Holding `agents:write` permits granting `agents:read`, as it permits reading.
    pub fn management_scopes_beyond(&self, holder: &ScopeSet) -> Vec<String> {
        self.0
            .iter()
            .filter(|s| Scope::parse(s).is_some_and(|scope| !holder.permits(scope)))
            .cloned()
            .collect()
    }

    /// The scopes in both sets.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.intersection(&other.0).cloned().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined: Vec<&str> = self.0.iter().map(String::as_str).collect();
        f.write_str(&joined.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_write_implies_agents_read_but_not_audit() {
        let set = ScopeSet::parse("agents:write");
        assert!(set.permits(Scope::AgentsRead));
        assert!(set.permits(Scope::AgentsWrite));
        assert!(!set.permits(Scope::AuditRead));
    }

    #[test]
    fn resources_write_implies_resources_read_and_nothing_else() {
        let set = ScopeSet::parse("resources:write");
        assert!(set.permits(Scope::ResourcesRead));
        assert!(set.permits(Scope::ResourcesWrite));
        for other in [Scope::AgentsRead, Scope::AgentsWrite, Scope::AuditRead] {
            assert!(!set.permits(other), "{other:?}");
        }
        let reader = ScopeSet::parse("resources:read");
        assert!(reader.permits(Scope::ResourcesRead));
        assert!(!reader.permits(Scope::ResourcesWrite));
    }

    #[test]
    fn every_management_scope_parses_to_itself() {
        assert_eq!(Scope::ALL.len(), MANAGEMENT_SCOPES.len());
        for (scope, text) in Scope::ALL.into_iter().zip(MANAGEMENT_SCOPES) {
            assert_eq!(scope.as_str(), text);
            assert_eq!(Scope::parse(text), Some(scope));
        }
    }

    #[test]
    fn agents_read_does_not_permit_writes() {
        let set = ScopeSet::parse("agents:read");
        assert!(set.permits(Scope::AgentsRead));
        assert!(!set.permits(Scope::AgentsWrite));
    }

    #[test]
    fn management_scopes_the_holder_lacks_are_reported() {
        let wanted = ScopeSet::parse("agents:write audit:read weather:read");
        let holder = ScopeSet::parse("agents:write");
        assert_eq!(
            wanted.management_scopes_beyond(&holder),
            vec!["audit:read".to_owned()]
        );
    }

    #[test]
    fn agents_write_may_grant_agents_read() {
        let wanted = ScopeSet::parse("agents:read");
        assert!(
            wanted
                .management_scopes_beyond(&ScopeSet::parse("agents:write"))
                .is_empty()
        );
        assert_eq!(
            wanted.management_scopes_beyond(&ScopeSet::parse("audit:read")),
            vec!["agents:read".to_owned()]
        );
    }

    #[test]
    fn parsing_ignores_repeated_spaces_and_sorts() {
        assert_eq!(ScopeSet::parse("b  a ").to_string(), "a b");
    }
}
