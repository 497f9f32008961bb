//! The net device's events on the VMM's event loop: the tap (frames to receive), the two
//! queue notification eventfds (ioeventfds the guest writes), and the activation kick.
//! The vCPU thread never touches the tap.
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::Net;
use crate::event_loop::{EventLoop, Next};

fn lock(net: &Mutex<Net>) -> MutexGuard<'_, Net> {
    net.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers `net`'s fds with the loop. `rx_evt`/`tx_evt` are the queue notifications.
pub fn register(events: &mut EventLoop, net: Arc<Mutex<Net>>, rx_evt: EventFd, tx_evt: EventFd) -> io::Result<()> {
    let (tap_fd, kick) = {
        let n = lock(&net);
        (n.tap().as_raw_fd(), n.kick_evt()?)
    };
    // Edge-triggered on the tap: process_rx reads until EAGAIN, or keeps the frame it
    // could not place and retries when the driver adds receive buffers.
    let n = net.clone();
    events.add(tap_fd, EventSet::IN | EventSet::EDGE_TRIGGERED, move |_| {
        lock(&n).process_rx();
        Next::Keep
    })?;
    // A queue notification: consume it, then do that queue's work.
    let queue = |events: &mut EventLoop, evt: EventFd, work: fn(&mut Net)| {
        let n = net.clone();
        events.add(evt.as_raw_fd(), EventSet::IN, move |_| {
            let _ = evt.read();
            work(&mut lock(&n));
            Next::Keep
        })
    };
    queue(events, rx_evt, Net::process_rx)?;
    queue(events, tx_evt, Net::process_tx)?;
    events.add(kick.as_raw_fd(), EventSet::IN, move |_| {
        let _ = kick.read();
        let mut net = lock(&net);
        net.process_tx();
        net.process_rx();
        Next::Keep
    })?;
    Ok(())
}
