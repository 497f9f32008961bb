//! KVM_GET_SUPPORTED_CPUID answers the same on a host until it reboots (but for the APIC id
//! of the CPU that asked, in leaves 1 and 0xb, which `arch::x86_64::cpuid::filter` sets
//! for each vCPU anyway), and costs ~0.4 ms of every start on our nested hosts. With
//! `--cpuid-cache PATH` (the daemon passes `<state>/cpuid`, on the tmpfs that a reboot
//! empties), the first VMM keeps the answer there and the next ones read it. The file names the boot it is from
//! (/proc/sys/kernel/random/boot_id) and is stored in the snapshot state format (magic,
//! version, checksum, bounded decoding); anything that does not check out is asked of KVM
//! again and rewritten. Only root writes it: a VMM before its jail.
use std::path::Path;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use serde::{Deserialize, Serialize};

use super::vm::{Error, Vm};
use crate::snapshot::format;

/// Far more than any cache file holds (80 entries of 40 bytes and a header).
const MAX_FILE_BYTES: u64 = 64 << 10;

#[derive(Serialize, Deserialize)]
struct Cached {
    boot_id: String,
    entries: Vec<kvm_cpuid_entry2>,
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// KVM's supported CPUID, from the cache at `cache` when it holds this boot's.
pub fn supported_cpuid(vm: &Vm, cache: Option<&Path>) -> Result<CpuId, Error> {
    let Some((path, boot)) = cache.zip(boot_id()) else {
        return vm.supported_cpuid();
    };
    if let Some(cpuid) = read(path, &boot) {
        return Ok(cpuid);
    }
    let cpuid = vm.supported_cpuid()?;
    write(path, boot, &cpuid);
    Ok(cpuid)
}

fn read(path: &Path, boot: &str) -> Option<CpuId> {
    use std::io::Read;
    let mut bytes = Vec::new();
    // A regular file only: a FIFO put there would otherwise hold every start.
    crate::loader::open_regular(path)
        .ok()?
        .0
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    decode(&bytes, boot)
}

fn decode(bytes: &[u8], boot: &str) -> Option<CpuId> {
    let cached: Cached = format::decode(bytes).ok()?;
    let n = cached.entries.len();
    if cached.boot_id != boot || n == 0 || n > KVM_MAX_CPUID_ENTRIES {
        return None;
    }
    CpuId::from_entries(&cached.entries).ok()
}

fn encode(boot: String, cpuid: &CpuId) -> Option<Vec<u8>> {
    format::encode(&Cached {
        boot_id: boot,
        entries: cpuid.as_slice().to_vec(),
    })
    .ok()
}

/// Best effort: a cache that cannot be written costs the next VMM the ioctl, nothing else.
fn write(path: &Path, boot: String, cpuid: &CpuId) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(bytes) = encode(boot, cpuid) else { return };
    // Written aside and renamed: concurrent VMMs never read half a file.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn a_cache_is_used_only_for_the_boot_it_is_from_and_only_whole() {
        let cpuid = CpuId::from_entries(&[entry(0, 0xd), entry(1, 0x806f1)]).unwrap();
        let bytes = encode("boot-a".into(), &cpuid).unwrap();
        let back = decode(&bytes, "boot-a").unwrap();
        assert_eq!(back.as_slice(), cpuid.as_slice());
        assert!(decode(&bytes, "boot-b").is_none(), "another boot's");
        assert!(decode(&bytes[..bytes.len() - 1], "boot-a").is_none(), "truncated");
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(decode(&corrupt, "boot-a").is_none(), "corrupt");
        let empty = CpuId::new(0).unwrap();
        assert!(
            decode(&encode("boot-a".into(), &empty).unwrap(), "boot-a").is_none(),
            "empty"
        );
    }

    #[test]
    fn the_cache_file_is_written_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("uk-cpuid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cpuid");
        let cpuid = CpuId::from_entries(&[entry(0, 0xd)]).unwrap();
        write(&path, "boot-a".into(), &cpuid);
        assert_eq!(read(&path, "boot-a").unwrap().as_slice(), cpuid.as_slice());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
