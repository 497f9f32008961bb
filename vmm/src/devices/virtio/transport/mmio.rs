//! virtio-mmio, version 2 ("modern"), as in the virtio 1.2 spec, section 4.2.2.
//!
//! The transport owns the register file and the queue configuration until the driver sets
//! DRIVER_OK; then it hands validated queues to the device. Every value the guest writes
//! is checked here: queue sizes (power of two, at most the maximum), queue addresses
//! (alignment, inside guest memory when activated), feature bits (a subset of what the
//! device offers, VERSION_1 required), status transitions.
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::persist::QueueSnapshot;
use crate::devices::virtio::{status, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use crate::vstate::memory::GuestMemoryMmap;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x554b_4e4c; // "UKNL"

/// Size of each device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify, where ioeventfds are attached.
pub const NOTIFY_OFFSET: u64 = 0x50;
const CONFIG_OFFSET: u64 = 0x100;

/// The transport's registers in a snapshot (the device behind it saves its own state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioSnapshot {
    status: u32,
    features_sel: u32,
    acked_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
    queues: Vec<QueueSnapshot>,
    interrupt_status: u32,
    needs_reset: bool,
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    /// One eventfd per queue, written when a notify reaches us instead of an ioeventfd.
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    status: u32,
    features_sel: u32,
    acked_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
    warned: bool,
    /// Un-offered feature bits were acknowledged (and dropped) once already.
    masked_warned: bool,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            .map(
                #[allow(clippy::expect_used, reason = "device maximums are constant powers of two")]
                |&max| Queue::new(max).expect("device queue maximum is a power of two"),
            )
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queue_evts,
            queues,
            status: 0,
            features_sel: 0,
            acked_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
            warned: false,
            masked_warned: false,
        }
    }

    pub fn save(&self) -> MmioSnapshot {
        let (interrupt_status, needs_reset) = self.interrupt.save();
        MmioSnapshot {
            status: self.status,
            features_sel: self.features_sel,
            acked_features_sel: self.acked_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            activated: self.activated,
            queues: self.queues.iter().map(QueueSnapshot::save).collect(),
            interrupt_status,
            needs_reset,
        }
    }

    /// A transport in a saved state, in front of a device restored separately. Checked
    /// like the driver's own writes: the same number of queues as the device has, each
    /// valid; features a subset of what the device offers.
    pub fn restore(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
        state: &MmioSnapshot,
    ) -> Result<Self, String> {
        let mut t = MmioTransport::new(device, mem, interrupt, queue_evts);
        let (maxes, offered) = {
            let d = lock(&t.device);
            (d.queue_max_sizes().to_vec(), d.avail_features())
        };
        if state.queues.len() != maxes.len() {
            return Err(format!(
                "virtio-mmio: {} queues in the snapshot, the device has {}",
                state.queues.len(),
                maxes.len()
            ));
        }
        if state.acked_features & !offered != 0 {
            return Err(format!(
                "virtio-mmio: features {:#x} were never offered",
                state.acked_features & !offered
            ));
        }
        t.queues = state
            .queues
            .iter()
            .zip(&maxes)
            .map(|(q, &max)| q.restore(max, &t.mem))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("virtio-mmio: {e}"))?;
        t.status = state.status;
        t.features_sel = state.features_sel;
        t.acked_features_sel = state.acked_features_sel;
        t.acked_features = state.acked_features;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.activated = state.activated;
        t.interrupt.restore(state.interrupt_status, state.needs_reset);
        Ok(t)
    }

    fn warn(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            crate::log_warn!("virtio-mmio: {what} (further driver errors of this device not logged)");
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue configuration may change only while the queue is not ready.
    fn with_unready_queue(&mut self, f: impl FnOnce(&mut Queue) -> Result<(), virtio_queue::Error>) {
        let result = match self.selected_queue() {
            Some(q) if !q.ready() => Some(f(q)),
            _ => None,
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => self.warn(&format!("bad queue configuration: {e}")),
            None => self.warn(&format!(
                "queue {} changed while ready or does not exist",
                self.queue_sel
            )),
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked_features = 0;
        self.features_sel = 0;
        self.acked_features_sel = 0;
        self.queue_sel = 0;
        self.activated = false;
        self.interrupt.clear();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added (2.1.1); FAILED may be set at any time.
        if value & self.status != self.status {
            self.warn(&format!("status {value:#x} clears bits of {:#x}", self.status));
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = lock(&self.device).avail_features();
            let unoffered = self.acked_features & !offered;
            if unoffered != 0 {
                // Real drivers do this (Unikraft's virtio-net acknowledges GUEST_ANNOUNCE,
                // which nobody offered). The spec lets a device refuse; like Firecracker and
                // cloud-hypervisor we drop those bits and go on: they turn on nothing here.
                if !self.masked_warned {
                    self.masked_warned = true;
                    crate::log_warn!(
                        "virtio-mmio: the driver acknowledged features {unoffered:#x} that were not offered \
                         (offered {offered:#x}); ignoring them"
                    );
                }
                self.acked_features &= offered;
            }
            if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                // A legacy driver cannot drive this modern-only device. Not setting
                // FEATURES_OK tells the driver the features were refused.
                self.warn(&format!(
                    "driver accepted features {:#x} of {offered:#x}, without VERSION_1",
                    self.acked_features
                ));
                self.status = value & !status::FEATURES_OK;
                return;
            }
            lock(&self.device).set_acked_features(self.acked_features);
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            self.warn(&format!("queue {i} is not ready or lies outside guest memory"));
            self.interrupt.signal_needs_reset();
            return;
        }
        // The device gets its own copies; ours keep answering register reads.
        let queues = self
            .queues
            .iter()
            .map(
                #[allow(clippy::expect_used, reason = "activation checked is_valid on each queue first")]
                |q| Queue::try_from(q.state()).expect("a queue that passed is_valid converts"),
            )
            .collect();
        let result = lock(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone());
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.warn(&format!("activation failed: {e}"));
                self.interrupt.signal_needs_reset();
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => lock(&self.device).device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let features = lock(&self.device).avail_features();
                match self.features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => {
                let needs_reset = if self.interrupt.needs_reset() {
                    status::DEVICE_NEEDS_RESET
                } else {
                    0
                };
                self.status | needs_reset
            }
            0x0fc => self.config_generation,
            _ => {
                self.warn(&format!("read of write-only or unknown register {offset:#x}"));
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let features_writable = self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
        match offset {
            0x014 => self.features_sel = value,
            0x020 if features_writable => match self.acked_features_sel {
                0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(value),
                1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32),
                _ => self.warn(&format!(
                    "driver features select {} out of range",
                    self.acked_features_sel
                )),
            },
            0x024 => self.acked_features_sel = value,
            0x030 => self.queue_sel = value,
            0x038 => match u16::try_from(value) {
                Ok(size) => self.with_unready_queue(|q| q.try_set_size(size)),
                Err(_) => self.warn(&format!("queue size {value} out of range")),
            },
            0x044 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            0x050 => match self.queue_evts.get(value as usize) {
                // Normally an ioeventfd catches this write in the kernel.
                Some(evt) => {
                    let _ = evt.write(1);
                }
                None => self.warn(&format!("notify of queue {value}, which does not exist")),
            },
            0x064 => self.interrupt.ack(value),
            0x070 => self.set_status(value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                let high = offset & 4 != 0;
                let set = |current: GuestAddress| {
                    let v = u64::from(value);
                    GuestAddress(if high {
                        (current.0 & 0xffff_ffff) | (v << 32)
                    } else {
                        (current.0 & !0xffff_ffff) | v
                    })
                };
                match offset & !4 {
                    0x080 => {
                        self.with_unready_queue(|q| q.try_set_desc_table_address(set(GuestAddress(q.desc_table()))))
                    }
                    0x090 => {
                        self.with_unready_queue(|q| q.try_set_avail_ring_address(set(GuestAddress(q.avail_ring()))))
                    }
                    _ => self.with_unready_queue(|q| q.try_set_used_ring_address(set(GuestAddress(q.used_ring())))),
                }
            }
            _ => self.warn(&format!(
                "write of {value:#x} to read-only or unknown register {offset:#x}"
            )),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let value = if data.len() == 4 && offset % 4 == 0 {
            self.read_register(offset)
        } else {
            self.warn(&format!("{}-byte register read at {offset:#x}", data.len()));
            0
        };
        let n = data.len().min(4);
        data[..n].copy_from_slice(&value.to_le_bytes()[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => self.warn(&format!("{}-byte register write at {offset:#x}", data.len())),
        }
    }
}

fn lock(device: &Mutex<dyn VirtioDevice>) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use virtio_queue::Queue;

    /// A device that records what the transport did to it.
    #[derive(Default)]
    struct Probe {
        acked: u64,
        activated: usize,
        resets: usize,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            1
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1 << 5
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: GuestMemoryMmap, q: Vec<Queue>, _: Arc<Interrupt>) -> Result<(), ActivateError> {
            self.activated = q.len();
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn rig() -> (MmioTransport, Arc<Mutex<Probe>>, Arc<Interrupt>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let probe = Arc::new(Mutex::new(Probe::default()));
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            MmioTransport::new(probe.clone(), mem, interrupt.clone(), vec![evt]),
            probe,
            interrupt,
        )
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Drives the queue setup of a driver, with the rings at `base`.
    fn setup_queue(t: &mut MmioTransport, size: u32, base: u64) {
        w(t, 0x030, 0);
        w(t, 0x038, size);
        for (reg, addr) in [(0x080, base), (0x090, base + 0x100), (0x0a0, base + 0x200)] {
            w(t, reg, addr as u32);
            w(t, reg + 4, (addr >> 32) as u32);
        }
        w(t, 0x044, 1);
    }

    fn negotiate(t: &mut MmioTransport, high_features: u32) {
        w(t, 0x070, status::ACKNOWLEDGE);
        w(t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        w(t, 0x024, 1);
        w(t, 0x020, high_features);
        w(t, 0x070, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    }

    #[test]
    fn identifies_as_virtio_mmio_v2() {
        let (mut t, _, _) = rig();
        assert_eq!(r(&mut t, 0x000), 0x7472_6976);
        assert_eq!(r(&mut t, 0x004), 2);
        assert_eq!(r(&mut t, 0x008), 1);
        w(&mut t, 0x014, 1);
        assert_eq!(r(&mut t, 0x010), 1, "VERSION_1 in the high word");
        assert_eq!(r(&mut t, 0x034), 16, "queue 0 maximum");
        w(&mut t, 0x030, 7);
        assert_eq!(r(&mut t, 0x034), 0, "no queue 7");
    }

    #[test]
    fn a_full_handshake_activates_the_device() {
        let (mut t, probe, _) = rig();
        negotiate(&mut t, 1);
        assert_ne!(r(&mut t, 0x070) & status::FEATURES_OK, 0);
        setup_queue(&mut t, 16, 0x1000);
        w(
            &mut t,
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        let p = probe.lock().unwrap();
        assert_eq!((p.acked, p.activated), (VIRTIO_F_VERSION_1, 1));
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, probe, _) = rig();
        negotiate(&mut t, 0);
        assert_eq!(r(&mut t, 0x070) & status::FEATURES_OK, 0);
        assert_eq!(probe.lock().unwrap().acked, 0);
    }

    #[test]
    fn features_the_device_did_not_offer_are_dropped_and_the_device_still_works() {
        let (mut t, probe, _) = rig();
        w(&mut t, 0x070, status::ACKNOWLEDGE);
        w(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        // Low word: the offered bit 5 and an un-offered bit 21 (like GUEST_ANNOUNCE, as
        // Unikraft's driver does); high word: VERSION_1 and an un-offered bit.
        w(&mut t, 0x024, 0);
        w(&mut t, 0x020, 1 << 5 | 1 << 21);
        w(&mut t, 0x024, 1);
        w(&mut t, 0x020, 1 | 2);
        w(
            &mut t,
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(r(&mut t, 0x070) & status::FEATURES_OK, 0, "accepted");
        setup_queue(&mut t, 16, 0x1000);
        w(
            &mut t,
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        let p = probe.lock().unwrap();
        assert_eq!(p.acked, VIRTIO_F_VERSION_1 | 1 << 5, "only what was offered");
        assert_eq!(p.activated, 1);
    }

    #[test]
    fn bad_queue_sizes_are_ignored() {
        let (mut t, probe, interrupt) = rig();
        negotiate(&mut t, 1);
        setup_queue(&mut t, 12, 0x1000); // not a power of two
        setup_queue(&mut t, 0xffff_ffff, 0x1000);
        w(
            &mut t,
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        // The queue still has its default size (the maximum), so activation works; the bad
        // writes changed nothing.
        assert_eq!(probe.lock().unwrap().activated, 1);
        assert!(!interrupt.needs_reset());
    }

    #[test]
    fn queues_outside_guest_memory_are_not_activated() {
        let (mut t, probe, interrupt) = rig();
        negotiate(&mut t, 1);
        setup_queue(&mut t, 16, 0xffff_f000); // beyond the 1 MiB of memory
        w(
            &mut t,
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_eq!(probe.lock().unwrap().activated, 0);
        assert!(interrupt.needs_reset());
        assert_ne!(r(&mut t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn writing_zero_to_status_resets() {
        let (mut t, probe, interrupt) = rig();
        negotiate(&mut t, 1);
        interrupt.signal_needs_reset();
        w(&mut t, 0x070, 0);
        assert_eq!(r(&mut t, 0x070), 0);
        assert_eq!(probe.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, 0x060), 0);
    }

    #[test]
    fn odd_sized_register_accesses_do_nothing() {
        let (mut t, _, _) = rig();
        let mut b = [0u8; 2];
        t.read(0x000, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(0x070, &[1]);
        assert_eq!(r(&mut t, 0x070), 0);
        let mut c = [0u8; 2];
        t.read(0x102, &mut c);
        assert_eq!(c, [2, 2], "config space takes any width");
    }
}
