//! KVM state wrappers: guest memory, the VM, its vCPUs.
pub mod cpuid_cache;
pub mod memory;
pub mod vcpu;
pub mod vcpu_handle;
pub mod vcpu_state;
pub mod vm;
