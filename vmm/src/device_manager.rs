//! Every device of a VM, held by its type (so it can be paused and its state saved), and
//! the two buses that route the guest's port and MMIO accesses to them.
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{low_ram_end, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE};
use crate::config::{NetBackend, NetConfig};
use crate::devices::legacy::{self, cmos::Cmos, i8042::I8042, power::PowerPort, serial::Serial};
use crate::devices::virtio::net::{event_handler, MacAddr, Net, Tap};
use crate::devices::virtio::transport::mmio::{MmioTransport, MMIO_LEN, NOTIFY_OFFSET};
use crate::devices::virtio::Interrupt;
use crate::devices::Bus;
use crate::event_loop::EventLoop;
use crate::exit::ExitRequest;
use crate::snapshot::{DevicesState, NetState};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device setup failed: {0}")]
    Device(String),
    #[error("network device: {0}")]
    Net(String),
}

/// The legacy devices every VM has.
#[derive(Clone)]
pub struct Legacy {
    pub serial: Arc<Mutex<Serial>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub cmos: Arc<Mutex<Cmos>>,
    pub power: Arc<Mutex<PowerPort>>,
}

/// A virtio-net NIC: its device model and the virtio-mmio transport in front of it.
#[derive(Clone)]
pub struct NetDevice {
    pub device: Arc<Mutex<Net>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

pub struct DeviceManager {
    pub legacy: Legacy,
    pub net: Option<NetDevice>,
    pub pio: Bus,
    pub mmio: Bus,
}

impl DeviceManager {
    /// COM1 (on `console`, interrupting through an irqfd), the i8042, CMOS and the power
    /// port; the last two can ask the VM to stop through `exit`. With `saved`, COM1 and
    /// the CMOS start in the state a snapshot recorded.
    pub fn new(
        vm: &Vm,
        console: Box<dyn Write + Send>,
        exit: &ExitRequest,
        mem_bytes: u64,
        saved: Option<&DevicesState>,
    ) -> Result<DeviceManager, Error> {
        let err = |e: &dyn std::fmt::Display| Error::Device(e.to_string());
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| err(&e))?;
        vm.fd()
            .register_irqfd(&serial_irq, legacy::COM1_IRQ)
            .map_err(|e| err(&e))?;
        let below_4g = low_ram_end(mem_bytes);
        let (serial, cmos) = match saved {
            None => (
                Serial::new(serial_irq, console),
                Cmos::new(below_4g, mem_bytes - below_4g),
            ),
            Some(saved) => (
                Serial::restore(&saved.serial, serial_irq, console).map_err(Error::Device)?,
                Cmos::restore(&saved.cmos).map_err(Error::Device)?,
            ),
        };
        let legacy = Legacy {
            serial: Arc::new(Mutex::new(serial)),
            i8042: Arc::new(Mutex::new(I8042::new(exit.clone()))),
            cmos: Arc::new(Mutex::new(cmos)),
            power: Arc::new(Mutex::new(PowerPort::new(exit.clone()))),
        };
        let mut pio = Bus::new("port");
        pio.insert(legacy::COM1_BASE, 8, legacy.serial.clone())
            .map_err(|e| err(&e))?;
        pio.insert(legacy::I8042_BASE, 5, legacy.i8042.clone())
            .map_err(|e| err(&e))?;
        pio.insert(legacy::CMOS_BASE, 2, legacy.cmos.clone())
            .map_err(|e| err(&e))?;
        pio.insert(legacy::POWER_PORT, 2, legacy.power.clone())
            .map_err(|e| err(&e))?;
        Ok(DeviceManager {
            legacy,
            net: None,
            pio,
            mmio: Bus::new("MMIO"),
        })
    }

    /// A virtio-net device on `net`'s tap at the first virtio-mmio slot: its interrupt on
    /// an irqfd, its queue notifications on ioeventfds, its I/O on the event loop. With
    /// `saved`, the device and its transport resume where a snapshot left them (with the
    /// MAC the guest knows, whatever `net` says).
    pub fn attach_net(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        events: &mut EventLoop,
        (tap, mac): (Tap, Option<MacAddr>),
        saved: Option<&NetState>,
    ) -> Result<(), Error> {
        let err = |e: &dyn std::fmt::Display| Error::Net(e.to_string());
        let mac = match saved {
            Some(s) => MacAddr(s.device.mac),
            None => mac.unwrap_or_else(|| MacAddr::derived(tap.name())),
        };
        let device = Arc::new(Mutex::new(Net::new(tap, mac).map_err(|e| err(&e))?));
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| err(&e))?;
        vm.fd().register_irqfd(&irqfd, VIRTIO_IRQ_BASE).map_err(|e| err(&e))?;
        let interrupt = Interrupt::new(irqfd);
        let mut queue_evts = Vec::new();
        for queue in 0..2u32 {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| err(&e))?;
            let addr = IoEventAddress::Mmio(VIRTIO_MMIO_BASE + NOTIFY_OFFSET);
            vm.fd().register_ioevent(&evt, &addr, queue).map_err(|e| err(&e))?;
            queue_evts.push(evt);
        }
        let clones: Vec<EventFd> = queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<_, _>>()
            .map_err(|e| err(&e))?;
        let transport = match saved {
            None => MmioTransport::new(device.clone(), mem.clone(), interrupt, clones),
            Some(saved) => {
                device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restore(&saved.device, mem, interrupt.clone())
                    .map_err(Error::Net)?;
                MmioTransport::restore(device.clone(), mem.clone(), interrupt, clones, &saved.transport)
                    .map_err(Error::Net)?
            }
        };
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(VIRTIO_MMIO_BASE, MMIO_LEN, transport.clone())
            .map_err(|e| err(&e))?;
        let (Some(tx_evt), Some(rx_evt)) = (queue_evts.pop(), queue_evts.pop()) else {
            return Err(Error::Net("two queue eventfds were made".into()));
        };
        event_handler::register(events, device.clone(), rx_evt, tx_evt).map_err(|e| err(&e))?;
        self.net = Some(NetDevice { device, transport });
        Ok(())
    }
}

/// The tap of `net`, opened (by name: needs CAP_NET_ADMIN and /dev/net/tun, so before any
/// jail) or taken over (an inherited fd), with the MAC asked for.
pub fn open_tap(net: &NetConfig) -> Result<(Tap, Option<MacAddr>), Error> {
    let tap = match &net.backend {
        NetBackend::Tap(name) => Tap::open(name),
        // SAFETY: the caller promised, with --net-fd, that this fd is open and ours.
        NetBackend::Fd(fd) => Tap::from_fd(unsafe { OwnedFd::from_raw_fd(*fd) }),
    }
    .map_err(|e| Error::Net(e.to_string()))?;
    Ok((tap, net.mac))
}
