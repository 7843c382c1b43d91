//! OAuth scopes (RFC 6749 §3.3): a set of scope tokens, serialised space-separated.

use std::collections::BTreeSet;
use std::fmt;

use crate::ids::ValidationError;

/// A sorted set of scope tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    /// Parses a space-separated scope string; each token must use the RFC 6749 scope-token
    /// characters (`%x21 / %x23-5B / %x5D-7E`).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let mut set = BTreeSet::new();
        for token in raw.split(' ') {
            if token.is_empty() {
                continue;
            }
            Self::check_token(token)?;
            set.insert(token.to_owned());
        }
        Ok(Self(set))
    }

    pub fn from_tokens<I, S>(tokens: I) -> Result<Self, ValidationError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for token in tokens {
            let token = token.as_ref();
            Self::check_token(token)?;
            set.insert(token.to_owned());
        }
        Ok(Self(set))
    }

    fn check_token(token: &str) -> Result<(), ValidationError> {
        let ok = !token.is_empty()
            && token.len() <= 128
            && token.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if ok {
            Ok(())
        } else {
            Err(ValidationError { what: "scope", reason: format!("{token:?} is not a valid scope token") })
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, token: &str) -> bool {
        self.0.contains(token)
    }

    pub fn intersection(&self, other: &Self) -> Self {
        Self(self.0.intersection(&other.0).cloned().collect())
    }

    /// Tokens of `self` that `allowed` does not contain.
    pub fn not_in<'a>(&'a self, allowed: &'a Self) -> impl Iterator<Item = &'a str> {
        self.0.difference(&allowed.0).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for token in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(token)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sorts_and_dedupes() {
        let s = ScopeSet::parse("write read  read").expect("valid");
        assert_eq!(s.to_string(), "read write");
    }

    #[test]
    fn rejects_characters_outside_scope_token() {
        assert!(ScopeSet::parse("read \"x\"").is_err());
        assert!(ScopeSet::parse("a\\b").is_err());
        assert!(ScopeSet::parse("caf\u{e9}").is_err());
    }

    #[test]
    fn intersection_and_difference() {
        let a = ScopeSet::parse("a b c").expect("valid");
        let b = ScopeSet::parse("b c d").expect("valid");
        assert_eq!(a.intersection(&b).to_string(), "b c");
        assert_eq!(a.not_in(&b).collect::<Vec<_>>(), vec!["a"]);
    }
}
