//! Drift repair, run by every resync: what the host shows is compared with what the
//! controller set up, and the difference is repaired. A tap deleted behind the daemon's
//! back leaves its VMM with a dead fd: that VM is restarted on a new tap. A tap that is
//! down or lost its route is wired again in place. A host port that could not be bound
//! (taken by someone else) is tried again.
use tracing::warn;

use super::host::{Drift, HostNet, Launcher};
use super::Controller;
use crate::status::State;

impl<L: Launcher, N: HostNet> Controller<L, N> {
    pub(super) async fn repair(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in &names {
            self.sync_listeners(name);
        }
        let drift = match self.net.drift().await {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot check the host network: {e}");
                return;
            }
        };
        for (name, drift) in drift {
            let Some(svc) = self.services.get_mut(&name) else {
                continue;
            };
            match drift {
                Drift::TapGone => {
                    if svc.vm.is_none() || svc.state == State::Stopping {
                        continue;
                    }
                    warn!(UNIKERNEL = %name, "its tap was deleted behind the daemon's back: restarting the VM on a new one");
                    svc.last_error = Some("tap deleted behind the daemon's back; VM restarted".into());
                    svc.restarts += 1;
                    self.stop_vm(&name);
                }
                Drift::Unwired => {
                    warn!(UNIKERNEL = %name, "its tap was down or lost its route: wiring it again");
                    if let Err(e) = self.net.rewire(&name).await {
                        warn!(UNIKERNEL = %name, "cannot wire its tap again: {e}");
                    }
                }
            }
        }
    }
}
