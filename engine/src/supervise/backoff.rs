//! What to do when a VM ends on its own: the restart policy, exponential back-off, and
//! the point where a crash loop becomes `failed` (systemd's StartLimitBurst, in effect).
use std::time::Duration;

use super::process::Ended;
use crate::decl::RestartPolicy;

/// First delay; doubles with each quick failure in a row.
pub const BASE_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A VM that ran at least this long before ending starts the count afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Quick endings in a row that make a service `failed`.
pub const BURST: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this delay.
    Restart(Duration),
    /// Leave it stopped: it ended cleanly and the policy does not restart clean exits.
    Stopped,
    /// Give up: the policy says never after a failure, or it crash-looped.
    Failed,
}

/// `quick_failures` counts the VM's short-lived endings in a row and is updated here.
pub fn decide(policy: RestartPolicy, ended: Ended, ran: Duration, quick_failures: &mut u32) -> Decision {
    let clean = ended.is_clean();
    match policy {
        RestartPolicy::Never => return if clean { Decision::Stopped } else { Decision::Failed },
        RestartPolicy::OnFailure if clean => return Decision::Stopped,
        _ => {}
    }
    if ran >= STABLE_AFTER {
        *quick_failures = 0;
    }
    *quick_failures += 1;
    if *quick_failures > BURST {
        return Decision::Failed;
    }
    let delay = BASE_DELAY.saturating_mul(1 << (*quick_failures - 1).min(16));
    Decision::Restart(delay.min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(5);

    #[test]
    fn back_off_doubles_then_fails() {
        let mut n = 0;
        let delays: Vec<Decision> = (0..BURST + 1)
            .map(|_| decide(RestartPolicy::Always, Ended::Exited(1), QUICK, &mut n))
            .collect();
        assert_eq!(delays[0], Decision::Restart(Duration::from_millis(100)));
        assert_eq!(delays[1], Decision::Restart(Duration::from_millis(200)));
        assert_eq!(delays[4], Decision::Restart(Duration::from_millis(1600)));
        assert_eq!(delays[5], Decision::Failed);
    }

    #[test]
    fn a_long_run_forgives_earlier_failures() {
        let mut n = 4;
        assert_eq!(
            decide(RestartPolicy::Always, Ended::Exited(1), STABLE_AFTER, &mut n),
            Decision::Restart(BASE_DELAY)
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn policies() {
        let mut n = 0;
        assert_eq!(
            decide(RestartPolicy::Never, Ended::Exited(0), QUICK, &mut n),
            Decision::Stopped
        );
        assert_eq!(
            decide(RestartPolicy::Never, Ended::Exited(1), QUICK, &mut n),
            Decision::Failed
        );
        assert_eq!(
            decide(RestartPolicy::OnFailure, Ended::Exited(0), QUICK, &mut n),
            Decision::Stopped
        );
        assert!(matches!(
            decide(RestartPolicy::OnFailure, Ended::Signaled(9), QUICK, &mut n),
            Decision::Restart(_)
        ));
        assert!(matches!(
            decide(RestartPolicy::Always, Ended::Exited(0), QUICK, &mut n),
            Decision::Restart(_)
        ));
        // An adopted VM's status is unknown: treated as a failure, not a clean stop.
        assert!(matches!(
            decide(RestartPolicy::OnFailure, Ended::Unknown, QUICK, &mut n),
            Decision::Restart(_)
        ));
    }
}
