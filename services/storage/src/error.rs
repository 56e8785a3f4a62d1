//! The one error type of the storage layer. Protocols map each variant to a reply:
//! `Unavailable` to a temporary failure (SMTP 451, IMAP `NO [UNAVAILABLE]`), `NotFound` and
//! `Conflict` to the matching permanent answer, `QuotaExceeded` to 452/552.

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("quota exceeded for {0}")]
    QuotaExceeded(String),
    /// The backend cannot be reached or failed in a way a retry may cure.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data is not what it must be (a checksum mismatch, an unreadable row).
    #[error("storage corruption: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(e.to_string()),
            _ => StoreError::Unavailable(format!("I/O: {e}")),
        }
    }
}
