use crate::{Error, Result};

/// Who is making a change: decides which marked objects it may touch and the mark it
/// leaves on what it creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The admin CLI (and anything else acting for an administrator): leaves no mark and
    /// may change only unmarked objects.
    Admin,
    /// The operator, for one custom resource: marks what it creates or adopts with
    /// `operator:<namespace>/<name>`.
    Operator { namespace: String, name: String },
}

impl Actor {
    pub fn operator(namespace: &str, name: &str) -> Self {
        Actor::Operator {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The mark this actor leaves on what it owns.
    pub fn mark(&self) -> Option<String> {
        match self {
            Actor::Admin => None,
            Actor::Operator { namespace, name } => Some(format!("operator:{namespace}/{name}")),
        }
    }

    /// Refuses when `what` is marked by another owner. An unmarked object may be changed by
    /// anyone: the operator adopts an account the CLI made when a resource names it.
    pub fn check(&self, what: &str, managed_by: Option<&str>) -> Result<()> {
        match managed_by {
            None => Ok(()),
            Some(owner) if Some(owner) == self.mark().as_deref() => Ok(()),
            Some(owner) => Err(Error::Managed {
                what: what.to_string(),
                owner: owner.to_string(),
            }),
        }
    }
}

impl Actor {
    /// Whether the actor may add accounts and aliases *in* a domain marked `managed_by`:
    /// the admin CLI only in unmarked domains; any operator resource in a domain managed by
    /// the operator (a `User` lives in a `Domain` that is another resource).
    pub fn check_within(&self, what: &str, managed_by: Option<&str>) -> Result<()> {
        match (self, managed_by) {
            (Actor::Operator { .. }, Some(owner)) if owner.starts_with("operator:") => Ok(()),
            _ => self.check(what, managed_by),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_checks() {
        let op = Actor::operator("mail", "alice");
        assert_eq!(op.mark().as_deref(), Some("operator:mail/alice"));
        assert_eq!(Actor::Admin.mark(), None);
        assert!(op.check("x", None).is_ok());
        assert!(op.check("x", Some("operator:mail/alice")).is_ok());
        assert!(Actor::Admin.check("x", None).is_ok());
        let e = Actor::Admin
            .check("user a@b.c", Some("operator:mail/alice"))
            .expect_err("managed");
        assert!(e.to_string().contains("operator:mail/alice"), "{e}");
        assert!(op.check("x", Some("operator:mail/bob")).is_err());
    }
}
