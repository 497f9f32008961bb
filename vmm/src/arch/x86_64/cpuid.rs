//! The CPUID a vCPU sees: what KVM supports, with the topology made true for this vCPU
//! and the hypervisor leaves that tell a guest the TSC frequency without calibrating.
use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// VMware's timing leaf, also read by Linux and Unikraft: EAX = TSC kHz, EBX = APIC bus kHz.
const LEAF_HYPERVISOR_TIMING: u32 = 0x4000_0010;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_CPU_COUNT_SHIFT: u32 = 16;
const EBX_CLFLUSH_SHIFT: u32 = 8;
const EDX_HTT: u32 = 1 << 28;
/// KVM's local APIC timer counts nanoseconds: a 1 GHz bus.
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn filter(cpuid: &mut CpuId, id: u8, count: u8, tsc_khz: Option<u32>) {
    let mut has_timing_leaf = false;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (u32::from(id) << EBX_APIC_ID_SHIFT)
                    | (u32::from(count) << EBX_CPU_COUNT_SHIFT)
                    | (8 << EBX_CLFLUSH_SHIFT);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => entry.edx = u32::from(id),
            LEAF_HYPERVISOR if tsc_khz.is_some() => {
                entry.eax = entry.eax.max(LEAF_HYPERVISOR_TIMING);
            }
            LEAF_HYPERVISOR_TIMING => has_timing_leaf = true,
            _ => {}
        }
    }
    if let (Some(khz), false) = (tsc_khz, has_timing_leaf) {
        let timing = kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR_TIMING,
            eax: khz,
            ebx: KVM_APIC_BUS_KHZ,
            ..Default::default()
        };
        // The FAM wrapper has room up to KVM_MAX_CPUID_ENTRIES; if it is full, the guest
        // calibrates the TSC itself, which is slower but correct.
        let _ = cpuid.push(timing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ..Default::default()
        }
    }

    #[test]
    fn sets_apic_id_hypervisor_bit_and_timing_leaf() {
        let mut cpuid = CpuId::from_entries(&[leaf(1), leaf(0xb), leaf(LEAF_HYPERVISOR)]).unwrap();
        filter(&mut cpuid, 2, 4, Some(2_500_000));
        let get = |f| *cpuid.as_slice().iter().find(|e| e.function == f).unwrap();
        assert_eq!(get(1).ebx >> 24, 2);
        assert_eq!((get(1).ebx >> 16) & 0xff, 4);
        assert_ne!(get(1).ecx & ECX_HYPERVISOR, 0);
        assert_eq!(get(0xb).edx, 2);
        assert_eq!(get(LEAF_HYPERVISOR).eax, LEAF_HYPERVISOR_TIMING);
        assert_eq!(get(LEAF_HYPERVISOR_TIMING).eax, 2_500_000);
        assert_eq!(get(LEAF_HYPERVISOR_TIMING).ebx, KVM_APIC_BUS_KHZ);
    }

    #[test]
    fn without_tsc_frequency_adds_nothing() {
        let mut cpuid = CpuId::from_entries(&[leaf(1), leaf(LEAF_HYPERVISOR)]).unwrap();
        filter(&mut cpuid, 0, 1, None);
        assert_eq!(cpuid.as_slice().len(), 2);
        assert_eq!(cpuid.as_slice()[1].eax, 0);
    }
}
