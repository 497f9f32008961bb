//! Snapshots: a paused VM written to a directory, and a VM built again from one.
//!
//! A snapshot directory holds two files. `memory` is guest RAM with holes for pages the
//! guest never wrote ([`memory`]). `state` is everything else: the VM-wide KVM state, each
//! vCPU's, and each device's, behind a checked header ([`format`]). Both are written
//! under temporary names and renamed, memory first; `state` records the memory file's
//! inode and size, so a directory whose two files do not belong together (a crash
//! between the renames, a file copied in from elsewhere) is refused, not half restored.
pub mod format;
pub mod memory;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::legacy::cmos::CmosSnapshot;
use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::virtio::net::device::NetSnapshot;
use crate::devices::virtio::transport::mmio::MmioSnapshot;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

pub use contract::control::{SNAPSHOT_MEMORY_FILE as MEMORY_FILE, SNAPSHOT_STATE_FILE as STATE_FILE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path}: {source}")]
    Format { path: PathBuf, source: format::Error },
    #[error("snapshot {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// The state file's content.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    /// Which VMM wrote it, for messages.
    pub vmm: String,
    pub memory: MemoryInfo,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DevicesState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Guest RAM in bytes (the regions follow from it, as at boot).
    pub bytes: u64,
    /// The memory file that belongs to this state.
    pub file_ino: u64,
}

#[derive(Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialSnapshot,
    pub cmos: CmosSnapshot,
    pub net: Option<NetState>,
}

#[derive(Serialize, Deserialize)]
pub struct NetState {
    pub device: NetSnapshot,
    pub transport: MmioSnapshot,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a snapshot into `dir` (created if needed). `fill` gets the open, empty memory
/// file, writes guest memory into it and returns the state to record; the files appear
/// under their real names only once both are complete, and a failure (a full disk) leaves
/// no partial files behind. A snapshot holds the guest's memory, secrets included: the
/// directory is its owner's alone (0700, files 0600).
pub fn write(dir: &Path, fill: impl FnOnce(&File) -> Result<(Snapshot, u64), String>) -> Result<u64, Error> {
    let mem_tmp = dir.join(format!(".{MEMORY_FILE}.tmp"));
    let state_tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let result = write_files(dir, &mem_tmp, &state_tmp, fill);
    if result.is_err() {
        let _ = fs::remove_file(&mem_tmp);
        let _ = fs::remove_file(&state_tmp);
    }
    result
}

fn private_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

fn write_files(
    dir: &Path,
    mem_tmp: &Path,
    state_tmp: &Path,
    fill: impl FnOnce(&File) -> Result<(Snapshot, u64), String>,
) -> Result<u64, Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let mem_file = private_file(mem_tmp)?;
    let (mut snapshot, written) = fill(&mem_file).map_err(|what| Error::Invalid {
        path: dir.to_path_buf(),
        what,
    })?;
    snapshot.memory.file_ino = mem_file.metadata().map_err(io_err(mem_tmp))?.ino();
    let bytes = format::encode(&snapshot).map_err(|source| Error::Format {
        path: state_tmp.to_path_buf(),
        source,
    })?;
    std::io::Write::write_all(&mut private_file(state_tmp)?, &bytes).map_err(io_err(state_tmp))?;
    let mem_path = dir.join(MEMORY_FILE);
    fs::rename(mem_tmp, &mem_path).map_err(io_err(&mem_path))?;
    let state_path = dir.join(STATE_FILE);
    fs::rename(state_tmp, &state_path).map_err(io_err(&state_path))?;
    Ok(written)
}

/// Reads and checks a snapshot directory: the state file's header, its content's bounds,
/// and that the memory file is the one written with it. Nothing of a VM exists yet.
pub fn read(dir: &Path) -> Result<(Snapshot, File), Error> {
    open(dir)?.check()
}

/// A snapshot's files, read and opened but not yet believed: what a jailed VMM opens
/// before its jail (the paths are gone after it) and checks after (the state file was
/// written by a VMM, which a guest may have taken over: it is parsed without privileges).
pub struct Opened {
    dir: PathBuf,
    state: Vec<u8>,
    memory: File,
    memory_meta: std::fs::Metadata,
}

/// Reads the state file (bounded) and opens the memory file.
pub fn open(dir: &Path) -> Result<Opened, Error> {
    let state_path = dir.join(STATE_FILE);
    let mut state = Vec::new();
    crate::loader::open_regular(&state_path)
        .map_err(io_err(&state_path))?
        .0
        .take(format::MAX_STATE_BYTES as u64 + 64)
        .read_to_end(&mut state)
        .map_err(io_err(&state_path))?;
    let mem_path = dir.join(MEMORY_FILE);
    let (memory, memory_meta) = crate::loader::open_regular(&mem_path).map_err(io_err(&mem_path))?;
    Ok(Opened {
        dir: dir.to_path_buf(),
        state,
        memory,
        memory_meta,
    })
}

impl Opened {
    /// Decodes and checks the state, and that the memory file is the one written with it.
    pub fn check(self) -> Result<(Snapshot, File), Error> {
        let Opened {
            dir,
            state,
            memory: mem,
            memory_meta: meta,
        } = self;
        let snapshot: Snapshot = format::decode(&state).map_err(|source| Error::Format {
            path: dir.join(STATE_FILE),
            source,
        })?;
        let invalid = |what: String| Error::Invalid {
            path: dir.clone(),
            what,
        };
        snapshot.validate().map_err(invalid)?;
        check_memory_file(&snapshot, &meta).map_err(invalid)?;
        Ok((snapshot, mem))
    }
}

fn check_memory_file(snapshot: &Snapshot, meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.ino() != snapshot.memory.file_ino {
        return Err("the memory file was not written with this state (a newer or older snapshot's?)".into());
    }
    if meta.len() != snapshot.memory.bytes {
        return Err(format!(
            "the memory file is {} bytes, the guest has {} (truncated?)",
            meta.len(),
            snapshot.memory.bytes
        ));
    }
    Ok(())
}

impl Snapshot {
    /// Bounds on what the file claims, before anything is allocated or given to KVM.
    pub fn validate(&self) -> Result<(), String> {
        crate::vstate::memory::validate(contract::size::MemSize::from_bytes(self.memory.bytes))
            .map_err(|e| e.to_string())?;
        let n = self.vcpus.len();
        if n == 0 || n > usize::from(crate::builder::MAX_VCPUS) {
            return Err(format!("{n} vCPUs"));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if usize::from(v.id) != i {
                return Err(format!("vCPU {} saved in place {i}", v.id));
            }
            v.validate().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
