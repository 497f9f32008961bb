//! How the VMM ends: its exit status, and the one line on stderr that says why.

/// The VMM's exit statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The guest shut down or reset (i8042 0xFE, port 0x604, a KVM shutdown event).
    Stopped = 0,
    /// The guest died: a triple fault, a KVM internal error, an entry failure.
    GuestDied = 1,
    /// The command line was wrong (clap's own status).
    Usage = 2,
    /// Refused before the guest ran: a bad image, a size that does not fit, no /dev/kvm,
    /// no thread to run it on.
    Refused = 3,
    /// The VM was saved to a snapshot (a `snapshot exit` control request) and stopped.
    Saved = 4,
    /// The host ran out of threads, memory or file descriptors before the guest ran:
    /// nothing is wrong with the VM; try again when there is room.
    NoResources = 5,
    /// A VMM thread made a system call its seccomp filter forbids: a VMM bug, or a VMM a
    /// guest took over. The process ends at once; the error line names the call.
    BadSyscall = 6,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: i32) -> Option<ExitStatus> {
        Some(match code {
            0 => ExitStatus::Stopped,
            1 => ExitStatus::GuestDied,
            2 => ExitStatus::Usage,
            3 => ExitStatus::Refused,
            4 => ExitStatus::Saved,
            5 => ExitStatus::NoResources,
            6 => ExitStatus::BadSyscall,
            _ => return None,
        })
    }

    /// What it means, in words for a status line.
    pub fn meaning(self) -> &'static str {
        match self {
            ExitStatus::Stopped => "the guest stopped",
            ExitStatus::GuestDied => "the guest died",
            ExitStatus::Usage => "bad VMM command line",
            ExitStatus::Refused => "refused before start",
            ExitStatus::Saved => "saved to a snapshot and stopped",
            ExitStatus::NoResources => "the host is out of threads, memory or file descriptors",
            ExitStatus::BadSyscall => "a system call its seccomp filter forbids",
        }
    }
}

/// What starts the VMM's error line on stderr.
pub const ERROR_PREFIX: &str = "unikernel-vmm: error: ";
/// What starts a warning line.
pub const WARNING_PREFIX: &str = "unikernel-vmm: warning: ";
/// With `--trace-boot`, the line printed as the guest is entered: where the VMM's own
/// start went, phase by phase (the daemon logs it with the service's start).
pub const STARTED_PREFIX: &str = "unikernel-vmm: boot trace: started ";
/// With `--trace-boot`, the line printed as the guest ends its first console line, before
/// the line goes to the console feed: "<ms> ms" from the VMM's start. Beside the started
/// line it tells a slow guest from a slow receiver.
pub const FIRST_LINE_PREFIX: &str = "unikernel-vmm: boot trace: first line at ";

/// The line the VMM prints when it stops with an error.
pub fn error_line(message: &dyn std::fmt::Display) -> String {
    format!("{ERROR_PREFIX}{message}")
}

/// The last error line in what the VMM wrote to stderr, without its prefix.
pub fn last_error(stderr: &str) -> Option<&str> {
    stderr.lines().rev().find_map(|l| l.strip_prefix(ERROR_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_the_error_line_is_found_again() {
        for s in [
            ExitStatus::Stopped,
            ExitStatus::GuestDied,
            ExitStatus::Usage,
            ExitStatus::Refused,
            ExitStatus::Saved,
            ExitStatus::NoResources,
            ExitStatus::BadSyscall,
        ] {
            assert_eq!(ExitStatus::from_code(i32::from(s.code())), Some(s));
        }
        assert_eq!(ExitStatus::from_code(9), None);
        let log = format!(
            "{WARNING_PREFIX}x\n{}\n{}\ntrailing\n",
            error_line(&"first"),
            error_line(&"triple fault at rip 0x1000")
        );
        assert_eq!(last_error(&log), Some("triple fault at rip 0x1000"));
        assert_eq!(last_error("nothing here\n"), None);
    }
}
