//! COM1: a 16550A (vm-superio) whose output is the guest console, and whose interrupt is
//! an eventfd wired to IRQ 4 of the in-kernel irqchip.
//!
//! Transmit writes are deliberately not coalesced (KVM coalesced PIO on 0x3f8): tried on
//! our nested host it cut a 42-byte line from 53 exits to 10 and its last byte came
//! 0.48 ms sooner, but the ring is only read at the vCPU's next exit to the VMM, so a line
//! printed just before the guest halts would wait for the watchdog's kick (up to 16 s):
//! live logs and readiness-by-console would suffer, and flushing on a timer costs idle CPU.
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// Raises the UART's interrupt line by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The console sink. Unbuffered on purpose: the UART flushes after every byte, so each
/// byte reaches the reader as soon as the guest sends it (a pipe write costs a fraction
/// of the two port exits the guest pays per byte anyway).
pub type ConsoleOut = Box<dyn Write + Send>;

pub struct Serial {
    uart: Uart<IrqTrigger, NoEvents, ConsoleOut>,
    irq_failed: bool,
}

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    divisor: [u8; 2],
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

impl Serial {
    /// The device state (the console sink is not part of it).
    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in a saved state; an interrupt it had pending is raised again. vm-superio
    /// refuses a receive FIFO longer than the chip's.
    pub fn restore(state: &SerialSnapshot, irq: EventFd, out: Box<dyn Write + Send>) -> Result<Self, String> {
        let s = SerialState {
            baud_divisor_low: state.divisor[0],
            baud_divisor_high: state.divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Uart::from_state(&s, IrqTrigger(irq), NoEvents, out).map_err(|e| format!("serial: {e:?}"))?;
        Ok(Serial {
            uart,
            irq_failed: false,
        })
    }

    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: Uart::new(IrqTrigger(irq), out),
            irq_failed: false,
        }
    }

    /// Pushes out anything the sink still holds (at VM exit).
    pub fn flush(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // A closed console or a failed irqfd write: report once, keep the guest running.
            if !self.irq_failed {
                self.irq_failed = true;
                crate::log_warn!("serial console: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(data.to_vec());
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn console_gets_each_byte_as_it_is_sent() {
        let sink = Sink::default();
        let mut serial = Serial::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Box::new(sink.clone()));
        for b in b"hi\nyo" {
            serial.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().concat(), b"hi\nyo");
    }

    #[test]
    fn saved_registers_come_back_and_an_overfull_fifo_is_refused() {
        let mut serial = Serial::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Box::new(io::sink()));
        serial.write(3, &[0x80]);
        serial.write(0, &[0x0c]);
        serial.write(3, &[0x03]);
        serial.write(7, &[0x5a]);
        let saved = serial.save();
        let mut back =
            Serial::restore(&saved, EventFd::new(libc::EFD_NONBLOCK).unwrap(), Box::new(io::sink())).unwrap();
        assert_eq!(back.save(), saved);
        let mut b = [0u8];
        back.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        let overfull = SerialSnapshot {
            in_buffer: vec![0; 4096],
            ..saved
        };
        assert!(Serial::restore(
            &overfull,
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(io::sink())
        )
        .is_err());
    }

    #[test]
    fn line_status_says_transmitter_empty_and_dlab_is_honoured() {
        let mut serial = Serial::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Box::new(io::sink()));
        let mut b = [0u8];
        serial.read(5, &mut b);
        assert_ne!(b[0] & 0x20, 0, "LSR THR empty");
        serial.write(3, &[0x80]); // DLAB on: offset 0 is the divisor latch, not THR
        serial.write(0, &[0x0c]);
        serial.read(0, &mut b);
        assert_eq!(b[0], 0x0c);
        serial.write(3, &[0x03]);
        serial.read(3, &mut b);
        assert_eq!(b[0], 0x03);
    }
}
