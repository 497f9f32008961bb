//! The virtio-net device model (virtio 1.2, 5.1): queue 0 receives, queue 1 transmits.
//!
//! Frames pass between the virtqueues and the tap with their 12-byte virtio-net header
//! untouched (the tap speaks the same header). No offloads are offered, so headers carry
//! no GSO or checksum work. Every chain is checked ([`chain::collect`]); one the device
//! cannot accept puts it into the "needs reset" state and it stops until the driver resets it.
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, VNET_HDR_LEN};
use crate::devices::virtio::chain::{self, Buffer, Direction};
use crate::devices::virtio::persist::QueueSnapshot;
use crate::devices::virtio::{ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemoryMmap;

pub const TYPE_NET: u32 = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Largest frame with its header: 64 KiB of payload, as the tap may hand over.
const MAX_FRAME: usize = 65_562;

pub use contract::mac::MacAddr;

/// Counters, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// The device in a snapshot: its MAC, what the driver accepted, and its own copies of
/// the queues (their positions move on from the transport's). A frame read from the tap
/// but not yet delivered is not kept: the guest sees it lost, as on a real link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSnapshot {
    pub mac: [u8; 6],
    acked_features: u64,
    phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Inactive,
    Active { rx: QueueSnapshot, tx: QueueSnapshot },
    Broken,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 2],
    interrupt: Arc<Interrupt>,
}

enum State {
    Inactive,
    Active(Active),
    /// The driver handed over something invalid; nothing runs until it resets the device.
    Broken,
}

pub struct Net {
    mac: MacAddr,
    tap: Tap,
    acked_features: u64,
    state: State,
    /// Written on activation so the event loop looks at the queues and the tap.
    kick: EventFd,
    rx_frame: Vec<u8>,
    rx_pending: usize,
    tx_frame: Vec<u8>,
    buffers: Vec<Buffer>,
    stats: NetStats,
}

impl Net {
    pub fn new(tap: Tap, mac: MacAddr) -> io::Result<Net> {
        Ok(Net {
            mac,
            tap,
            acked_features: 0,
            state: State::Inactive,
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: 0,
            tx_frame: Vec::with_capacity(MAX_FRAME),
            buffers: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            stats: NetStats::default(),
        })
    }

    pub fn save(&self) -> NetSnapshot {
        NetSnapshot {
            mac: self.mac.0,
            acked_features: self.acked_features,
            phase: match &self.state {
                State::Inactive => Phase::Inactive,
                State::Broken => Phase::Broken,
                State::Active(a) => Phase::Active {
                    rx: QueueSnapshot::save(&a.queues[RX]),
                    tx: QueueSnapshot::save(&a.queues[TX]),
                },
            },
        }
    }

    /// Puts a new device (made with the snapshot's MAC) into the saved state; an active
    /// one looks at its queues and tap at once.
    pub fn restore(
        &mut self,
        state: &NetSnapshot,
        mem: &GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        if state.acked_features & !self.avail_features() != 0 {
            return Err(format!(
                "virtio-net: features {:#x} were never offered",
                state.acked_features
            ));
        }
        self.acked_features = state.acked_features;
        self.state = match &state.phase {
            Phase::Inactive => State::Inactive,
            Phase::Broken => State::Broken,
            Phase::Active { rx, tx } => {
                let rx = rx
                    .restore(QUEUE_SIZE, mem)
                    .map_err(|e| format!("virtio-net receive {e}"))?;
                let tx = tx
                    .restore(QUEUE_SIZE, mem)
                    .map_err(|e| format!("virtio-net transmit {e}"))?;
                let _ = self.kick.write(1);
                State::Active(Active {
                    mem: mem.clone(),
                    queues: [rx, tx],
                    interrupt,
                })
            }
        };
        Ok(())
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn kick_evt(&self) -> io::Result<EventFd> {
        self.kick.try_clone()
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken)
    }

    fn fail(&mut self, queue: &str, err: chain::ChainError) {
        crate::log_warn!("virtio-net: invalid {queue} descriptor chain: {err}; device needs reset");
        if let State::Active(active) = std::mem::replace(&mut self.state, State::Broken) {
            active.interrupt.signal_needs_reset();
        }
    }

    /// Moves frames from the tap into receive buffers until either runs out.
    ///
    /// The driver's receive notifications are only wanted while a frame waits for a
    /// buffer: otherwise the tap drives this, and the used ring's NO_NOTIFY flag spares the
    /// guest an exit for every buffer it gives back (virtio 1.2, 2.7.10).
    pub fn process_rx(&mut self) {
        let mut used_any = false;
        // Whether the avail ring was looked at again after asking for notifications: once
        // is enough (a driver's avail index that runs ahead of what can be popped must not
        // spin this loop).
        let mut rechecked = false;
        loop {
            let State::Active(active) = &mut self.state else { return };
            let mem = active.mem.clone();
            if self.rx_pending == 0 {
                match self.tap.read(&mut self.rx_frame) {
                    Ok(n) if n >= VNET_HDR_LEN => self.rx_pending = n,
                    Ok(_) => continue, // a runt without a header: nothing to deliver
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            crate::log_warn!("virtio-net: tap read failed: {e}");
                        }
                        // Nothing to place: the next frame's arrival brings us back.
                        let _ = active.queues[RX].disable_notification(&mem);
                        break;
                    }
                }
            }
            // A frame is waiting; a buffer for it may not be: then ask for the driver's
            // notification, unless buffers came while asking.
            let Some(head) = active.queues[RX].pop_descriptor_chain(&mem) else {
                match active.queues[RX].enable_notification(&mem) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    Ok(_) => break,
                    Err(_) => return self.fail("receive", chain::ChainError::Ring),
                }
            };
            rechecked = false;
            let index = head.head_index();
            let capacity = match chain::collect(&mem, head, Direction::DeviceWrites, usize::MAX, &mut self.buffers) {
                Ok(c) => c,
                Err(e) => return self.fail("receive", e),
            };
            let frame = &mut self.rx_frame[..self.rx_pending];
            // num_buffers (bytes 10-11 of the v1 header) is 1 without MRG_RXBUF.
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = if capacity >= frame.len() {
                scatter(&mem, &self.buffers, frame)
            } else {
                0
            };
            if written == 0 {
                self.stats.rx_dropped += 1; // buffers too small for this frame: the driver's mistake
            } else {
                self.stats.rx_frames += 1;
            }
            self.rx_pending = 0;
            let State::Active(active) = &mut self.state else { return };
            if active.queues[RX].add_used(&mem, index, written as u32).is_err() {
                return self.fail("receive", chain::ChainError::Ring);
            }
            used_any = true;
        }
        if used_any {
            self.notify(RX);
        }
    }

    /// Sends every frame the driver queued for transmission.
    pub fn process_tx(&mut self) {
        let mut used_any = false;
        loop {
            let State::Active(active) = &mut self.state else { return };
            let mem = active.mem.clone();
            let Some(head) = active.queues[TX].pop_descriptor_chain(&mem) else {
                break;
            };
            let index = head.head_index();
            let len = match chain::collect(&mem, head, Direction::DeviceReads, MAX_FRAME, &mut self.buffers) {
                Ok(len) => len,
                Err(e) => return self.fail("transmit", e),
            };
            gather(&mem, &self.buffers, len, &mut self.tx_frame);
            if len <= VNET_HDR_LEN {
                self.stats.tx_dropped += 1; // a header and no frame
            } else {
                match self.tap.write(&self.tx_frame) {
                    Ok(_) => self.stats.tx_frames += 1,
                    // The tap queue is full or the link is down: dropped, as a NIC would.
                    Err(_) => self.stats.tx_dropped += 1,
                }
            }
            let State::Active(active) = &mut self.state else { return };
            if active.queues[TX].add_used(&mem, index, 0).is_err() {
                return self.fail("transmit", chain::ChainError::Ring);
            }
            used_any = true;
        }
        if used_any {
            self.notify(TX);
        }
    }

    /// Interrupts the driver for new used buffers, unless it asked not to be: without
    /// EVENT_IDX that is the avail ring's NO_INTERRUPT flag (virtio 1.2, 2.7.7.1), which
    /// virtio-queue leaves to the device (Linux sets it while it polls).
    fn notify(&mut self, queue: usize) {
        const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
        if let State::Active(active) = &mut self.state {
            let mem = active.mem.clone();
            let q = &mut active.queues[queue];
            // Also the fence between the used ring's writes and the read of the flag.
            let needed = q.needs_notification(&mem).unwrap_or(true);
            let flags: u16 = mem.read_obj(vm_memory::GuestAddress(q.avail_ring())).unwrap_or(0);
            if needed && flags & VRING_AVAIL_F_NO_INTERRUPT == 0 {
                active.interrupt.signal_used();
            }
        }
    }
}

/// Copies `frame` into `buffers`, returning the bytes written (0 if memory refused).
fn scatter<M: GuestMemory>(mem: &M, buffers: &[Buffer], frame: &[u8]) -> usize {
    let mut done = 0;
    for b in buffers {
        if done == frame.len() {
            break;
        }
        let n = (b.len as usize).min(frame.len() - done);
        if mem.write_slice(&frame[done..done + n], b.addr).is_err() {
            return 0;
        }
        done += n;
    }
    done
}

/// Copies `len` bytes from `buffers` into `out`.
fn gather<M: GuestMemory>(mem: &M, buffers: &[Buffer], len: usize, out: &mut Vec<u8>) {
    out.resize(len, 0);
    let mut done = 0;
    for b in buffers {
        let n = b.len as usize;
        // Ranges were checked by chain::collect; a failure here leaves zeros.
        let _ = mem.read_slice(&mut out[done..done + n], b.addr);
        done += n;
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        data.fill(0);
        let start = (offset as usize).min(config.len());
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [mut rx, tx]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError::Device("virtio-net needs 2 queues".into()))?;
        // Before the driver fills the receive queue, which it does right after this:
        // process_rx asks for notifications once a frame waits for a buffer.
        let _ = rx.disable_notification(&mem);
        self.state = State::Active(Active {
            mem,
            queues: [rx, tx],
            interrupt,
        });
        let _ = self.kick.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.state = State::Inactive;
        self.acked_features = 0;
        self.rx_pending = 0;
    }
}
