//! One seccomp filter per kind of VMM thread, installed by each thread on itself before it
//! touches anything a guest controls: the vCPU threads (the main thread runs the boot vCPU)
//! and the event loop. Each allows the system calls its thread makes once the VM runs, and
//! `ioctl` only with the requests it uses; anything else traps, and the SIGSYS handler
//! ends the whole process with exit status 6 and an error line naming the call.
//!
//! Threads are all started before the first filter goes on (the event loop's own filter is
//! its first act), so no filter allows clone, execve, socket, open of a path outside the
//! snapshot directory's files, or mmap of executable memory.
//!
//! The lists come from tracing every VMM test (boot, net, console, pause, snapshot,
//! restore) with `strace -f`; the end-to-end tests run with the filters on, so a call
//! that is missing fails them.
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

/// The kinds of thread, each with its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thread {
    /// KVM_RUN and the exits it brings (port and MMIO I/O into the devices), saving its
    /// own state for a snapshot.
    Vcpu,
    /// Every device fd, the console and control sockets, writing snapshots.
    EventLoop,
}

#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct Error(String);

const KVMIO: u32 = 0xAE;

const fn io(nr: u32) -> u64 {
    ioctl_expr(_IOC_NONE, KVMIO, nr, 0) as u64
}

const fn ior<T>(nr: u32) -> u64 {
    ioctl_expr(_IOC_READ, KVMIO, nr, std::mem::size_of::<T>() as u32) as u64
}

const fn iowr<T>(nr: u32) -> u64 {
    ioctl_expr(_IOC_READ | _IOC_WRITE, KVMIO, nr, std::mem::size_of::<T>() as u32) as u64
}

use kvm_bindings as kb;

/// What a vCPU thread asks KVM for: running, and reading its state for a snapshot (or
/// for the watchdog's look at a halted guest). Restoring state happens before the jail.
const VCPU_IOCTLS: &[u64] = &[
    io(0x80),                         // KVM_RUN
    ior::<kb::kvm_regs>(0x81),        // KVM_GET_REGS
    ior::<kb::kvm_sregs>(0x83),       // KVM_GET_SREGS
    iowr::<kb::kvm_msrs>(0x88),       // KVM_GET_MSRS
    ior::<kb::kvm_lapic_state>(0x8e), // KVM_GET_LAPIC
    iowr::<kb::kvm_cpuid2>(0x91),     // KVM_GET_CPUID2
    ior::<kb::kvm_mp_state>(0x98),    // KVM_GET_MP_STATE
    ior::<kb::kvm_vcpu_events>(0x9f), // KVM_GET_VCPU_EVENTS
    ior::<kb::kvm_debugregs>(0xa1),   // KVM_GET_DEBUGREGS
    io(0xa3),                         // KVM_GET_TSC_KHZ
    ior::<kb::kvm_xsave>(0xa4),       // KVM_GET_XSAVE
    ior::<kb::kvm_xcrs>(0xa6),        // KVM_GET_XCRS
];

/// What the event loop asks: the VM's own state for a snapshot, and non-blocking mode on
/// accepted sockets.
const EVENT_LOOP_IOCTLS: &[u64] = &[
    libc::FIONBIO,
    iowr::<kb::kvm_msr_list>(0x02),  // KVM_GET_MSR_INDEX_LIST (the MSRs to save)
    io(0x03),                        // KVM_CHECK_EXTENSION (the xsave size)
    iowr::<kb::kvm_irqchip>(0x62),   // KVM_GET_IRQCHIP
    ior::<kb::kvm_clock_data>(0x7c), // KVM_GET_CLOCK
    ior::<kb::kvm_pit_state2>(0x9f), // KVM_GET_PIT2
];

/// Both kinds: memory (never executable), locks, time, signals, logging, the end.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The event loop's own: epoll, sockets already bound, device fds, snapshot files (inside
/// the jail only the snapshot directory is there to open).
const EVENT_LOOP: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_read,
    libc::SYS_recvfrom,
    // A control request's line and the descriptor that may come with it (a console feed).
    libc::SYS_recvmsg,
    // Checking that what came is a connected datagram socket.
    libc::SYS_getsockopt,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_timerfd_settime,
    libc::SYS_openat,
    // The path calls and their *at forms: which one the C library uses for mkdir(3),
    // rename(3), unlink(3) differs between versions.
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_ftruncate,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_mincore,
];

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| Error(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, Error> {
    SeccompRule::new(conditions).map_err(|e| Error(e.to_string()))
}

/// Allowed when the second argument (an fcntl command, an ioctl request: 32 bits wide,
/// whatever type the caller passes it as) is one of `values`.
fn second_arg_one_of(values: &[u64]) -> Result<Vec<SeccompRule>, Error> {
    values
        .iter()
        .map(|&value| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                .map_err(|e| Error(e.to_string()))
                .and_then(|c| rule(vec![c]))
        })
        .collect()
}

/// The rules of one thread kind, by system call number (no rule: always allowed).
fn rules(kind: Thread) -> Result<BTreeMap<i64, Vec<SeccompRule>>, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let own: &[libc::c_long] = match kind {
        Thread::Vcpu => &[],
        Thread::EventLoop => EVENT_LOOP,
    };
    for &nr in COMMON.iter().chain(own) {
        rules.insert(nr, Vec::new());
    }
    // W^X: no executable mapping, ever (a guest that took over the VMM gets no new code).
    let not_exec = || condition(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    rules.insert(libc::SYS_mmap, vec![rule(vec![not_exec()?])?]);
    rules.insert(libc::SYS_mprotect, vec![rule(vec![not_exec()?])?]);
    // Console output to its socket's client, from whichever thread the serial port runs
    // on (a vCPU's, for the guest's writes): on connected sockets only, never addressed.
    rules.insert(libc::SYS_sendto, vec![rule(vec![condition(4, SeccompCmpOp::Eq, 0)?])?]);
    // Reading an fd's flags (the standard library's debug check on close does, on any
    // thread); the event loop also sets O_NONBLOCK.
    let fcntl_cmds: &[libc::c_int] = match kind {
        Thread::Vcpu => &[libc::F_GETFD],
        Thread::EventLoop => &[libc::F_GETFD, libc::F_GETFL, libc::F_SETFL],
    };
    let fcntl_cmds: Vec<u64> = fcntl_cmds.iter().map(|&c| c as u64).collect();
    rules.insert(libc::SYS_fcntl, second_arg_one_of(&fcntl_cmds)?);
    let ioctls = match kind {
        Thread::Vcpu => VCPU_IOCTLS,
        Thread::EventLoop => EVENT_LOOP_IOCTLS,
    };
    rules.insert(libc::SYS_ioctl, second_arg_one_of(ioctls)?);
    Ok(rules)
}

/// The compiled filter of one thread kind.
pub fn program(kind: Thread) -> Result<BpfProgram, Error> {
    let filter = SeccompFilter::new(
        rules(kind)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error(e.to_string()))
}

/// Closes the calling thread in with its kind's filter (for good: filters only add up).
pub fn apply(program: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(program).map_err(|e| Error(e.to_string()))
}

/// Both filters, compiled before any thread starts.
#[derive(Clone)]
pub struct Filters {
    pub vcpu: BpfProgram,
    pub event_loop: BpfProgram,
}

impl Filters {
    pub fn compile() -> Result<Filters, Error> {
        Ok(Filters {
            vcpu: program(Thread::Vcpu)?,
            event_loop: program(Thread::EventLoop)?,
        })
    }
}

/// For a thread that cannot return an error: filtered, or the whole process ends (a VMM
/// must never run a guest unfiltered because a filter did not go on).
pub fn apply_or_exit(program: &BpfProgram) {
    if let Err(e) = apply(program) {
        eprintln!("{}", contract::exit::error_line(&e));
        std::process::exit(i32::from(contract::exit::ExitStatus::Refused.code()));
    }
}

/// Offset of `si_syscall` in a SIGSYS siginfo_t on x86_64: signo, errno, code (with
/// padding) take 16 bytes, then `_sigsys` holds the call address and the call number.
const SI_SYSCALL_OFFSET: usize = 24;

const TRAPPED: &[u8] = b"unikernel-vmm: error: seccomp: system call ";
const TRAPPED_END: &[u8] =
    b" is not allowed on this VMM thread (a VMM bug, or a compromised VMM); run with --no-seccomp to debug\n";

/// Formats `n` into `buf` without allocating (this runs in a signal handler).
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a SIGSYS handler a valid siginfo whose _sigsys member is
    // filled in; the offset is that of si_syscall on x86_64.
    let nr = unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>().read_unaligned() };
    let mut digits = [0u8; 10];
    let number = decimal(nr.unsigned_abs(), &mut digits);
    for part in [TRAPPED, number, TRAPPED_END] {
        // SAFETY: write(2) of a valid buffer to stderr; async-signal-safe, and allowed by
        // every filter. A short write loses part of a message, nothing else.
        unsafe { libc::write(libc::STDERR_FILENO, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: _exit is async-signal-safe; no Rust code runs after it.
    unsafe { libc::_exit(i32::from(contract::exit::ExitStatus::BadSyscall.code())) };
}

/// Installs the SIGSYS handler that turns a trapped call into a clean end of the process.
pub fn install_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a forked child with `kind`'s filter and the SIGSYS handler on, and
    /// returns how the child ended. Between fork and exit the child makes raw system
    /// calls only (the test harness is multi-threaded: no allocation after fork).
    fn in_filtered_child(kind: Thread, body: fn() -> libc::c_int) -> i32 {
        let program = program(kind).unwrap();
        // SAFETY: the child only calls async-signal-safe functions and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if install_handler().is_ok() && apply(&program).is_ok() {
                body()
            } else {
                99
            };
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "the child was killed: status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    const BAD_SYSCALL: i32 = contract::exit::ExitStatus::BadSyscall as i32;

    #[test]
    fn allowed_calls_pass() {
        for kind in [Thread::Vcpu, Thread::EventLoop] {
            let code = in_filtered_child(kind, || {
                // SAFETY: plain system calls on our own process.
                unsafe {
                    let _ = libc::getpid();
                    let _ = libc::write(libc::STDERR_FILENO, b"".as_ptr().cast(), 0);
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        1
                    } else {
                        libc::munmap(p, 4096)
                    }
                }
            });
            assert_eq!(code, 0, "{kind:?}");
        }
    }

    #[test]
    fn a_call_outside_the_filter_ends_the_process_with_status_6() {
        for kind in [Thread::Vcpu, Thread::EventLoop] {
            // A guest that took over the VMM wants a socket to the outside world.
            let code = in_filtered_child(kind, || {
                // SAFETY: a system call the filter forbids; it never returns.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
            });
            assert_eq!(code, BAD_SYSCALL, "{kind:?}");
        }
        // A vCPU thread has no business opening files.
        let code = in_filtered_child(Thread::Vcpu, || {
            // SAFETY: as above.
            unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) }
        });
        assert_eq!(code, BAD_SYSCALL);
    }

    #[test]
    fn executable_memory_and_unlisted_ioctls_are_refused() {
        let code = in_filtered_child(Thread::EventLoop, || {
            // SAFETY: a system call the filter forbids for its PROT_EXEC.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            i32::from(p == libc::MAP_FAILED)
        });
        assert_eq!(code, BAD_SYSCALL);
        let code = in_filtered_child(Thread::Vcpu, || {
            let mut on: libc::c_int = 1;
            // SAFETY: FIONBIO is the event loop's, not a vCPU's: trapped before it runs.
            unsafe { libc::ioctl(libc::STDERR_FILENO, libc::FIONBIO, &mut on) }
        });
        assert_eq!(code, BAD_SYSCALL);
        let code = in_filtered_child(Thread::EventLoop, || {
            let mut on: libc::c_int = 0;
            // SAFETY: FIONBIO (off, as it was) on stderr: allowed on the event loop.
            unsafe { libc::ioctl(libc::STDERR_FILENO, libc::FIONBIO, &mut on) }
                .min(0)
                .abs()
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn numbers_are_written_without_allocating() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(41, &mut buf), b"41");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    }
}
