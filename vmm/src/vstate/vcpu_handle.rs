//! Pausing and resuming a running vCPU from another thread, as snapshots need: the
//! request goes over a channel, and a kick (the watchdog's signal) makes KVM_RUN return
//! so the vCPU thread looks at its channel. A paused vCPU blocks on the channel, outside
//! KVM_RUN, until it is resumed: it costs no CPU, and its state can be read (a save
//! request, answered by the vCPU thread itself, which owns the vCPU fd).
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::vcpu_state::VcpuState;

/// What a vCPU thread is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEvent {
    Pause,
    Resume,
    /// Read the paused vCPU's state; carries the MSR indices to save.
    Save(Arc<[u32]>),
}

/// What it answers, once done.
#[derive(Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    Saved(Result<Box<VcpuState>, String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("vCPU {0} is gone (its thread ended)")]
    Gone(u8),
    #[error("vCPU {0} did not answer within {1:?}")]
    Timeout(u8, Duration),
    #[error("vCPU {0} is not paused")]
    NotPaused(u8),
    #[error("{0}")]
    Save(String),
}

/// How long a pause may take before it is an error: a kick lands within microseconds
/// unless the vCPU thread is not running at all.
const PAUSE_LIMIT: Duration = Duration::from_secs(1);
/// A kick that arrived while the vCPU thread was outside KVM_RUN is not seen by KVM
/// (the next entry blocks as usual): kick again this often until it answers.
const KICK_EVERY: Duration = Duration::from_millis(5);

/// The controlling side, held by whoever pauses (the VMM's event loop, later).
pub struct VcpuHandle {
    id: u8,
    thread: Arc<OnceLock<libc::pthread_t>>,
    events: Sender<VcpuEvent>,
    responses: Receiver<VcpuResponse>,
}

/// The vCPU thread's side.
pub struct Control {
    thread: Arc<OnceLock<libc::pthread_t>>,
    events: Receiver<VcpuEvent>,
    responses: Sender<VcpuResponse>,
}

/// A connected pair for vCPU `id`.
pub fn pair(id: u8) -> (VcpuHandle, Control) {
    let thread = Arc::new(OnceLock::new());
    let (events_tx, events_rx) = mpsc::channel();
    let (responses_tx, responses_rx) = mpsc::channel();
    (
        VcpuHandle {
            id,
            thread: thread.clone(),
            events: events_tx,
            responses: responses_rx,
        },
        Control {
            thread,
            events: events_rx,
            responses: responses_tx,
        },
    )
}

impl VcpuHandle {
    pub fn id(&self) -> u8 {
        self.id
    }

    fn kick(&self) {
        if let Some(thread) = self.thread.get() {
            // SAFETY: the thread registered itself and lives as long as its vCPU loop;
            // the kick signal has a handler (crate::watchdog::install), so it interrupts
            // KVM_RUN and nothing else.
            unsafe { libc::pthread_kill(*thread, crate::watchdog::kick_signal()) };
        }
    }

    /// Stops the vCPU outside KVM_RUN; returns once it is.
    pub fn pause(&self) -> Result<(), Error> {
        self.events.send(VcpuEvent::Pause).map_err(|_| Error::Gone(self.id))?;
        let mut waited = Duration::ZERO;
        while waited < PAUSE_LIMIT {
            self.kick();
            match self.responses.recv_timeout(KICK_EVERY) {
                Ok(VcpuResponse::Paused) => return Ok(()),
                Ok(VcpuResponse::Resumed | VcpuResponse::Saved(_)) => {}
                Err(RecvTimeoutError::Timeout) => waited += KICK_EVERY,
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Gone(self.id)),
            }
        }
        Err(Error::Timeout(self.id, PAUSE_LIMIT))
    }

    /// The state of a paused vCPU, read on its own thread.
    pub fn save(&self, msr_indices: Arc<[u32]>) -> Result<VcpuState, Error> {
        self.events
            .send(VcpuEvent::Save(msr_indices))
            .map_err(|_| Error::Gone(self.id))?;
        match self.responses.recv_timeout(PAUSE_LIMIT) {
            Ok(VcpuResponse::Saved(Ok(state))) => Ok(*state),
            Ok(VcpuResponse::Saved(Err(e))) => Err(Error::Save(e)),
            Ok(_) => Err(Error::NotPaused(self.id)),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout(self.id, PAUSE_LIMIT)),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Gone(self.id)),
        }
    }

    /// Lets a paused vCPU run again; returns once it does.
    pub fn resume(&self) -> Result<(), Error> {
        self.events.send(VcpuEvent::Resume).map_err(|_| Error::Gone(self.id))?;
        match self.responses.recv_timeout(PAUSE_LIMIT) {
            Ok(_) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout(self.id, PAUSE_LIMIT)),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Gone(self.id)),
        }
    }
}

impl Control {
    /// Called once on the vCPU's own thread, before it first enters the guest.
    pub fn register_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let _ = self.thread.set(unsafe { libc::pthread_self() });
    }

    /// Serves what was asked since the last look (after a kick), and says whether there
    /// was anything. A pause blocks here until the matching resume, answering save
    /// requests with `save`; a gone handle means nobody will ever resume: go on.
    pub fn serve(&self, save: &dyn Fn(&[u32]) -> Result<VcpuState, String>) -> bool {
        let mut served = false;
        while let Ok(event) = self.events.try_recv() {
            served = true;
            match event {
                VcpuEvent::Pause => {
                    let _ = self.responses.send(VcpuResponse::Paused);
                    loop {
                        match self.events.recv() {
                            Ok(VcpuEvent::Resume) | Err(_) => break,
                            Ok(VcpuEvent::Pause) => {
                                let _ = self.responses.send(VcpuResponse::Paused);
                            }
                            Ok(VcpuEvent::Save(msrs)) => {
                                let _ = self.responses.send(VcpuResponse::Saved(save(&msrs).map(Box::new)));
                            }
                        }
                    }
                    let _ = self.responses.send(VcpuResponse::Resumed);
                }
                // Resume while running: answer so the caller does not wait.
                VcpuEvent::Resume => {
                    let _ = self.responses.send(VcpuResponse::Resumed);
                }
                // Only a paused vCPU's state is consistent.
                VcpuEvent::Save(_) => {
                    let _ = self
                        .responses
                        .send(VcpuResponse::Saved(Err("the vCPU is running, pause it first".into())));
                }
            }
        }
        served
    }
}
