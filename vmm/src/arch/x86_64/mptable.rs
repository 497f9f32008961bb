//! An Intel MultiProcessor Specification 1.4 table at the top of base memory, where Linux
//! and other guests look for it: how many CPUs there are (their APIC IDs), the IOAPIC, and
//! how ISA interrupts are wired. Without it a guest sees one CPU and no IOAPIC.
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{EBDA_START, HIMEM_START};

const MPTABLE_START: u64 = EBDA_START;
const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
const IO_APIC_DEFAULT_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IO_APIC_VERSION: u8 = 0x11;
const IO_APIC_PINS: u8 = 24;
const MP_SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Family 6 stepping 0, with FPU and APIC feature bits: what the spec suggests for a VM.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} vCPUs do not fit in the MP table's APIC ID space")]
    TooManyCpus(u8),
    #[error("cannot write the MP table to guest memory")]
    Write,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)).wrapping_neg()
}

/// The configuration table's entries and header, as bytes.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus + 1;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IO_APIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_BASE.to_le_bytes());
    count += 2;
    // ISA IRQ n -> IOAPIC pin n; pin 0 carries the PIC's ExtINT.
    for pin in 0..IO_APIC_PINS {
        let kind = if pin == 0 { INT_TYPE_EXTINT } else { INT_TYPE_INT };
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, kind, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // LINT0 <- ExtINT, LINT1 <- NMI on every local APIC (0xff: all).
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let length = 44 + entries.len() as u16;
    let mut table = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(MP_SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"UNIKERNL");
    table.extend_from_slice(b"UNIKERNELD  ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// Writes the floating pointer and configuration table for `num_cpus` vCPUs.
pub fn write<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), Error> {
    if u16::from(num_cpus) + 1 >= 0xff {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let table_addr = MPTABLE_START + 16;
    let table = config_table(num_cpus);
    let mut floating = [0u8; 16];
    floating[..4].copy_from_slice(b"_MP_");
    floating[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = MP_SPEC_REV;
    floating[10] = checksum(&floating);
    debug_assert!(table_addr + table.len() as u64 <= HIMEM_START);
    mem.write_slice(&floating, GuestAddress(MPTABLE_START))
        .map_err(|_| Error::Write)?;
    mem.write_slice(&table, GuestAddress(table_addr))
        .map_err(|_| Error::Write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn tables_checksum_to_zero_and_list_every_cpu() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write(&mem, 4).unwrap();
        let mut floating = [0u8; 16];
        mem.read_slice(&mut floating, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&floating[..4], b"_MP_");
        assert_eq!(checksum(&floating), 0);
        let table_addr = u32::from_le_bytes(floating[4..8].try_into().unwrap()) as u64;
        let mut header = [0u8; 44];
        mem.read_slice(&mut header, GuestAddress(table_addr)).unwrap();
        assert_eq!(&header[..4], b"PCMP");
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr)).unwrap();
        assert_eq!(checksum(&table), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 2 + 24 + 2);
        let cpus: Vec<(u8, u8)> = table[44..].chunks(20).take(4).map(|e| (e[1], e[3])).collect();
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn refuses_more_cpus_than_apic_ids() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        assert!(write(&mem, 254).is_err());
    }
}
