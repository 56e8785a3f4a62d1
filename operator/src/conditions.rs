//! Status conditions: `Ready`, `Reconciling` and `Degraded`, each with the generation it
//! describes. A condition's `lastTransitionTime` moves only when its status changes, so a
//! reconcile that finds nothing new produces an identical status and writes nothing.

use crate::crd::Condition;

/// The outcome of one reconcile, as conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything in the spec is in the store.
    Ready,
    /// The spec could not be applied: `reason` is a short CamelCase word, `message` for
    /// the person reading `kubectl describe`.
    Degraded { reason: String, message: String },
}

/// The conditions after `outcome`, keeping the transition times of `previous` where a
/// condition's status did not change.
pub fn next(
    previous: &[Condition],
    outcome: &Outcome,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let (ready, degraded, reason, message) = match outcome {
        Outcome::Ready => (
            "True",
            "False",
            "Reconciled".to_string(),
            "the store matches the spec".to_string(),
        ),
        Outcome::Degraded { reason, message } => ("False", "True", reason.clone(), message.clone()),
    };
    let make = |type_: &str, status: &str| {
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.clone(),
            message: message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    vec![
        make("Ready", ready),
        make("Reconciling", "False"),
        make("Degraded", degraded),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_move_only_with_the_status() {
        let first = next(&[], &Outcome::Ready, Some(1), "t1");
        assert!(first.iter().all(|c| c.last_transition_time == "t1"));
        let same = next(&first, &Outcome::Ready, Some(1), "t2");
        assert_eq!(same, first, "nothing changed, nothing to write");
        let bad = Outcome::Degraded {
            reason: "StoreUnavailable".into(),
            message: "down".into(),
        };
        let degraded = next(&same, &bad, Some(2), "t3");
        let ready = degraded.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.as_str()),
            ("False", "t3")
        );
        let reconciling = degraded
            .iter()
            .find(|c| c.type_ == "Reconciling")
            .expect("r");
        assert_eq!(reconciling.last_transition_time, "t1");
        assert!(degraded.iter().all(|c| c.observed_generation == Some(2)));
    }
}
