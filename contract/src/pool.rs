//! The warm pool's hand-off: a VMM started ahead of need (`--pool-fd N`) creates its KVM
//! VM, memory and vCPUs, says [`READY`] on the inherited socket, and waits for what to
//! run. The daemon sends one message: the VMM's arguments (as [`crate::args::VmmArgs`]
//! argv, NUL-separated) with the descriptors they need attached (`SCM_RIGHTS`). The
//! first descriptor becomes the VMM's stderr; `--net-fd`, `--cmdline-fd` and
//! `--control-fd` name a descriptor by its index in the attached list, since its number in the VMM is not
//! known when the message is written.
//!
//! The socket is `SOCK_SEQPACKET`: one message is one hand-off, and the daemon closing
//! its end (it stopped, or the pool shrank) is an end of file that the waiting VMM
//! answers by exiting.
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;

use clap::Parser;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::args::VmmArgs;

/// What a pooled VMM sends once its VM is created.
pub const READY: &[u8] = b"ready";

/// The largest hand-off message (paths and numbers: a few hundred bytes in practice).
pub const MAX_MESSAGE: usize = 16 * 1024;

/// How many bytes of room a pooled VMM's own arguments leave (`--pool-room`): it writes
/// the handed-off arguments over them, and the daemon hands off nothing longer.
pub const ROOM: usize = 4096;

/// The arguments as /proc/PID/cmdline holds them: `program`, then `args`, each ending in
/// a NUL.
pub fn argv_bytes(program: &std::ffi::OsStr, args: &VmmArgs) -> Vec<u8> {
    let mut argv = vec![program.to_os_string()];
    argv.extend(args.to_argv());
    encode(&argv)
}

/// At most this many descriptors ride with a hand-off (stderr, command line, control
/// socket, tap, console feed).
pub const MAX_FDS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pool socket: {0}")]
    Io(#[from] io::Error),
    #[error("hand-off longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("hand-off without a descriptor for stderr")]
    NoStderr,
    #[error("hand-off arguments: {0}")]
    Args(String),
    #[error("hand-off names descriptor {index} of {count}")]
    NoSuchFd { index: RawFd, count: usize },
}

/// A connected pair for one pooled VMM (close-on-exec: the daemon's end must not leak
/// into other children; the VMM's end is inherited on purpose, see `Launch`).
pub fn socket_pair() -> io::Result<(UnixStream, UnixStream)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array we pass.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh fds that we own; a seqpacket socket takes the same calls as a
    // stream socket (read, write, sendmsg, recvmsg).
    Ok(unsafe { (UnixStream::from_raw_fd(fds[0]), UnixStream::from_raw_fd(fds[1])) })
}

/// What the daemon hands a pooled VMM.
pub struct Handoff {
    /// `--net-fd` and `--cmdline-fd` hold indexes into `fds`.
    pub args: VmmArgs,
    pub stderr: OwnedFd,
    pub fds: Vec<OwnedFd>,
}

/// Sends `args` with `stderr` and `fds` (`args` name fds by their index in `fds`).
pub fn send(socket: &UnixStream, args: &VmmArgs, stderr: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
    let message = encode(&args.to_argv());
    if message.len() > MAX_MESSAGE {
        return Err(Error::TooLong);
    }
    let raw: Vec<RawFd> = std::iter::once(stderr.as_raw_fd())
        .chain(fds.iter().map(|fd| fd.as_raw_fd()))
        .collect();
    if raw.len() > MAX_FDS {
        return Err(Error::Args(format!("{} descriptors, at most {MAX_FDS}", raw.len())));
    }
    let sent = socket
        .send_with_fds(&[&message[..]], &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent != message.len() {
        return Err(Error::Io(io::Error::other("hand-off sent in part")));
    }
    Ok(())
}

/// Waits for the hand-off. `Ok(None)`: the daemon closed its end (nothing to run).
pub fn receive(socket: &UnixStream) -> Result<Option<Handoff>, Error> {
    // One byte more than the largest message: a message that fills it was cut.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points into `buf`, which lives across the call and may hold any
    // bytes.
    let (len, count) =
        unsafe { socket.recv_with_fds(&mut iov, &mut raw) }.map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: the first `count` entries are descriptors the kernel just gave us.
    let mut fds: Vec<OwnedFd> = raw[..count]
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if len > MAX_MESSAGE {
        return Err(Error::TooLong);
    }
    if fds.is_empty() {
        return Err(Error::NoStderr);
    }
    let stderr = fds.remove(0);
    let mut argv = vec![OsString::from(crate::VMM_BINARY)];
    argv.extend(decode(&buf[..len]));
    let args = VmmArgs::try_parse_from(argv).map_err(|e| {
        let text = e.to_string();
        Error::Args(
            text.lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_string(),
        )
    })?;
    Ok(Some(Handoff { args, stderr, fds }))
}

impl Handoff {
    /// Turns the indexes `--net-fd`, `--cmdline-fd`, `--control-fd` and `--console-feed-fd` hold into this process's fds (which
    /// the caller then owns as raw fds, as if inherited); descriptors nothing names are
    /// closed.
    pub fn resolve(self) -> Result<(VmmArgs, OwnedFd), Error> {
        let Handoff { mut args, stderr, fds } = self;
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let count = fds.len();
        let mut take = |index: RawFd| -> Result<RawFd, Error> {
            usize::try_from(index)
                .ok()
                .and_then(|i| fds.get_mut(i))
                .and_then(Option::take)
                .map(into_raw)
                .ok_or(Error::NoSuchFd { index, count })
        };
        args.net_fd = args.net_fd.map(&mut take).transpose()?;
        args.cmdline_fd = args.cmdline_fd.map(&mut take).transpose()?;
        args.control_fd = args.control_fd.map(&mut take).transpose()?;
        args.console_feed_fd = args.console_feed_fd.map(&mut take).transpose()?;
        Ok((args, stderr))
    }
}

fn into_raw(fd: OwnedFd) -> RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

fn encode(argv: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for arg in argv {
        out.extend_from_slice(arg.as_bytes());
        out.push(0);
    }
    out
}

fn decode(bytes: &[u8]) -> Vec<OsString> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// Whether the hand-off may run on a pooled VM of `memory` bytes and `vcpus` vCPUs (its
/// memory and vCPUs exist already). A restore's size comes from its snapshot: the VMM
/// checks it once it has read the snapshot.
pub fn fits(args: &VmmArgs, memory: u64, vcpus: u8) -> Result<(), String> {
    if args.pool_fd.is_some() {
        return Err("a hand-off cannot start another pool".into());
    }
    if args.restore.is_none() && (args.memory.bytes() != memory || args.vcpus != vcpus) {
        return Err(format!(
            "this pooled VM has {} and {vcpus} vCPUs, the hand-off asks for {} and {}",
            crate::size::MemSize::from_bytes(memory),
            args.memory,
            args.vcpus
        ));
    }
    Ok(())
}

/// Reads one message; true for [`READY`], false at end of file.
pub fn read_ready(socket: &UnixStream) -> io::Result<bool> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    let n = (&*socket).read(&mut buf)?;
    is_ready(&buf[..n])
}

/// One message a pooled VMM sent: true for [`READY`], false for end of file.
pub fn is_ready(message: &[u8]) -> io::Result<bool> {
    match message {
        [] => Ok(false),
        m if m == READY => Ok(true),
        other => Err(io::Error::other(format!(
            "unexpected message {:?}",
            std::ffi::OsStr::from_bytes(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_hand_off_carries_arguments_and_descriptors() {
        let (daemon, vmm) = socket_pair().unwrap();
        let mut log = tempfile();
        let tap = tempfile();
        let cmdline = tempfile();
        let control = tempfile();
        let feed = tempfile();
        let args = VmmArgs {
            net_fd: Some(1),
            cmdline_fd: Some(0),
            control_fd: Some(2),
            console_feed_fd: Some(3),
            cmdline: String::new(),
            trace_boot: true,
            ..VmmArgs::new("/images/http".into())
        };
        send(
            &daemon,
            &args,
            std::os::fd::AsFd::as_fd(&log),
            &[
                std::os::fd::AsFd::as_fd(&cmdline),
                std::os::fd::AsFd::as_fd(&tap),
                std::os::fd::AsFd::as_fd(&control),
                std::os::fd::AsFd::as_fd(&feed),
            ],
        )
        .unwrap();
        let got = receive(&vmm).unwrap().unwrap();
        assert_eq!(got.fds.len(), 4, "the most a hand-off carries, with stderr");
        let (resolved, stderr) = got.resolve().unwrap();
        assert_eq!(resolved.kernel, args.kernel);
        assert!(resolved.trace_boot);
        // The same open files, under new numbers: what is written through one is read
        // through the other.
        let mut stderr = std::fs::File::from(stderr);
        stderr.write_all(b"from the vmm").unwrap();
        let mut text = String::new();
        log.rewind().unwrap();
        log.read_to_string(&mut text).unwrap();
        assert_eq!(text, "from the vmm");
        for (fd, file) in [
            (resolved.net_fd, &tap),
            (resolved.cmdline_fd, &cmdline),
            (resolved.control_fd, &control),
            (resolved.console_feed_fd, &feed),
        ] {
            let fd = fd.unwrap();
            assert_ne!(fd, file.as_raw_fd());
            let ours = std::fs::metadata(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
            let theirs = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap();
            assert_eq!(
                std::os::unix::fs::MetadataExt::ino(&ours),
                std::os::unix::fs::MetadataExt::ino(&theirs)
            );
            // SAFETY: resolve handed these to us.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    #[test]
    fn the_daemon_closing_its_end_is_nothing_to_run() {
        let (daemon, vmm) = socket_pair().unwrap();
        (&vmm).write_all(READY).unwrap();
        assert!(read_ready(&daemon).unwrap());
        drop(daemon);
        assert!(receive(&vmm).unwrap().is_none());
        assert!(!read_ready(&vmm).unwrap());
    }

    #[test]
    fn bad_hand_offs_are_refused() {
        let (daemon, vmm) = socket_pair().unwrap();
        let log = tempfile();
        // No stderr.
        (&daemon).write_all(b"--kernel\0/k\0").unwrap();
        assert!(matches!(receive(&vmm), Err(Error::NoStderr)));
        // An index past the attached descriptors.
        let args = VmmArgs {
            net_fd: Some(3),
            ..VmmArgs::new("/k".into())
        };
        send(&daemon, &args, std::os::fd::AsFd::as_fd(&log), &[]).unwrap();
        let got = receive(&vmm).unwrap().unwrap();
        assert!(matches!(got.resolve(), Err(Error::NoSuchFd { index: 3, count: 0 })));
        // Arguments the VMM does not take.
        daemon.send_with_fds(&[&b"--bogus\0"[..]], &[log.as_raw_fd()]).unwrap();
        assert!(matches!(receive(&vmm), Err(Error::Args(_))));
        // Too long for one message.
        let long = VmmArgs {
            cmdline: "x".repeat(MAX_MESSAGE),
            ..VmmArgs::new("/k".into())
        };
        assert!(matches!(
            send(&daemon, &long, std::os::fd::AsFd::as_fd(&log), &[]),
            Err(Error::TooLong)
        ));
    }

    #[test]
    fn a_hand_off_must_fit_the_pooled_vm() {
        let args = VmmArgs::new("/k".into());
        let mib16 = 16 << 20;
        assert!(fits(&args, mib16, 1).is_ok());
        assert!(fits(&args, 2 * mib16, 1).unwrap_err().contains("asks for 16"));
        assert!(fits(&args, mib16, 2).is_err());
        let restore = VmmArgs {
            kernel: None,
            restore: Some("/s".into()),
            ..args.clone()
        };
        assert!(fits(&restore, 2 * mib16, 4).is_ok(), "checked against the snapshot");
        let pooled = VmmArgs {
            pool_fd: Some(3),
            ..args
        };
        assert!(fits(&pooled, mib16, 1).is_err());
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "uk-pool-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
