use std::fmt;

use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} {reason}")]
pub struct IdError {
    pub what: &'static str,
    pub reason: &'static str,
}

fn err(what: &'static str, reason: &'static str) -> IdError {
    IdError { what, reason }
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

string_id!(
    /// A Cognito user name (`cognito:username`): 1–128 printable characters, no whitespace or
    /// control characters.
    UserName
);

impl UserName {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "user name";
        if s.is_empty() {
            return Err(err(WHAT, "is empty"));
        }
        if s.chars().count() > 128 {
            return Err(err(WHAT, "is longer than 128 characters"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err(WHAT, "contains whitespace or control characters"));
        }
        Ok(Self(s.to_string()))
    }
}

string_id!(
    /// A Cognito user's `sub`: immutable and never reused, unlike the user name, which Cognito
    /// frees when a user is deleted. Every record is bound to it. 1–128 ASCII letters, digits
    /// and dashes (Cognito issues UUIDs).
    UserId
);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "user id (sub)";
        if s.is_empty() {
            return Err(err(WHAT, "is empty"));
        }
        if s.len() > 128 {
            return Err(err(WHAT, "is longer than 128 characters"));
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(err(WHAT, "has characters other than letters, digits and dashes"));
        }
        Ok(Self(s.to_string()))
    }
}

/// A user: the immutable id every record is keyed on, and the current name, which the user
/// directory's admin calls take and the pages show.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: UserName,
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.id)
    }
}

string_id!(
    /// A Stripe Checkout Session id: `cs_` followed by letters, digits and underscores.
    SessionId
);

impl SessionId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "checkout session id";
        if !s.starts_with("cs_") || s.len() <= 3 {
            return Err(err(WHAT, "must start with cs_"));
        }
        if s.len() > 255 {
            return Err(err(WHAT, "is longer than 255 characters"));
        }
        if !s.chars().all(is_token_char) {
            return Err(err(WHAT, "may contain only letters, digits and underscores"));
        }
        Ok(Self(s.to_string()))
    }
}

string_id!(
    /// A Stripe customer id (`cus_…`).
    CustomerId
);

impl CustomerId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "Stripe customer id";
        if !s.starts_with("cus_") || s.len() <= 4 || s.len() > 255 || !s.chars().all(is_token_char) {
            return Err(err(WHAT, "must look like cus_…"));
        }
        Ok(Self(s.to_string()))
    }
}

string_id!(
    /// A Stripe subscription id (`sub_…`).
    SubscriptionId
);

impl SubscriptionId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "Stripe subscription id";
        if !s.starts_with("sub_") || s.len() <= 4 || s.len() > 255 || !s.chars().all(is_token_char) {
            return Err(err(WHAT, "must look like sub_…"));
        }
        Ok(Self(s.to_string()))
    }
}

string_id!(
    /// A Stripe price lookup key: 1–200 characters of letters, digits, `_`, `-` and `.`.
    LookupKey
);

impl LookupKey {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "lookup key";
        if s.is_empty() {
            return Err(err(WHAT, "is empty"));
        }
        if s.len() > 200 {
            return Err(err(WHAT, "is longer than 200 characters"));
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(err(WHAT, "may contain only letters, digits, '_', '-' and '.'"));
        }
        Ok(Self(s.to_string()))
    }
}

/// The random one-time key put in the success URL and checked on the way back (uuid v4).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OneTimeKey(Uuid);

impl OneTimeKey {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }

    /// Accepts only the hyphenated lowercase or uppercase form of a version-4 uuid.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "one-time key";
        if s.len() != 36 {
            return Err(err(WHAT, "must be a uuid"));
        }
        let u = Uuid::try_parse(s).map_err(|_| err(WHAT, "must be a uuid"))?;
        if u.get_version_num() != 4 {
            return Err(err(WHAT, "must be a version-4 uuid"));
        }
        Ok(Self(u))
    }

    /// Compares in constant time, so the answer's timing says nothing about how much matched.
    pub fn ct_eq(&self, other: &OneTimeKey) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl fmt::Display for OneTimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl serde::Serialize for OneTimeKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for OneTimeKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Redacted: a one-time key is a bearer secret until it is used.
impl fmt::Debug for OneTimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_reject_blank_control_and_overlong_input() {
        assert!(UserName::parse("alice").is_ok());
        assert!(UserName::parse("a3f0c2d1-77aa-4b2e-9c1d-0a9e4f1b2c3d").is_ok());
        for bad in ["", "a b", "tab\there", "nul\0", &"x".repeat(129)] {
            assert!(UserName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn session_ids_must_be_stripe_shaped() {
        assert!(SessionId::parse("cs_test_a1B2c3").is_ok());
        for bad in ["", "cs_", "pi_123", "cs_test/../x", "cs_te st", "cs_%00"] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn one_time_keys_accept_only_v4_uuids_and_compare_exactly() {
        let k = OneTimeKey::new_random();
        let parsed = OneTimeKey::parse(&k.to_string()).unwrap();
        assert!(k.ct_eq(&parsed));
        assert!(!k.ct_eq(&OneTimeKey::new_random()));
        assert!(OneTimeKey::parse("not-a-uuid").is_err());
        // version 1 uuid
        assert!(OneTimeKey::parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8").is_err());
        assert_eq!(format!("{k:?}"), "OneTimeKey(…)");
    }

    #[test]
    fn lookup_keys_allow_the_usual_stripe_characters() {
        assert!(LookupKey::parse("FMMailPro").is_ok());
        assert!(LookupKey::parse("pro-monthly.v2_jp").is_ok());
        for bad in ["", "a b", "ümlaut", "x;drop", &"k".repeat(201)] {
            assert!(LookupKey::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
