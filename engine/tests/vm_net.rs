//! The engine's host networking and a real VM together: a routed tap from `HostNetwork`,
//! handed to `unikernel-vmm` as an fd, and the http unikernel answering on its address.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#[path = "../../vmm/tests/common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::*;
use unikerneld::net::{AddressPool, HostNetwork, Mode};

#[test]
fn a_vm_on_a_routed_tap_answers_on_its_pool_address() {
    require_kvm();
    let kernel = image("http");
    let vmm_path = vmm_binary();
    let ns = Netns::new("e2e");
    let (status, body, tap) = ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut net = HostNetwork::new(Mode::Routed, AddressPool::default()).await.unwrap();
            let a = net.attach("web", None).await.unwrap();
            let tap_fd = a.tap_fd.as_raw_fd();
            let mut cmd = std::process::Command::new(&vmm_path);
            cmd.arg("--kernel")
                .arg(&kernel)
                .args(["--net-fd", "3", "--mac", &a.mac.to_string()])
                .args([
                    "--cmdline",
                    &format!("ip={}/{} gw={} port=80 name=web", a.address, a.prefix, a.gateway),
                ])
                .stdout(Stdio::piped());
            // SAFETY: dup2 is async-signal-safe; fd 3 is the tap in the child.
            unsafe {
                cmd.pre_exec(move || match libc::dup2(tap_fd, 3) {
                    -1 => Err(std::io::Error::last_os_error()),
                    _ => Ok(()),
                });
            }
            let mut vm = KillOnDrop(cmd.spawn().expect("spawn unikernel-vmm"));
            drop(a.tap_fd);
            let mut line = String::new();
            BufReader::new(vm.0.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "http: web listening on port 80\n");
            let (status, body) = http_get(&format!("{}:80", a.address)).expect("HTTP to the guest's pool address");
            drop(vm);
            net.detach("web").await.unwrap();
            (status, body, a.tap_name)
        })
    });
    assert_eq!((status, body.as_str()), (200, "web 1\n"));
    assert!(ns.ip(&["link", "show", &tap]).is_err(), "{tap} deleted on detach");
}
