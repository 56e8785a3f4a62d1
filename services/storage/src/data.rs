//! Small keyed records that belong to an account or to the installation: Sieve scripts,
//! the vacation responder's memory of whom it answered, a user's spam-classifier model,
//! the DMARC and TLS-RPT report records waiting for the daily report.
//!
//! Why one generic table instead of one per feature: each of these is a handful of rows
//! per account, read and written whole, and none needs a query beyond "this key" and
//! "every key of this kind". One shape keeps every backend (SQLite, ScyllaDB) small and
//! one conformance suite covers them all. A record carries a version so that
//! read-modify-write users (the classifier's counts, two front-ends training at once)
//! can compare and set instead of losing an update, and an optional expiry so that
//! short-lived memory (vacation: "answered this sender in the last N days") cleans up
//! after itself.

use crate::AccountId;

/// Whose record it is. Account records go when the account is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataScope {
    /// Records of the whole installation (report records); stored under account id 0,
    /// which no account has.
    Global,
    Account(AccountId),
}

impl DataScope {
    /// The number the backends store the scope as.
    pub fn code(self) -> i64 {
        match self {
            DataScope::Global => 0,
            DataScope::Account(a) => a.0,
        }
    }
}

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datum {
    pub value: Vec<u8>,
    /// 1 for a new record, one more at each write.
    pub version: u64,
    /// Unix seconds after which the record reads as absent.
    pub expires_at: Option<i64>,
}

/// The condition a write is made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there.
    Any,
    /// Only when there is no (unexpired) record.
    Absent,
    /// Only when the record is at this version.
    Version(u64),
}

/// The largest value a record may hold: a Sieve script is at most 64 KiB, a classifier
/// model is capped by its owner well below this.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// Checks the names of a record: short, printable, never empty.
pub fn validate(kind: &str, key: &str, value_len: usize) -> crate::StoreResult<()> {
    let ok =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.chars().any(|c| c.is_control());
    if !ok(kind, 64) {
        return Err(crate::StoreError::Invalid(format!("record kind {kind:?}")));
    }
    if !ok(key, 512) {
        return Err(crate::StoreError::Invalid(format!("record key {key:?}")));
    }
    if value_len > MAX_VALUE_BYTES {
        return Err(crate::StoreError::Invalid(format!(
            "record {kind}/{key}: {value_len} bytes, more than {MAX_VALUE_BYTES}"
        )));
    }
    Ok(())
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Read-modify-write of one record under compare-and-set: `f` gets the current value
/// (`None` when absent) and returns the new one; a concurrent writer's win makes it run
/// again on what that writer left, so no update is lost. Gives up after a few lost races
/// (`Unavailable`).
pub async fn update<F>(
    meta: &dyn crate::MetadataStore,
    scope: DataScope,
    kind: &str,
    key: &str,
    expires_at: Option<i64>,
    mut f: F,
) -> crate::StoreResult<u64>
where
    F: FnMut(Option<&[u8]>) -> Vec<u8> + Send,
{
    for _ in 0..16 {
        let current = meta.get_data(scope, kind, key).await?;
        let expect = match &current {
            Some(d) => Expect::Version(d.version),
            None => Expect::Absent,
        };
        let value = f(current.as_ref().map(|d| d.value.as_slice()));
        match meta
            .put_data(scope, kind, key, value, expires_at, expect)
            .await
        {
            Ok(v) => return Ok(v),
            Err(crate::StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(crate::StoreError::Unavailable(format!(
        "record {kind}/{key}: too many concurrent updates"
    )))
}
