//! Port 0x604: QEMU's PM1a control register. Writing SLP_EN (0x2000) powers off.
use crate::devices::BusDevice;
use crate::exit::{ExitRequest, StopReason};

const SLP_EN: u16 = 1 << 13;

pub struct PowerPort {
    exit: ExitRequest,
}

impl PowerPort {
    pub fn new(exit: ExitRequest) -> Self {
        PowerPort { exit }
    }
}

impl BusDevice for PowerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match data {
            [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
            [lo] => u16::from(*lo),
            [] => return,
        };
        if offset == 0 && value & SLP_EN != 0 {
            self.exit.request(StopReason::PowerOff);
        }
    }
}
