//! CMOS RAM and real-time clock at ports 0x70 (index) / 0x71 (data).
//!
//! Enough for what guests read: the time (BCD, 24-hour, UTC, from the host clock), status
//! register A with "update in progress" clear, B, D (battery good), and the memory-size
//! bytes firmware-style guests use. Other bytes are plain NVRAM.

use crate::devices::BusDevice;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// 32.768 kHz time base, 1024 Hz rate, UIP (bit 7) clear.
const A_DEFAULT: u8 = 0x26;
/// 24-hour mode, BCD.
const B_DEFAULT: u8 = 0x02;
/// Valid RAM and time (battery good).
const D_VALID: u8 = 0x80;

/// What a snapshot keeps of the CMOS: the index register and the NVRAM (the clock is
/// the host's, read at each access).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosSnapshot {
    index: u8,
    nvram: Vec<u8>,
}

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Seconds since the epoch, for tests; `None` reads the host clock.
    fixed_time: Option<i64>,
}

fn bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Cmos {
    /// `mem_below_4g` / `mem_above_4g`: guest RAM, reported in the standard CMOS bytes.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        let mut nvram = [0u8; 128];
        // Base memory 640 KiB (0x15-0x16); extended memory 1-65 MiB in KiB (0x17-0x18, 0x30-0x31).
        nvram[0x15..0x17].copy_from_slice(&640u16.to_le_bytes());
        let ext_kib = (mem_below_4g.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        nvram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        nvram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        // Memory above 16 MiB in 64 KiB units (0x34-0x35), above 4 GiB in 64 KiB units (0x5b-0x5d).
        let above_16m = (mem_below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        nvram[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        let above_4g = (mem_above_4g >> 16).min(0xff_ffff) as u32;
        nvram[0x5b..0x5e].copy_from_slice(&above_4g.to_le_bytes()[..3]);
        nvram[REG_A as usize] = A_DEFAULT;
        nvram[REG_B as usize] = B_DEFAULT;
        nvram[REG_D as usize] = D_VALID;
        Cmos {
            index: 0,
            nvram,
            fixed_time: None,
        }
    }

    pub fn save(&self) -> CmosSnapshot {
        CmosSnapshot {
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    pub fn restore(state: &CmosSnapshot) -> Result<Self, String> {
        let nvram: [u8; 128] = state
            .nvram
            .as_slice()
            .try_into()
            .map_err(|_| format!("CMOS: {} bytes of NVRAM, not 128", state.nvram.len()))?;
        Ok(Cmos {
            index: state.index & 0x7f,
            nvram,
            fixed_time: None,
        })
    }

    fn now(&self) -> i64 {
        self.fixed_time.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        })
    }

    fn read_register(&self, reg: u8) -> u8 {
        let t = self.now();
        let secs = t.rem_euclid(86_400) as u32;
        let days = t.div_euclid(86_400);
        let (year, month, day) = civil(days);
        match reg {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600),
            // 1 = Sunday; 1970-01-01 was a Thursday.
            REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u32),
            REG_DAY => bcd(day),
            REG_MONTH => bcd(month),
            REG_YEAR => bcd(year.rem_euclid(100) as u32),
            REG_CENTURY => bcd((year / 100) as u32),
            REG_A => self.nvram[REG_A as usize] & 0x7f,
            REG_C => 0,
            REG_D => D_VALID,
            r => self.nvram[usize::from(r & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            0 => self.index,
            _ => self.read_register(self.index),
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            // Bit 7 of the index port masks NMIs on real hardware; the index is 7 bits.
            0 => self.index = data[0] & 0x7f,
            _ => match self.index {
                REG_SECONDS..=REG_YEAR | REG_C | REG_D | REG_CENTURY => {} // clock is the host's
                i => self.nvram[usize::from(i)] = data[0],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn nvram_survives_a_snapshot_and_a_short_one_is_refused() {
        let mut c = Cmos::new(16 << 20, 0);
        c.write(0, &[0x40]);
        c.write(1, &[0x99]);
        let mut back = Cmos::restore(&c.save()).unwrap();
        assert_eq!(read(&mut back, 0x40), 0x99);
        assert_eq!(read(&mut back, 0x15), 0x80, "base memory low byte (640 KiB)");
        let mut short = c.save();
        short.nvram.truncate(12);
        assert!(Cmos::restore(&short).is_err());
    }

    #[test]
    fn status_a_says_no_update_in_progress() {
        let mut c = Cmos::new(16 << 20, 0);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0);
        assert_eq!(read(&mut c, REG_D), 0x80);
        // The NMI mask bit on the index port does not change the register selected.
        assert_eq!(read(&mut c, REG_A | 0x80) & 0x80, 0);
    }

    #[test]
    fn clock_reads_bcd_utc() {
        let mut c = Cmos::new(16 << 20, 0);
        c.fixed_time = Some(1_795_000_000); // 2026-11-18T11:06:40Z, a Wednesday
        let got: Vec<u8> = [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
            REG_WEEKDAY,
        ]
        .iter()
        .map(|r| read(&mut c, *r))
        .collect();
        assert_eq!(got, vec![0x40, 0x06, 0x11, 0x18, 0x11, 0x26, 0x20, 0x04]);
    }

    #[test]
    fn reports_memory_and_keeps_nvram() {
        let mut c = Cmos::new(64 << 20, 0);
        let above_16m = u16::from_le_bytes([read(&mut c, 0x34), read(&mut c, 0x35)]);
        assert_eq!(u64::from(above_16m) << 16, 48 << 20);
        c.write(0, &[0x40]);
        c.write(1, &[0xab]);
        assert_eq!(read(&mut c, 0x40), 0xab);
        c.write(0, &[REG_SECONDS]);
        c.write(1, &[0x99]);
        assert_ne!(read(&mut c, REG_SECONDS), 0x99, "the clock is not writable");
    }
}
