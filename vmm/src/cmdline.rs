//! The guest's command line as the VMM hands it over: the user's, with the VMM's own
//! kernel parameters (the virtio-mmio devices) among the *boot* arguments, before ` -- `.
//! Linux and Unikraft read kernel parameters only before ` -- `; what follows belongs to
//! the application (Linux's init, a Unikraft app's argv), so a device parameter placed
//! after it is never seen (Firecracker keeps the two parts apart the same way).
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "the command line must be printable ASCII to carry device parameters ({0:?}); \
         keep other characters out of --cmdline"
    )]
    Invalid(String),
}

/// A virtio-mmio device the guest must be told about.
#[derive(Clone, Copy, Debug)]
pub struct MmioDevice {
    pub base: u64,
    pub len: u64,
    pub irq: u32,
}

/// `user` with `devices` announced among its boot arguments. Without devices the user's
/// command line goes to the guest verbatim.
pub fn with_devices(user: &str, devices: &[MmioDevice]) -> Result<String, Error> {
    if devices.is_empty() {
        return Ok(user.to_string());
    }
    let invalid = |e: linux_loader::cmdline::Error| Error::Invalid(e.to_string());
    let (boot, init) = contract::cmdline::split(user);
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(invalid)?;
    if !boot.trim().is_empty() {
        cl.insert_str(boot).map_err(invalid)?;
    }
    for d in devices {
        cl.add_virtio_mmio_device(d.len, GuestAddress(d.base), d.irq, None)
            .map_err(invalid)?;
    }
    let mut out = cl
        .as_cstring()
        .map_err(invalid)?
        .into_string()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    // The separator stays even with nothing after it: some guests look for it.
    if let Some(init) = init {
        out.push_str(" --");
        if !init.is_empty() {
            out.push(' ');
            out.push_str(init);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: MmioDevice = MmioDevice {
        base: 0xd000_0000,
        len: 0x1000,
        irq: 5,
    };
    const DEV: &str = "virtio_mmio.device=4K@0xd0000000:5";

    #[test]
    fn device_parameters_go_before_the_application_arguments() {
        let cases = [
            ("", DEV.to_string()),
            ("name=web", format!("name=web {DEV}")),
            (
                "netdev.ip=10.0.0.2/24:10.0.0.1 -- -p 80 --verbose",
                format!("netdev.ip=10.0.0.2/24:10.0.0.1 {DEV} -- -p 80 --verbose"),
            ),
            ("-- /bin/app -x", format!("{DEV} -- /bin/app -x")),
            ("a -- b -- c", format!("a {DEV} -- b -- c")),
            ("a=\"x -- y\" -- z", format!("a=\"x -- y\" {DEV} -- z")),
            ("console=ttyS0 --", format!("console=ttyS0 {DEV} --")),
        ];
        for (user, want) in cases {
            assert_eq!(with_devices(user, &[NET]).unwrap(), want, "{user:?}");
        }
    }

    #[test]
    fn without_devices_the_line_is_verbatim_and_bad_text_is_refused_with_them() {
        assert_eq!(with_devices("héllo -- x", &[]).unwrap(), "héllo -- x");
        assert!(with_devices("héllo", &[NET]).is_err());
    }
}
