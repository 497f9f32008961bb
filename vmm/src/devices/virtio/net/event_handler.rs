//! The net device's I/O thread: epoll on the tap (frames to receive), the two queue
//! notification eventfds (ioeventfds the guest writes), and the activation kick. The
//! vCPU thread never touches the tap.
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::Net;

const TAP: u64 = 0;
const RX_QUEUE: u64 = 1;
const TX_QUEUE: u64 = 2;
const KICK: u64 = 3;

/// Starts the I/O thread for `net`. `rx_evt`/`tx_evt` are the queue notifications.
pub fn spawn(net: Arc<Mutex<Net>>, rx_evt: EventFd, tx_evt: EventFd) -> io::Result<()> {
    let epoll = Epoll::new()?;
    let (tap_fd, kick) = {
        let n = net.lock().unwrap_or_else(|p| p.into_inner());
        (n.tap().as_raw_fd(), n.kick_evt()?)
    };
    // Edge-triggered on the tap: process_rx reads until EAGAIN, or keeps the frame it
    // could not place and retries when the driver adds receive buffers.
    let add = |fd, events, token| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token));
    add(tap_fd, EventSet::IN | EventSet::EDGE_TRIGGERED, TAP)?;
    add(rx_evt.as_raw_fd(), EventSet::IN, RX_QUEUE)?;
    add(tx_evt.as_raw_fd(), EventSet::IN, TX_QUEUE)?;
    add(kick.as_raw_fd(), EventSet::IN, KICK)?;
    std::thread::Builder::new().name("virtio-net".into()).spawn(move || {
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::log_warn!("virtio-net: epoll failed, network stopped: {e}");
                    return;
                }
            };
            let mut net = net.lock().unwrap_or_else(|p| p.into_inner());
            for event in &events[..n] {
                match event.data() {
                    TAP => net.process_rx(),
                    RX_QUEUE => {
                        let _ = rx_evt.read();
                        net.process_rx();
                    }
                    TX_QUEUE => {
                        let _ = tx_evt.read();
                        net.process_tx();
                    }
                    _ => {
                        let _ = kick.read();
                        net.process_tx();
                        net.process_rx();
                    }
                }
            }
        }
    })?;
    Ok(())
}
