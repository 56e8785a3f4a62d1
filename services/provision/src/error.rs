use mailfleet_core::credentials::PasswordError;
use mailfleet_storage::StoreError;

pub type Result<T> = std::result::Result<T, Error>;

/// Why a provisioning call did nothing. The messages are written for the person who made
/// the call (an administrator at the CLI, or the `Degraded` condition of a resource).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input itself is wrong; retrying will not help until it is changed.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The object belongs to another owner (the operator's mark).
    #[error("{what} is managed by {owner}; change it there (the admin CLI refuses to change it)")]
    Managed { what: String, owner: String },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dkim(#[from] mailfleet_delivery::dkim::DkimError),
}

impl Error {
    /// A short fixed label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) | Error::Password(_) => "invalid",
            Error::Managed { .. } => "managed",
            Error::NotFound(_) => "not_found",
            Error::Exists(_) => "exists",
            Error::Store(StoreError::Unavailable(_)) => "store_unavailable",
            Error::Store(_) => "store",
            Error::Dkim(_) => "dkim",
        }
    }

    /// True when the same call may succeed later without any change of input (a store
    /// outage); false when a person must change something first.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Store(StoreError::Unavailable(_))
                | Error::Dkim(mailfleet_delivery::dkim::DkimError::Store(
                    StoreError::Unavailable(_)
                ))
        )
    }
}
