//! The VMM's one I/O thread: a single epoll over every device's file descriptors (the
//! tap, virtio queue notifications, the console socket) and the watchdog's timer. With it
//! a 1-vCPU VM runs two threads, the vCPU and this loop, whatever devices it has: at
//! thousands of VMs per host, threads (pid_max) run out before memory does.
use std::io;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// What a handler wants after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Keep,
    /// Stop watching this fd (e.g. its peer is gone for good).
    Remove,
}

type Handler = Box<dyn FnMut(EventSet) -> Next + Send>;

/// Handlers registered before [`EventLoop::spawn`]; each owns what it needs.
pub struct EventLoop {
    epoll: Epoll,
    handlers: Vec<(RawFd, Handler)>,
}

impl EventLoop {
    pub fn new() -> io::Result<EventLoop> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            handlers: Vec::new(),
        })
    }

    /// Calls `handler` whenever `fd` shows `events`. The fd must stay open while the
    /// loop runs (the handler usually owns it).
    pub fn add(
        &mut self,
        fd: RawFd,
        events: EventSet,
        handler: impl FnMut(EventSet) -> Next + Send + 'static,
    ) -> io::Result<()> {
        let token = self.handlers.len() as u64;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
        self.handlers.push((fd, Box::new(handler)));
        Ok(())
    }

    /// Runs the loop on its own thread for the rest of the process. A failed spawn
    /// (EAGAIN: the host is out of threads) is returned, never a panic.
    pub fn spawn(self) -> io::Result<()> {
        self.spawn_filtered(None)
    }

    /// [`EventLoop::spawn`], the thread closing itself in with `filter` before it serves
    /// anything.
    pub fn spawn_filtered(self, filter: Option<seccompiler::BpfProgram>) -> io::Result<()> {
        std::thread::Builder::new().name("event-loop".into()).spawn(move || {
            if let Some(filter) = filter {
                crate::seccomp::apply_or_exit(&filter);
            }
            self.run()
        })?;
        Ok(())
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::log_warn!("event loop: epoll failed, devices stopped: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                let token = event.data() as usize;
                let Some((fd, handler)) = self.handlers.get_mut(token) else {
                    continue;
                };
                if handler(event.event_set()) == Next::Remove {
                    let _ = self.epoll.ctl(ControlOperation::Delete, *fd, EpollEvent::default());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    use std::time::Duration;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn every_registered_fd_reaches_its_own_handler_on_one_thread() {
        let mut el = EventLoop::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut evts = Vec::new();
        for i in 0..3u64 {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mine = evt.try_clone().unwrap();
            let tx = tx.clone();
            el.add(evt.as_raw_fd(), EventSet::IN, move |_| {
                let v = mine.read().unwrap();
                tx.send((i, v, std::thread::current().name().map(String::from)))
                    .unwrap();
                if i == 2 {
                    Next::Remove
                } else {
                    Next::Keep
                }
            })
            .unwrap();
            evts.push(evt);
        }
        el.spawn().unwrap();
        evts[1].write(5).unwrap();
        let (i, v, thread) = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((i, v, thread.as_deref()), (1, 5, Some("event-loop")));
        evts[2].write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap().0, 2);
        // Removed: a second write is not delivered.
        evts[2].write(1).unwrap();
        evts[0].write(7).unwrap();
        let (i, v, _) = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((i, v), (0, 7));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
