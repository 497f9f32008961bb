//! Segment descriptors for the boot GDT, and their `kvm_segment` form for KVM_SET_SREGS.
use kvm_bindings::kvm_segment;

/// A GDT entry from flags (access byte in bits 0-7, flags nibble in bits 12-15), base, limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// 64-bit code, ring 0 (L=1, G=1, present, execute/read, accessed).
pub const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// 32-bit code, ring 0 (D=1, G=1), for the PVH entry.
pub const CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
/// Flat read/write data, ring 0.
pub const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// A 32-bit TSS (busy), required by VMX for a valid TR.
pub const TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

/// The boot GDT: null, code, data, TSS. Selectors are index * 8.
pub fn boot_gdt(code: u64) -> [u64; 4] {
    [0, code, DATA, TSS]
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With G set, the limit counts 4 KiB pages.
    if granularity(entry) == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

fn granularity(entry: u64) -> u8 {
    bit(entry, 55)
}

/// The `kvm_segment` for GDT entry `entry` at `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(entry, 47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: granularity(entry),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(bit(entry, 47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_well_known_descriptors() {
        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(CODE32, 0x00cf_9b00_0000_ffff);
        assert_eq!(DATA, 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn decodes_into_kvm_segments() {
        let cs = kvm_segment_from_gdt(CODE64, 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.g, cs.present, cs.s),
            (8, 0xb, 1, 0, 1, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = kvm_segment_from_gdt(DATA, 2);
        assert_eq!((ds.selector, ds.type_, ds.l, ds.db), (16, 3, 0, 1));
        let entry = gdt_entry(0x808b, 0x1234_5678, 0x6_7890);
        let seg = kvm_segment_from_gdt(entry, 3);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0x6789_0fff);
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
