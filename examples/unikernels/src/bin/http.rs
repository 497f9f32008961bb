//! `http`: a unikernel that serves HTTP over virtio-net.
//!
//! Command line: `ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=web` plus the VMM's
//! `virtio_mmio.device=4K@0xd0000000:5`. Every request gets `200` and `<name> <n>`, where
//! n counts requests served since boot. Idle, it halts: interrupts (frames received or
//! sent, and a one-shot timer only while TCP has timers pending) wake it.
#![no_std]
#![no_main]

use core::ptr::NonNull;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use ukrt::virtio_hal::IdentityHal;
use ukrt::{console, interrupts, platform, time, BootInfo};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

const QUEUE: usize = 16;
const FRAME: usize = 2048;
const SOCKETS: usize = 64;
const SOCKET_BUF: usize = 4096;

fn fail(what: &str) -> ! {
    console::write_str("http: ");
    console::write_str(what);
    console::write_str("\n");
    platform::triple_fault()
}

// ---- command line -------------------------------------------------------------------

fn parse_u64(s: &str, radix: u32) -> Option<u64> {
    u64::from_str_radix(s, radix).ok()
}

fn parse_ipv4(s: &str) -> Option<Ipv4Address> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Address::from_octets(octets))
}

/// `4K@0xd0000000:5` -> (address, size, irq).
fn parse_virtio_mmio(s: &str) -> Option<(u64, usize, u8)> {
    let (size, rest) = s.split_once('@')?;
    let (addr, irq) = rest.split_once(':')?;
    let size = match size.strip_suffix(['K', 'k']) {
        Some(k) => parse_u64(k, 10)? << 10,
        None => parse_u64(size, 10)?,
    };
    let addr = parse_u64(addr.strip_prefix("0x")?, 16)?;
    Some((addr, size as usize, irq.parse().ok()?))
}

// ---- the NIC as smoltcp sees it -----------------------------------------------------

type Nic = VirtIONetRaw<IdentityHal, MmioTransport<'static>, QUEUE>;

type Frames = [[u8; FRAME]; QUEUE];

struct TxPool {
    bufs: &'static mut Frames,
    free: u32,
    slot_of_token: [u8; QUEUE],
}

struct NetDev {
    nic: Nic,
    rx: &'static mut Frames,
    rx_slot_of_token: [u8; QUEUE],
    /// The receive buffer lent to smoltcp last time, to give back to the device.
    rx_lent: Option<usize>,
    tx: TxPool,
}

impl NetDev {
    fn post_rx(&mut self, slot: usize) {
        // SAFETY: the slot's buffer is not touched again until the device returns it.
        match unsafe { self.nic.receive_begin(&mut self.rx[slot]) } {
            Ok(token) => self.rx_slot_of_token[usize::from(token)] = slot as u8,
            Err(_) => fail("cannot post a receive buffer"),
        }
    }
}

fn reclaim_tx(nic: &mut Nic, tx: &mut TxPool) {
    while let Some(token) = nic.poll_transmit() {
        let slot = usize::from(tx.slot_of_token[usize::from(token)]);
        // SAFETY: the same buffer that was passed to transmit_begin for this token.
        let _ = unsafe { nic.transmit_complete(token, &tx.bufs[slot]) };
        tx.free |= 1 << slot;
    }
}

struct RxTok<'a>(&'a [u8]);
struct TxTok<'a> {
    nic: &'a mut Nic,
    tx: &'a mut TxPool,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        reclaim_tx(self.nic, self.tx);
        let slot = self.tx.free.trailing_zeros() as usize;
        let buf = &mut self.tx.bufs[slot.min(QUEUE - 1)];
        let hdr = self.nic.fill_buffer_header(buf).unwrap_or(12);
        let result = f(&mut buf[hdr..hdr + len]);
        if slot < QUEUE {
            // SAFETY: the slot stays reserved (not free) until transmit_complete.
            if let Ok(token) = unsafe { self.nic.transmit_begin(&self.tx.bufs[slot][..hdr + len]) } {
                self.tx.free &= !(1 << slot);
                self.tx.slot_of_token[usize::from(token)] = slot as u8;
            }
        } // else: every buffer is in flight; the frame is dropped, TCP will resend
        result
    }
}

impl phy::Device for NetDev {
    type RxToken<'a> = RxTok<'a>;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        if let Some(slot) = self.rx_lent.take() {
            self.post_rx(slot);
        }
        let token = self.nic.poll_receive()?;
        let slot = usize::from(self.rx_slot_of_token[usize::from(token)]);
        // SAFETY: the buffer posted for this token.
        let (hdr, len) = unsafe { self.nic.receive_complete(token, &mut self.rx[slot]) }.ok()?;
        self.rx_lent = Some(slot);
        Some((
            RxTok(&self.rx[slot][hdr..hdr + len]),
            TxTok {
                nic: &mut self.nic,
                tx: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        reclaim_tx(&mut self.nic, &mut self.tx);
        (self.tx.free != 0).then_some(TxTok {
            nic: &mut self.nic,
            tx: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(QUEUE / 2);
        caps
    }
}

// ---- HTTP ---------------------------------------------------------------------------

/// Per connection: how far into "\r\n\r\n" we are, and whether the client asked to close.
/// A header `X-Say: TEXT` (up to 16 bytes) prints `http: said TEXT` on the console.
#[derive(Clone, Copy, Default)]
struct Conn {
    matched: u8,
    line: [u8; 24],
    line_len: u8,
    close: bool,
}

impl Conn {
    /// Feeds request bytes; returns how many requests ended in them.
    fn feed(&mut self, bytes: &[u8]) -> u32 {
        let mut done = 0;
        for &b in bytes {
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') => self.matched + 1,
                (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if b == b'\n' {
                let line = &self.line[..usize::from(self.line_len)];
                if line.eq_ignore_ascii_case(b"connection: close\r") {
                    self.close = true;
                }
                // A line on the console on request (tests of the host's console path).
                if line.len() > 7 && line[..7].eq_ignore_ascii_case(b"x-say: ") {
                    let text = &line[7..];
                    console::write_str("http: said ");
                    console::write_bytes(text.strip_suffix(b"\r").unwrap_or(text));
                    console::write_str("\n");
                }
                self.line_len = 0;
            } else if usize::from(self.line_len) < self.line.len() {
                self.line[usize::from(self.line_len)] = b;
                self.line_len += 1;
            }
            if self.matched == 4 {
                done += 1;
                self.matched = 0;
            }
        }
        done
    }
}

fn push(out: &mut [u8], at: &mut usize, bytes: &[u8]) {
    out[*at..*at + bytes.len()].copy_from_slice(bytes);
    *at += bytes.len();
}

fn push_u64(out: &mut [u8], at: &mut usize, v: u64) {
    push(out, at, console::format_u64(v, &mut [0; 20]));
}

/// `HTTP/1.1 200 OK` with body `<name> <count>\n`.
fn response(name: &[u8], count: u64, close: bool, out: &mut [u8; 256]) -> usize {
    let mut body = [0u8; 96];
    let mut blen = 0;
    push(&mut body, &mut blen, &name[..name.len().min(64)]);
    push(&mut body, &mut blen, b" ");
    push_u64(&mut body, &mut blen, count);
    push(&mut body, &mut blen, b"\n");
    let mut n = 0;
    push(
        out,
        &mut n,
        b"HTTP/1.1 200 OK\r\nServer: ukrt\r\nContent-Type: text/plain\r\nContent-Length: ",
    );
    push_u64(out, &mut n, blen as u64);
    push(
        out,
        &mut n,
        if close {
            b"\r\nConnection: close\r\n\r\n"
        } else {
            b"\r\n\r\n"
        },
    );
    push(out, &mut n, &body[..blen]);
    n
}

// ---- main ---------------------------------------------------------------------------

static mut NET: Option<NetDev> = None;
static mut RX_FRAMES: Frames = [[0; FRAME]; QUEUE];
static mut TX_FRAMES: Frames = [[0; FRAME]; QUEUE];
static mut STORAGE: [SocketStorage<'static>; SOCKETS] = [SocketStorage::EMPTY; SOCKETS];
static mut SOCK_BUFS: [[[u8; SOCKET_BUF]; 2]; SOCKETS] = [[[0; SOCKET_BUF]; 2]; SOCKETS];

fn main(boot: &BootInfo) -> ! {
    console::init();
    interrupts::init();
    time::init();
    ukrt::usermode::drop_to_user();
    let name = boot.param("name").unwrap_or("http");
    let port: u16 = boot.param("port").and_then(|p| p.parse().ok()).unwrap_or(80);
    let (ip, prefix) = boot
        .param("ip")
        .and_then(|s| s.split_once('/'))
        .and_then(|(a, p)| Some((parse_ipv4(a)?, p.parse::<u8>().ok()?)))
        .unwrap_or_else(|| fail("needs ip=A.B.C.D/N on the command line"));
    let (mmio, size, irq) = boot
        .param("virtio_mmio.device")
        .and_then(parse_virtio_mmio)
        .unwrap_or_else(|| fail("no virtio_mmio.device= on the command line"));

    // SAFETY: the VMM announced a virtio-mmio device of `size` bytes at `mmio`, identity mapped.
    let transport = unsafe { MmioTransport::new(NonNull::new(mmio as *mut VirtIOHeader).unwrap(), size) }
        .unwrap_or_else(|_| fail("no virtio-mmio device where the command line says"));
    let nic = Nic::new(transport).unwrap_or_else(|_| fail("virtio-net initialisation failed"));
    let mac = nic.mac_address();
    // SAFETY: single-threaded; NET is set once here and only used through this reference.
    let dev = unsafe {
        let slot = &mut *core::ptr::addr_of_mut!(NET);
        *slot = Some(NetDev {
            nic,
            rx: &mut *core::ptr::addr_of_mut!(RX_FRAMES),
            rx_slot_of_token: [0; QUEUE],
            rx_lent: None,
            tx: TxPool {
                bufs: &mut *core::ptr::addr_of_mut!(TX_FRAMES),
                free: (1 << QUEUE) - 1,
                slot_of_token: [0; QUEUE],
            },
        });
        slot.as_mut().unwrap()
    };
    for slot in 0..QUEUE {
        dev.post_rx(slot);
    }
    dev.nic.enable_interrupts();
    interrupts::unmask(irq);
    interrupts::unmask(0);

    let now = || Instant::from_micros(time::now_us() as i64);
    let mut iface = Interface::new(Config::new(HardwareAddress::Ethernet(EthernetAddress(mac))), dev, now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(ip.into(), prefix));
    });
    if let Some(gw) = boot.param("gw").and_then(parse_ipv4) {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }

    // SAFETY: single-threaded; these statics are borrowed once, for the rest of the run.
    let (storage, bufs) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(STORAGE),
            &mut *core::ptr::addr_of_mut!(SOCK_BUFS),
        )
    };
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut handles = [None::<SocketHandle>; SOCKETS];
    for (h, [rx, tx]) in handles.iter_mut().zip(bufs.iter_mut()) {
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(&mut rx[..]), tcp::SocketBuffer::new(&mut tx[..]));
        socket.set_nagle_enabled(false);
        *h = Some(sockets.add(socket));
    }
    let handles = handles.map(|h| h.unwrap());
    let mut conns = [Conn::default(); SOCKETS];
    let mut served: u64 = 0;
    // Listen before announcing readiness, so the first SYN finds a listener.
    for &h in &handles {
        let _ = sockets.get_mut::<tcp::Socket>(h).listen(port);
    }

    console::write_str("http: ");
    console::write_str(name);
    console::write_str(" listening on port ");
    console::write_u64(u64::from(port));
    // What follows ` -- ` is the application's, as with Linux and Unikraft.
    if let Some(args) = boot.app_args() {
        console::write_str(" (application arguments: ");
        console::write_str(args);
        console::write_str(")");
    }
    console::write_str("\n");

    loop {
        let t = now();
        iface.poll(t, dev, &mut sockets);
        let mut listening = false;
        for (i, &h) in handles.iter().enumerate() {
            let s = sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Closed => {
                    conns[i] = Conn::default();
                    let _ = s.listen(port);
                }
                tcp::State::CloseWait if s.send_queue() == 0 => s.close(),
                _ => {}
            }
            listening |= s.state() == tcp::State::Listen;
            let mut buf = [0u8; 512];
            while s.can_recv() {
                let Ok(n) = s.recv_slice(&mut buf) else { break };
                for _ in 0..conns[i].feed(&buf[..n]) {
                    served += 1;
                    let mut out = [0u8; 256];
                    let len = response(name.as_bytes(), served, conns[i].close, &mut out);
                    let _ = s.send_slice(&out[..len]);
                }
                if n == 0 {
                    break;
                }
            }
            if conns[i].close && s.send_queue() == 0 && s.state() == tcp::State::Established {
                s.close();
            }
        }
        if !listening {
            // Every socket is busy; free one that is only waiting out TIME-WAIT.
            if let Some(&h) = handles
                .iter()
                .find(|&&h| sockets.get::<tcp::Socket>(h).state() == tcp::State::TimeWait)
            {
                sockets.get_mut::<tcp::Socket>(h).abort();
            }
        }
        // More to do right away? Otherwise sleep until a frame or a TCP timer.
        if dev.nic.poll_receive().is_some() {
            continue;
        }
        if let Some(delay) = iface.poll_delay(now(), &sockets) {
            if delay.total_micros() == 0 {
                continue;
            }
            time::arm_oneshot(delay.total_micros());
        }
        interrupts::wait();
        if interrupts::take_pending() & (1 << irq) != 0 {
            dev.nic.ack_interrupt();
        }
    }
}

ukrt::entry_pvh!(main);
