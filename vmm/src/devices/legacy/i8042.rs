//! The i8042 controller, as far as guests use it in a VM: command 0xFE on port 0x64
//! pulses the reset line, which ends the VM.
use vm_superio::{I8042Device, Trigger};

use crate::devices::BusDevice;
use crate::exit::{ExitRequest, StopReason};

/// Turns the i8042's reset line into a VM stop request.
pub struct ResetLine(ExitRequest);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(StopReason::Reset);
        Ok(())
    }
}

pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    pub fn new(exit: ExitRequest) -> Self {
        I8042(I8042Device::new(ResetLine(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.0.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(()) = self.0.write(offset as u8, data[0]);
    }
}
