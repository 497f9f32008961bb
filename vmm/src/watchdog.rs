//! A guest that halts with interrupts off can never run again, but KVM keeps its vCPU
//! blocked in the kernel, and the VMM would wait forever. The watchdog (a timer on the event
//! loop) kicks the boot vCPU out of KVM_RUN with a signal once per period so its loop can look (see
//! `Vcpu::run`). The first kick comes after a second (a guest that dies while booting is
//! reported at once), then the period doubles up to [`MAX_PERIOD`]: each kick costs a VM
//! exit and re-entry (~0.17 ms of CPU on a nested host), which a thousand idle VMs would
//! otherwise pay every second.
use std::time::Duration;

use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};
use vmm_sys_util::timerfd::TimerFd;

use crate::event_loop::{EventLoop, Next};

/// When the boot vCPU is first looked at.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The longest wait between two looks. Each look also sends the console feed's heartbeat
/// (the supervisor's proof that the event loop runs), so this is the feed's promise.
pub const MAX_PERIOD: Duration = contract::console::FEED_HEARTBEAT_EVERY;

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

/// Kicks the calling thread (the boot vCPU's) from the event loop's timer: after
/// [`PERIOD`], then at doubling intervals up to [`MAX_PERIOD`]; `on_look` runs at each.
pub fn watch_current_thread(events: &mut EventLoop, mut on_look: impl FnMut() + Send + 'static) -> std::io::Result<()> {
    // SAFETY: pthread_self has no preconditions.
    let target = unsafe { libc::pthread_self() };
    let mut timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let mut period = PERIOD;
    timer
        .reset(period, None)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let fd = timer.as_raw_fd();
    events.add(fd, EventSet::IN, move |_| {
        let _ = timer.wait();
        // SAFETY: the target is the boot vCPU thread, which lives until the process exits.
        unsafe { libc::pthread_kill(target, kick_signal()) };
        on_look();
        period = (period * 2).min(MAX_PERIOD);
        if let Err(e) = timer.reset(period, None) {
            crate::log_warn!("watchdog timer: {e}; halted guests are no longer noticed");
            return Next::Remove;
        }
        Next::Keep
    })
}
