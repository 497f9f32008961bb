//! The PC legacy devices unikernels poke at: COM1, the i8042 reset line, CMOS/RTC, and
//! the ACPI-style power-off port.
pub mod cmos;
pub mod console_socket;
pub mod i8042;
pub mod power;
pub mod serial;

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_BASE: u64 = 0x60;
pub const CMOS_BASE: u64 = 0x70;
pub const POWER_PORT: u64 = 0x604;
