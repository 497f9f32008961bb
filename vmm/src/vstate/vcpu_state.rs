//! A vCPU's architectural state, as a snapshot keeps it: CPUID, MSRs, registers, segments,
//! XSAVE (FPU/SSE/AVX), XCRs, debug registers, LAPIC, MP state and pending events.
//!
//! Saved on the vCPU's own thread while it is paused outside KVM_RUN (after a kick, so no
//! port or MMIO access is half done); restored, in Firecracker's order, before the vCPU
//! first runs. Every ioctl this needs was checked on our nested hosts (kvm_pvm): all of
//! them work there, and KVM_GET_MSR_INDEX_LIST names 41 MSRs that all save and restore.
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vCPU {id}: {what} failed: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {0}", id = .1)]
    Invalid(String, u8),
}

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    cpuid: Vec<kvm_cpuid_entry2>,
    msrs: Vec<kvm_msr_entry>,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    /// The guest's TSC frequency; a host with another one cannot run this guest's clock.
    tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VcpuState {{ id: {}, rip: {:#x} }}", self.id, self.regs.rip)
    }
}

/// Bounds for what a snapshot file may claim (KVM's own limits are higher than any guest
/// of ours needs; these keep a crafted file from asking for huge allocations).
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
const MAX_MSRS: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES;

/// Reads every MSR of `indices` that this vCPU has. KVM_GET_MSRS stops at the first MSR
/// it cannot read: that one is left out and the rest are read again.
fn read_msrs(fd: &VcpuFd, id: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let kvm = |what| move |source| Error::Kvm { id, what, source };
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: Vec<u32> = indices.to_vec();
    while !rest.is_empty() {
        let chunk: Vec<kvm_msr_entry> = rest
            .iter()
            .take(MAX_MSRS)
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&chunk).map_err(|e| Error::Invalid(format!("MSR list: {e:?}"), id))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // Skip the one that failed (if any) and go on after it.
        let skip = if n < chunk.len() { n + 1 } else { n };
        rest.drain(..skip.min(rest.len()));
    }
    Ok(out)
}

impl VcpuState {
    /// Saves the state of a paused vCPU. `msr_indices`: what KVM_GET_MSR_INDEX_LIST says.
    pub fn save(fd: &VcpuFd, id: u8, msr_indices: &[u32]) -> Result<VcpuState, Error> {
        let kvm = |what| move |source| Error::Kvm { id, what, source };
        // MP state first: KVM_GET_MP_STATE flushes pending APIC events into the state.
        let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        Ok(VcpuState {
            id,
            cpuid: fd
                .get_cpuid2(MAX_CPUID_ENTRIES)
                .map_err(kvm("KVM_GET_CPUID2"))?
                .as_slice()
                .to_vec(),
            msrs: read_msrs(fd, id, msr_indices)?,
            regs: fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            mp_state,
            events: fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz: fd.get_tsc_khz().ok().filter(|&k| k > 0),
        })
    }

    /// Checks what a snapshot file says before any of it reaches KVM.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Invalid(what, self.id));
        if self.cpuid.is_empty() || self.cpuid.len() > MAX_CPUID_ENTRIES {
            return bad(format!("{} CPUID entries", self.cpuid.len()));
        }
        if self.msrs.len() > MAX_MSRS * 4 {
            return bad(format!("{} MSRs", self.msrs.len()));
        }
        Ok(())
    }

    /// Puts the state into a new vCPU that has not run yet.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), Error> {
        let id = self.id;
        let kvm = |what| move |source| Error::Kvm { id, what, source };
        self.validate()?;
        if let Some(khz) = self.tsc_khz {
            let host = fd.get_tsc_khz().ok();
            if host != Some(khz) {
                // Without TSC scaling (not offered by our nested hosts) the guest's clock
                // would run at another speed: refuse rather than let time drift.
                fd.set_tsc_khz(khz).map_err(|_| {
                    Error::Invalid(
                        format!(
                            "the snapshot's TSC runs at {khz} kHz, this host's at {} kHz, and KVM cannot scale it",
                            host.map_or("an unknown".into(), |h| h.to_string())
                        ),
                        id,
                    )
                })?;
            }
        }
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|e| Error::Invalid(format!("CPUID: {e:?}"), id))?;
        fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        fd.set_mp_state(self.mp_state).map_err(kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: a kvm_xsave is the 4096-byte legacy area, which is what KVM_SET_XSAVE
        // reads on hosts whose XSAVE state fits in it; larger ones (AMX) are refused when
        // the snapshot is taken (see `check_xsave_size`).
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs).map_err(kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        for chunk in self.msrs.chunks(MAX_MSRS) {
            let msrs = Msrs::from_entries(chunk).map_err(|e| Error::Invalid(format!("MSRs: {e:?}"), id))?;
            let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if n != chunk.len() {
                let index = chunk.get(n).map_or(0, |m| m.index);
                return Err(Error::Invalid(format!("KVM refused MSR {index:#x}"), id));
            }
        }
        fd.set_vcpu_events(&self.events).map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// The XSAVE area must fit the 4096-byte `kvm_xsave` we save (true unless the host has
/// AMX-sized state); `cap_size` is KVM_CAP_XSAVE2's answer (0 when unknown).
pub fn check_xsave_size(cap_size: i32) -> Result<(), String> {
    let legacy = std::mem::size_of::<kvm_xsave>();
    match usize::try_from(cap_size) {
        Ok(n) if n > legacy => Err(format!(
            "this host's XSAVE state is {n} bytes (AMX?); snapshots hold {legacy}"
        )),
        _ => Ok(()),
    }
}
