//! A polled 16550 driver for COM1, initialised the way a real driver does it.
use core::sync::atomic::{AtomicU8, Ordering};

use crate::port::{inb, outb};

/// Bytes the transmitter takes without asking again: THRE set with the 16550A's FIFO on
/// means the 16-byte FIFO is empty. Before `init` (FIFO state unknown), one.
static FIFO_DEPTH: AtomicU8 = AtomicU8::new(1);
static ROOM: AtomicU8 = AtomicU8::new(0);

const COM1: u16 = 0x3f8;
const THR: u16 = COM1; // transmit holding register (DLAB = 0)
const DLL: u16 = COM1; // divisor latch low (DLAB = 1)
const IER: u16 = COM1 + 1;
const DLM: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// 115200 8N1, FIFO on, interrupts off.
pub fn init() {
    outb(IER, 0x00);
    outb(LCR, 0x80); // DLAB on
    outb(DLL, 0x01);
    outb(DLM, 0x00);
    outb(LCR, 0x03); // DLAB off, 8N1
    outb(FCR, 0xc7);
    outb(MCR, 0x0b);
    FIFO_DEPTH.store(16, Ordering::Relaxed);
}

/// Each port access is a VM exit: poll LSR once per FIFO-full, not once per byte.
pub fn write_byte(b: u8) {
    if ROOM.load(Ordering::Relaxed) == 0 {
        while inb(LSR) & LSR_THR_EMPTY == 0 {}
        ROOM.store(FIFO_DEPTH.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    outb(THR, b);
    ROOM.fetch_sub(1, Ordering::Relaxed);
}

pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        write_byte(b);
    }
}

pub fn write_str(s: &str) {
    write_bytes(s.as_bytes());
}

/// `v` in decimal, in `buf`, without `core::fmt`.
pub fn format_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

pub fn write_u64(v: u64) {
    write_bytes(format_u64(v, &mut [0; 20]));
}
