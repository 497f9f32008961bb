//! One computation for many callers: while a result is being computed, later callers
//! wait for that same result instead of starting another. What bounds `Plan()`, a full
//! re-parse of the config directory that any local user may ask for: a hundred callers
//! at once cost one parse, not a hundred threads parsing.
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub struct SingleFlight<T> {
    waiting: Arc<Mutex<Option<Vec<oneshot::Sender<T>>>>>,
}

impl<T> Clone for SingleFlight<T> {
    fn clone(&self) -> Self {
        SingleFlight {
            waiting: self.waiting.clone(),
        }
    }
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            waiting: Arc::new(Mutex::new(None)),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Adds a caller. `true`: nothing is in flight, so this caller must compute and then
    /// call [`SingleFlight::finish`]; `false`: it gets the result of the one in flight.
    pub fn join(&self, tx: oneshot::Sender<T>) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match waiting.as_mut() {
            Some(list) => {
                list.push(tx);
                false
            }
            None => {
                *waiting = Some(vec![tx]);
                true
            }
        }
    }

    /// Hands `value` to every caller that joined since the computation began.
    pub fn finish(&self, value: T) {
        let list = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).take();
        for tx in list.into_iter().flatten() {
            let _ = tx.send(value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_callers_one_computation() {
        let sf = SingleFlight::<u32>::default();
        let mut receivers = Vec::new();
        let mut computing = 0;
        for _ in 0..8 {
            let (tx, rx) = oneshot::channel();
            if sf.join(tx) {
                computing += 1;
            }
            receivers.push(rx);
        }
        assert_eq!(computing, 1);
        sf.finish(42);
        for rx in receivers {
            assert_eq!(rx.await.unwrap(), 42);
        }
        // The next caller starts a new computation.
        let (tx, rx) = oneshot::channel();
        assert!(sf.join(tx));
        sf.finish(7);
        assert_eq!(rx.await.unwrap(), 7);
    }
}
