//! Where a short piece of the daemon's work spent its time, step by step: for the log
//! lines that say what a start cost (and a slow one, where it went).
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Steps {
    at: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Steps {
    pub fn new() -> Steps {
        Steps {
            at: Instant::now(),
            took: Vec::with_capacity(8),
        }
    }

    /// `step` ended now (it began where the last one ended).
    pub fn done(&mut self, step: &'static str) {
        let now = Instant::now();
        self.took.push((step, now - self.at));
        self.at = now;
    }

    /// What follows until the next step is not one of them (it is timed elsewhere).
    pub fn skip(&mut self) {
        self.at = Instant::now();
    }

    pub fn total(&self) -> Duration {
        self.took.iter().map(|(_, d)| *d).sum()
    }
}

impl Default for Steps {
    fn default() -> Self {
        Steps::new()
    }
}

/// "tap 0.12 ms, index 0.01 ms": each step's name and time, in order.
impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, d)) in self.took.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{step} {:.2} ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// CPU time the calling thread has used: what a piece of work cost the daemon itself,
/// without the time it waited or was preempted (a VMM woken by a hand-off may take the
/// daemon's CPU at once on a small host).
pub fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_told_in_order_and_add_up() {
        let mut s = Steps::new();
        std::thread::sleep(Duration::from_millis(2));
        s.done("first");
        s.done("second");
        std::thread::sleep(Duration::from_millis(5));
        s.skip();
        let text = s.to_string();
        assert!(
            s.total() < Duration::from_millis(5) + Duration::from_millis(4),
            "{text}"
        );
        assert!(text.starts_with("first "), "{text}");
        assert!(text.contains(" ms, second "), "{text}");
        assert!(s.total() >= Duration::from_millis(2));
        assert_eq!(Steps::new().to_string(), "");
    }

    #[test]
    fn thread_cpu_counts_work_and_not_sleep() {
        let before = thread_cpu();
        std::thread::sleep(Duration::from_millis(20));
        let slept = thread_cpu() - before;
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_cpu() - before - slept;
        assert!(slept < Duration::from_millis(10), "{slept:?}");
        assert!(worked >= Duration::from_millis(5), "{worked:?}");
    }
}
