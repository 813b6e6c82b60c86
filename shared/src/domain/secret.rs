use std::fmt;

/// A secret value: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Stripe Connect destination charges for platforms: the connected account that receives the
/// subscription's payments, and the platform's fee in percent. Off unless configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub destination: String,
    pub application_fee_percent: Option<f64>,
}
