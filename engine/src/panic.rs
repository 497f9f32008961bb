//! Panics: a bug, so the process ends at once (systemd restarts the daemon, which adopts
//! every VM) — except inside [`contained`], for third-party code that panics on input it
//! should refuse (the kdl crate's KDL v1 reader does on some malformed files: a file in
//! /etc/unikernels must never take the daemon down).
//!
//! The release profile unwinds so that [`contained`] can catch; the hook installed by
//! [`abort_on_panic`] keeps every other panic an abort, as `panic = "abort"` would.
use std::cell::Cell;

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Makes every panic outside [`contained`] print its message and abort the process.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CONTAINED.with(Cell::get) {
            return;
        }
        default(info);
        std::process::abort();
    }));
}

/// Runs `f`; a panic inside it is an error (its message), not the end of the process.
pub fn contained<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let was = CONTAINED.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(f);
    CONTAINED.with(|c| c.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_contained_panic_is_an_error_and_the_flag_is_restored() {
        let r: Result<(), String> = super::contained(|| panic!("kdl v1 slice out of range"));
        assert_eq!(r.unwrap_err(), "kdl v1 slice out of range");
        assert_eq!(super::contained(|| 7), Ok(7));
        assert!(!super::CONTAINED.with(std::cell::Cell::get));
    }
}
