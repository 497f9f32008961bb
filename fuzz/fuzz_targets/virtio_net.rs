//! The virtio-net device behind its virtio-mmio transport, as a guest drives it: every
//! register read and write, any bytes anywhere in guest memory (descriptor tables, rings,
//! buffers, lying lengths, loops), queue notifications, frames arriving from the host.
//! The device never panics and never touches memory outside the guest's; what it cannot
//! accept puts it in its error state.
//!
//! The input is a list of operations, each a tag byte and its operands (little endian).
#![no_main]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::net::{MacAddr, Net, Tap};
use vmm::devices::virtio::transport::mmio::MmioTransport;
use vmm::devices::virtio::Interrupt;
use vmm::devices::BusDevice;
use vmm::vstate::memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Small, so that random addresses land inside often.
const MEMORY: usize = 256 << 10;
/// The transport's registers and the device's config space.
const MMIO_SPAN: u64 = 0x200;

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn u16_at(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).expect("guest memory");
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds that we then own.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: fresh fds from socketpair.
    let (ours, host) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let net = Arc::new(Mutex::new(
        Net::new(Tap::from_datagram_fd(ours), MacAddr([0x52, 0x54, 0, 0, 0, 1])).expect("net"),
    ));
    let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let queue_evts = vec![
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ];
    let mut mmio = MmioTransport::new(net.clone(), mem.clone(), interrupt, queue_evts);
    let lock = || net.lock().unwrap_or_else(|p| p.into_inner());

    let mut input = data;
    while let Some(op) = take(&mut input, 1) {
        match op[0] % 6 {
            // A register or config write of 1, 2, 4 or 8 bytes.
            0 => {
                let Some(b) = take(&mut input, 3) else { break };
                let offset = u64::from(u16_at(b)) % MMIO_SPAN;
                let len = 1 << (b[2] % 4);
                let Some(value) = take(&mut input, len) else { break };
                mmio.write(offset, value);
            }
            // A read.
            1 => {
                let Some(b) = take(&mut input, 3) else { break };
                let offset = u64::from(u16_at(b)) % MMIO_SPAN;
                let mut out = [0u8; 8];
                mmio.read(offset, &mut out[..1 << (b[2] % 4)]);
            }
            // The guest writes its memory (a write past the end is the guest's problem).
            2 => {
                let Some(b) = take(&mut input, 4) else { break };
                let addr = u64::from(u16_at(b)) * 4 % MEMORY as u64;
                let len = usize::from(u16_at(&b[2..]) % 512).min(input.len());
                let Some(bytes) = take(&mut input, len) else { break };
                let _ = mem.write_slice(bytes, GuestAddress(addr));
            }
            // A notification: the event loop runs the queues.
            3 => lock().process_tx(),
            // A frame from the host.
            4 => {
                let Some(b) = take(&mut input, 2) else { break };
                let len = usize::from(u16_at(b) % 2048).min(input.len());
                let Some(frame) = take(&mut input, len) else { break };
                // SAFETY: send(2) of a valid buffer on our own socket.
                unsafe { libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
                lock().process_rx();
            }
            // The host reads what the guest sent.
            _ => {
                let mut buf = [0u8; 65_600];
                // SAFETY: recv(2) into a valid buffer on our own socket.
                while unsafe { libc::recv(host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) } > 0 {}
            }
        }
    }
});
