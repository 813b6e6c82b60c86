//! Plain types: identifiers parsed at the edge, records, plans and the one error enum.

mod catalog;
mod error;
mod ids;
mod records;
mod secret;

pub use catalog::{Catalog, CatalogError, Metered, Quota, QuotaPeriod, Throttle, Tier, TierName, DEFAULT_METER_EVENT};
pub use error::{BackendError, Error};
pub use ids::{CustomerId, IdError, LookupKey, OneTimeKey, SessionId, SubscriptionId, User, UserId, UserName};
pub use records::{
    AccountRecord, CheckoutRecord, CheckoutStatus, Comp, IssuedKey, KeyWork, Plan, QuotaTarget, RotationAnswer,
    SpendCap, Suspension, UserProfile,
};
pub use secret::{Connect, Secret};
