//! The device model driven with crafted queue memory: what a well-behaved driver sees,
//! and what a hostile one gets (the error state, never a panic or an access outside
//! guest memory).
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{MacAddr, Net, Tap};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::vstate::memory::GuestMemoryMmap;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const RXQ_ADDR: u64 = 0x1_0000;
const TXQ_ADDR: u64 = 0x2_0000;
const BUF: u64 = 0x10_0000;
const QSIZE: u16 = 16;

struct Rig {
    mem: GuestMemoryMmap,
    net: Net,
    peer: OwnedFd,
    interrupt: Arc<Interrupt>,
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn rig() -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let mut fds = [0; 2];
    assert_eq!(
        // SAFETY: socketpair fills two fds that we then own.
        unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        },
        0
    );
    // SAFETY: fresh fds from socketpair.
    let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut net = Net::new(Tap::from_datagram_fd(ours), "52:54:00:00:00:01".parse().unwrap()).unwrap();
    let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let (rxq, txq) = (queue(RXQ_ADDR), queue(TXQ_ADDR));
    net.activate(mem.clone(), vec![rxq, txq], interrupt.clone()).unwrap();
    Rig {
        mem,
        net,
        peer,
        interrupt,
    }
}

/// Where the rings of the queue at `queue_addr` live: table, then avail, then used.
fn ring_addrs(queue_addr: u64) -> (u64, u64) {
    (queue_addr + 0x100, queue_addr + 0x200)
}

/// A ready queue laid out as a driver would, in zeroed memory.
fn queue(queue_addr: u64) -> Queue {
    let (avail, used) = ring_addrs(queue_addr);
    let mut q = Queue::new(QSIZE).unwrap();
    q.try_set_size(QSIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(queue_addr)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
    q.try_set_used_ring_address(GuestAddress(used)).unwrap();
    q.set_ready(true);
    q
}

impl Rig {
    /// Writes `descs` at the start of the table and makes descriptor 0 available.
    fn post(&self, queue_addr: u64, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            self.mem
                .write_obj(*d, GuestAddress(queue_addr + 16 * i as u64))
                .unwrap();
        }
        let (avail, _) = ring_addrs(queue_addr);
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        self.mem
            .write_obj(0u16, GuestAddress(avail + 4 + 2 * u64::from(idx % QSIZE)))
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .unwrap();
    }

    /// The used ring's index and the length of its first element.
    fn used(&self, queue_addr: u64) -> (u16, u32) {
        let (_, used) = ring_addrs(queue_addr);
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(used + 4 + 4)).unwrap();
        (idx, len)
    }

    fn peer_send(&self, frame: &[u8]) {
        assert_eq!(
            // SAFETY: frame is valid for reads of its length.
            unsafe { libc::write(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) },
            frame.len() as isize
        );
    }

    fn peer_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    }

    fn assert_broken(&self) {
        assert!(self.net.is_broken(), "device should be in the error state");
        assert!(self.interrupt.needs_reset(), "driver should be told DEVICE_NEEDS_RESET");
        assert_eq!(self.peer_recv(), None, "nothing may reach the tap");
    }
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

#[test]
fn transmits_a_frame_split_over_two_buffers() {
    let mut r = rig();
    let f = frame(12 + 60);
    r.mem.write_slice(&f[..12], GuestAddress(BUF)).unwrap();
    r.mem.write_slice(&f[12..], GuestAddress(BUF + 0x1000)).unwrap();
    r.post(TXQ_ADDR, &[desc(BUF, 12, NEXT, 1), desc(BUF + 0x1000, 60, 0, 0)]);
    r.net.process_tx();
    assert_eq!(r.peer_recv().unwrap(), f);
    assert_eq!(r.used(TXQ_ADDR).0, 1);
    assert_eq!(r.net.stats().tx_frames, 1);
    assert_eq!(r.interrupt.status() & crate::devices::virtio::INT_USED_RING, 1);
}

#[test]
fn receives_a_frame_into_a_guest_buffer() {
    let mut r = rig();
    let f = frame(12 + 100);
    r.peer_send(&f);
    r.post(RXQ_ADDR, &[desc(BUF, 2048, WRITE, 0)]);
    r.net.process_rx();
    assert_eq!(r.used(RXQ_ADDR), (1, f.len() as u32));
    let mut got = vec![0u8; f.len()];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got[12..], &f[12..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
}

#[test]
fn a_frame_waits_for_receive_buffers() {
    let mut r = rig();
    r.peer_send(&frame(60));
    r.net.process_rx(); // no buffers yet: the frame is kept, not dropped
    assert_eq!(r.used(RXQ_ADDR).0, 0);
    r.post(RXQ_ADDR, &[desc(BUF, 2048, WRITE, 0)]);
    r.net.process_rx();
    assert_eq!(r.used(RXQ_ADDR), (1, 60));
    assert_eq!(r.net.stats().rx_dropped, 0);
}

#[test]
fn receive_notifications_are_asked_for_only_while_a_frame_waits_for_a_buffer() {
    const NO_NOTIFY: u16 = 1;
    let mut r = rig();
    let used_flags = |r: &Rig| -> u16 { r.mem.read_obj(GuestAddress(ring_addrs(RXQ_ADDR).1)).unwrap() };
    // Buffers given, nothing to receive: the tap drives the queue, the driver need not.
    r.post(RXQ_ADDR, &[desc(BUF, 2048, WRITE, 0)]);
    r.net.process_rx();
    assert_eq!(used_flags(&r), NO_NOTIFY);
    // Two frames for one buffer: the second waits, and the driver is asked to say when
    // it adds buffers.
    r.peer_send(&frame(60));
    r.peer_send(&frame(70));
    r.net.process_rx();
    assert_eq!(r.used(RXQ_ADDR).0, 1);
    assert_eq!(used_flags(&r), 0, "a frame waits: notifications wanted");
    r.post(RXQ_ADDR, &[desc(BUF, 2048, WRITE, 0)]);
    r.net.process_rx();
    assert_eq!(r.used(RXQ_ADDR).0, 2);
    assert_eq!(used_flags(&r), NO_NOTIFY);
    assert_eq!(r.net.stats().rx_frames, 2);
}

#[test]
fn an_avail_index_far_ahead_of_the_ring_does_not_spin_the_receive_path() {
    let r = rig();
    let (avail, _) = ring_addrs(RXQ_ADDR);
    // More entries announced than the queue holds: nothing can be popped, yet the ring
    // says there is something new.
    r.mem.write_obj(QSIZE * 3, GuestAddress(avail + 2)).unwrap();
    r.peer_send(&frame(60));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut net = r.net;
    std::thread::spawn(move || {
        net.process_rx();
        let _ = done_tx.send(net.stats());
    });
    let stats = done_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("process_rx returned");
    assert_eq!(stats.rx_frames, 0);
}

#[test]
fn no_interrupt_when_the_driver_asks_for_none() {
    let mut r = rig();
    let (avail, _) = ring_addrs(TXQ_ADDR);
    r.mem.write_obj(1u16, GuestAddress(avail)).unwrap(); // VRING_AVAIL_F_NO_INTERRUPT
    r.mem.write_slice(&frame(72), GuestAddress(BUF)).unwrap();
    r.post(TXQ_ADDR, &[desc(BUF, 72, 0, 0)]);
    r.net.process_tx();
    assert_eq!(r.used(TXQ_ADDR).0, 1, "the frame is still sent and given back");
    assert_eq!(r.interrupt.status() & crate::devices::virtio::INT_USED_RING, 0);
    r.mem.write_obj(0u16, GuestAddress(avail)).unwrap();
    r.post(TXQ_ADDR, &[desc(BUF, 72, 0, 0)]);
    r.net.process_tx();
    assert_eq!(r.interrupt.status() & crate::devices::virtio::INT_USED_RING, 1);
}

#[test]
fn out_of_range_descriptor_breaks_the_device() {
    let mut r = rig();
    r.post(TXQ_ADDR, &[desc(15 << 20, 2 << 20, 0, 0)]); // runs past the end of memory
    r.net.process_tx();
    r.assert_broken();
}

#[test]
fn descriptor_loop_breaks_the_device() {
    let mut r = rig();
    r.post(TXQ_ADDR, &[desc(BUF, 64, NEXT, 1), desc(BUF + 64, 64, NEXT, 0)]);
    r.net.process_tx();
    r.assert_broken();
}

#[test]
fn next_index_outside_the_table_breaks_the_device() {
    let mut r = rig();
    r.post(TXQ_ADDR, &[desc(BUF, 64, NEXT, QSIZE + 3)]);
    r.net.process_tx();
    r.assert_broken();
}

#[test]
fn oversized_chain_breaks_the_device() {
    let mut r = rig();
    r.post(
        TXQ_ADDR,
        &[desc(BUF, 40_000, NEXT, 1), desc(BUF + 40_000, 40_000, 0, 0)],
    );
    r.net.process_tx();
    r.assert_broken();
}

#[test]
fn zero_length_buffer_breaks_the_device() {
    let mut r = rig();
    r.peer_send(&frame(60));
    r.post(RXQ_ADDR, &[desc(BUF, 0, WRITE, 0)]);
    r.net.process_rx();
    assert!(r.net.is_broken() && r.interrupt.needs_reset());
}

#[test]
fn buffer_in_the_wrong_direction_breaks_the_device() {
    let mut r = rig();
    r.post(TXQ_ADDR, &[desc(BUF, 64, WRITE, 0)]);
    r.net.process_tx();
    r.assert_broken();
}

#[test]
fn a_broken_device_does_nothing_until_reset() {
    let mut r = rig();
    r.post(TXQ_ADDR, &[desc(BUF, 64, WRITE, 0)]);
    r.net.process_tx();
    r.net.process_tx();
    r.net.process_rx();
    assert!(r.net.is_broken());
    r.net.reset();
    assert!(!r.net.is_broken());
}

#[test]
fn mac_addresses_parse_and_print() {
    assert_eq!(
        "52:54:00:ab:cd:ef".parse::<MacAddr>().unwrap().to_string(),
        "52:54:00:ab:cd:ef"
    );
    assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
    assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err(), "multicast");
    assert!("52-54-00-ab-cd-ef".parse::<MacAddr>().is_err());
}
