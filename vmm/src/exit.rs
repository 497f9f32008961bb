//! Why a VM stops, and how a device asks for it.
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// A clean end the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// i8042 reset line, or KVM_SYSTEM_EVENT_RESET.
    Reset = 1,
    /// Port 0x604 SLP_EN, or KVM_SYSTEM_EVENT_SHUTDOWN.
    PowerOff = 2,
}

/// Shared between devices (which request) and vCPU loops (which check after each exit).
#[derive(Clone, Default)]
pub struct ExitRequest(Arc<AtomicU8>);

impl ExitRequest {
    pub fn request(&self, reason: StopReason) {
        // The first request wins.
        let _ = self
            .0
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn get(&self) -> Option<StopReason> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(StopReason::Reset),
            2 => Some(StopReason::PowerOff),
            _ => None,
        }
    }
}

/// How a guest died. Each message says what happened and where.
#[derive(Debug, thiserror::Error)]
pub enum GuestFault {
    #[error(
        "guest triple-faulted (KVM_EXIT_SHUTDOWN) at rip {rip:#x}: the guest hit an exception it could not handle"
    )]
    TripleFault { rip: u64 },
    #[error(
        "KVM internal error at rip {rip:#x}, suberror {suberror} ({meaning}){data}; \
         note: this host's KVM cannot emulate some instructions (SSE/AVX/XSAVE) in guests — build the guest without them"
    )]
    InternalError {
        rip: u64,
        suberror: u32,
        meaning: &'static str,
        data: String,
    },
    #[error("KVM could not enter the guest (hardware entry failure reason {reason:#x}) at rip {rip:#x}")]
    FailEntry { reason: u64, rip: u64 },
    #[error("guest halted with interrupts disabled at rip {rip:#x}: it can never run again")]
    HaltedForever { rip: u64 },
    #[error("guest reported a crash (KVM_SYSTEM_EVENT_CRASH)")]
    Crash,
    #[error("guest stopped on an unexpected exit: {0}")]
    Unexpected(String),
}

/// The meaning of `kvm_run.internal.suberror`.
pub fn internal_error_meaning(suberror: u32) -> &'static str {
    match suberror {
        1 => "instruction emulation failed",
        2 => "exception while emulating an exception",
        3 => "exception during event delivery",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}
