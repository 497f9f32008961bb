//! A hostile guest, for the VMM's tests: for `rounds=N` rounds (seeded by `seed=S`) it does
//! what a tenant attacking its VMM would: port I/O on random ports with random widths,
//! random reads and writes of the virtio-mmio registers and config space, MMIO at random
//! unbacked addresses, and virtqueues set up on purpose wrong: rings and buffers outside its
//! memory, in the MMIO hole or at the top of the address space, descriptor loops and chains
//! that lie about their lengths, random available indexes, notifications of queues that do
//! not exist. It leaves alone only what would end it at once (the reset and power ports,
//! the local APIC and I/O APIC) and the serial port, which the test reads. If the VMM
//! survives it all, it says so and shuts down.
#![no_std]
#![no_main]

use ukrt::{console, platform, port, BootInfo};

/// The virtio-mmio device (when the VMM gives the guest a NIC).
const VIRTIO: u64 = 0xd000_0000;
/// Guest RAM in the tests (16M); addresses at and above it are outside.
const RAM: u64 = 16 << 20;

struct Rng(u64);

impl Rng {
    /// xorshift64*: enough to wander, the same for the same seed.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Three pages of ours for queue rings, page aligned.
#[repr(C, align(4096))]
struct Rings([u8; 3 * 4096]);
static mut RINGS: Rings = Rings([0; 3 * 4096]);

fn rings() -> *mut u8 {
    // Only the address is taken (the guest is single-threaded).
    core::ptr::addr_of_mut!(RINGS) as *mut u8
}

fn mmio_write(addr: u64, width: u64, value: u64) {
    // SAFETY: the identity map covers 3-4 GiB uncached; an unbacked address is a VM exit
    // the VMM must handle, which is the point.
    unsafe {
        match width {
            0 => (addr as *mut u8).write_volatile(value as u8),
            1 => (addr as *mut u16).write_volatile(value as u16),
            2 => (addr as *mut u32).write_volatile(value as u32),
            _ => (addr as *mut u64).write_volatile(value),
        }
    }
}

fn mmio_read(addr: u64, width: u64) -> u64 {
    // SAFETY: as for mmio_write.
    unsafe {
        match width {
            0 => u64::from((addr as *const u8).read_volatile()),
            1 => u64::from((addr as *const u16).read_volatile()),
            2 => u64::from((addr as *const u32).read_volatile()),
            _ => (addr as *const u64).read_volatile(),
        }
    }
}

fn reg(offset: u64, value: u32) {
    mmio_write(VIRTIO + offset, 2, u64::from(value));
}

/// An address a driver should never hand a device.
fn bad_address(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => RAM - rng.below(64),                  // straddling the end of RAM
        1 => RAM + rng.below(1 << 30),             // past RAM
        2 => VIRTIO + rng.below(0x1000),           // the device's own registers
        3 => u64::MAX - rng.below(0x10000),        // wrapping around
        4 => rings() as u64 + rng.below(3 * 4096), // our rings, misaligned
        _ => rng.next(),
    }
}

/// Sets a queue up the way a driver would, but with lies in it, and notifies it.
fn hostile_queue(rng: &mut Rng) {
    reg(0x70, 0);
    reg(0x70, 1);
    reg(0x70, 3);
    reg(0x24, 1);
    reg(0x20, 1); // VIRTIO_F_VERSION_1
    reg(0x24, 0);
    reg(0x20, rng.next() as u32);
    reg(0x70, 11);
    let queue = rng.below(3) as u32; // queue 2 does not exist
    reg(0x30, queue);
    let size = [16u32, 256, 1, 0, 3, 32768, 65535][rng.below(7) as usize];
    reg(0x38, size);
    let base = rings() as u64;
    let (desc, avail, used) = if rng.below(2) == 0 {
        (base, base + 4096, base + 8192)
    } else {
        (bad_address(rng), bad_address(rng), bad_address(rng))
    };
    for (offset, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
        reg(offset, addr as u32);
        reg(offset + 4, (addr >> 32) as u32);
    }
    // Descriptors: loops, chains through the whole table, lengths of up to 4 GiB.
    let table = base as *mut u8;
    for i in 0..16u64 {
        let addr = if rng.below(2) == 0 {
            bad_address(rng)
        } else {
            base + rng.below(8192)
        };
        let len = [0u32, 1, 12, 4096, u32::MAX, rng.next() as u32][rng.below(6) as usize];
        let flags = rng.below(8) as u16; // NEXT, WRITE, INDIRECT in any mix
        let next = if rng.below(2) == 0 {
            i as u16
        } else {
            rng.below(17) as u16
        };
        // SAFETY: inside our own static rings (16 descriptors of 16 bytes).
        unsafe {
            let d = table.add(i as usize * 16);
            (d as *mut u64).write_volatile(addr);
            (d.add(8) as *mut u32).write_volatile(len);
            (d.add(12) as *mut u16).write_volatile(flags);
            (d.add(14) as *mut u16).write_volatile(next);
        }
    }
    // SAFETY: the avail ring's header and first entries, inside our rings.
    unsafe {
        let a = table.add(4096);
        (a as *mut u16).write_volatile(0);
        (a.add(2) as *mut u16).write_volatile(rng.next() as u16);
        for slot in 0..8 {
            (a.add(4 + slot * 2) as *mut u16).write_volatile(rng.below(20) as u16);
        }
    }
    reg(0x44, 1);
    reg(0x70, 15);
    reg(0x50, rng.below(4) as u32);
}

fn main(boot: &BootInfo) -> ! {
    console::init();
    let number = |key| boot.param(key).and_then(|v: &str| v.parse::<u64>().ok());
    let rounds = number("rounds").unwrap_or(20_000);
    let mut rng = Rng(number("seed").unwrap_or(0x9e37_79b9_7f4a_7c15) | 1);
    console::write_str("hostile: start\n");
    for _ in 0..rounds {
        match rng.below(10) {
            0 | 1 => {
                let p = rng.next() as u16;
                // Reset/power (0x64, 0x92, 0x604, 0xcf9) would end the test at once; the
                // serial port is how it reports.
                if matches!(p, 0x64 | 0x92 | 0x604 | 0xcf9 | 0x3f8..=0x3ff) {
                    continue;
                }
                port::outb(p, rng.next() as u8);
            }
            2 => {
                let p = rng.next() as u16;
                if !matches!(p, 0x3f8..=0x3ff) {
                    let _ = port::inb(p);
                }
            }
            3 | 4 => mmio_write(VIRTIO + rng.below(0x200), rng.below(4), rng.next()),
            5 => {
                let _ = mmio_read(VIRTIO + rng.below(0x200), rng.below(4));
            }
            6 => {
                // Unbacked MMIO below the I/O APIC (0xfec00000), which KVM runs itself.
                let addr = 0xc000_0000 + rng.below(0xfec0_0000 - 0xc000_0000);
                if rng.below(2) == 0 {
                    mmio_write(addr, rng.below(4), rng.next());
                } else {
                    let _ = mmio_read(addr, rng.below(4));
                }
            }
            7 | 8 => hostile_queue(&mut rng),
            _ => reg(0x70, 0),
        }
    }
    console::write_str("hostile: survived ");
    console::write_u64(rounds);
    console::write_str(" rounds\n");
    platform::shutdown()
}

ukrt::entry_pvh!(main);
