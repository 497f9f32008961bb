//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region, CpuId,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::GuestMemoryMmap;
use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("this KVM lacks {0}, which unikernel-vmm needs")]
    MissingCap(&'static str),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// The VM-wide state a snapshot keeps: the in-kernel PICs and IOAPIC, the PIT, the clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Creates the VM and gives it `mem`.
    ///
    /// Order matters on nested KVM: the irqchip is created after the memory slot, because
    /// creating it first makes the first slot cost ~7 ms here (see the benchmark note).
    pub fn new(mem: &GuestMemoryMmap) -> Result<Vm, Error> {
        Self::with_kvm(Self::open_kvm()?, mem)
    }

    /// Opens /dev/kvm (before a jail, whose root has no /dev).
    pub fn open_kvm() -> Result<Kvm, Error> {
        Kvm::new().map_err(Error::OpenKvm)
    }

    /// [`Vm::new`] on an already open /dev/kvm.
    pub fn with_kvm(kvm: Kvm, mem: &GuestMemoryMmap) -> Result<Vm, Error> {
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        for (slot, region) in mem.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the mapping outlives the VM: both live until the process exits, and
            // `mem` is never unmapped while the VM runs.
            unsafe { fd.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        fd.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        Ok(Vm { kvm, fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// MSRs KVM can save and restore on this host (host-constant).
    pub fn msr_indices(&self) -> Result<Vec<u32>, Error> {
        Ok(self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec())
    }

    /// KVM_CAP_XSAVE2's size of the XSAVE state (0 when the host does not say).
    pub fn xsave_size(&self) -> i32 {
        self.fd.check_extension_int(Cap::Xsave2)
    }

    /// Reads the VM-wide state; the vCPUs must be paused.
    pub fn save_state(&self) -> Result<VmState, Error> {
        let chip = |id| -> Result<kvm_irqchip, Error> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
            Ok(c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts saved VM-wide state into this new VM, before its vCPUs get theirs (the LAPICs
    /// deliver through the irqchip restored here).
    pub fn restore_state(&self, state: &VmState) -> Result<(), Error> {
        for (chip, id) in [
            (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&state.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            // The chip id comes from the file: it must be the one this slot holds.
            let mut chip = *chip;
            chip.chip_id = id;
            self.fd.set_irqchip(&chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        self.fd.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
        // Only the time itself is restored: flags such as TSC_STABLE describe the old host.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
        Ok(())
    }

    /// Sequential on purpose: fetching this on another thread while the VM is created
    /// made both slower on our nested hosts (they contend inside KVM).
    pub fn supported_cpuid(&self) -> Result<CpuId, Error> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
    }
}
