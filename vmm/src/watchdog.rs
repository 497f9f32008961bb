//! A guest that halts with interrupts off can never run again, but KVM keeps its vCPU
//! blocked in the kernel, and the VMM would wait forever. The watchdog kicks the boot vCPU
//! out of KVM_RUN with a signal once per period so its loop can look (see
//! `Vcpu::run`). The first kick comes after a second (a guest that dies while booting is
//! reported at once), then the period doubles up to [`MAX_PERIOD`]: each kick costs a VM
//! exit and re-entry (~0.17 ms of CPU on a nested host), which a thousand idle VMs would
//! otherwise pay every second.
use std::time::Duration;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// When the boot vCPU is first looked at.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The longest wait between two looks.
pub const MAX_PERIOD: Duration = Duration::from_secs(16);

/// The signal that interrupts KVM_RUN. Real-time, so it never collides with job control.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being delivered is what makes KVM_RUN return EINTR.
}

/// Installs the (empty) handler; without one the signal would kill the process.
pub fn install() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), on_kick).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Starts kicking the calling thread (the boot vCPU's): after [`PERIOD`], then at
/// doubling intervals up to [`MAX_PERIOD`].
pub fn start_for_current_thread() -> std::io::Result<()> {
    // SAFETY: pthread_self has no preconditions.
    let target = unsafe { libc::pthread_self() } as usize;
    std::thread::Builder::new().name("watchdog".into()).spawn(move || {
        let mut period = PERIOD;
        loop {
            std::thread::sleep(period);
            // SAFETY: the target is the boot vCPU thread, which lives until the process exits.
            unsafe { libc::pthread_kill(target as libc::pthread_t, kick_signal()) };
            period = (period * 2).min(MAX_PERIOD);
        }
    })?;
    Ok(())
}
