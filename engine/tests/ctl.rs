//! `unikernelctl check` and `plan --offline`, as a user runs them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
use std::process::Command;

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_unikernelctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn dir(tag: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ukctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    d
}

#[test]
fn check_exits_zero_on_valid_and_one_on_invalid_with_the_place() {
    let good = dir("good", &[("web.kdl", "unikernel \"web\" { image \"/x\" }\n")]);
    let (code, out, _) = ctl(&["check", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("1 unikernel(s) declared, configuration OK"), "{out}");

    let bad = dir(
        "bad",
        &[("web.kdl", "unikernel \"web\" {\n  image \"/x\"\n  vcpus \"two\"\n}\n")],
    );
    let (code, out, err) = ctl(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("1 error(s)"), "{out}");
    assert!(
        err.contains("vcpus must be a number") && err.contains("web.kdl:3:"),
        "{err}"
    );
    for d in [good, bad] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn plan_offline_lists_what_would_be_created() {
    let d = dir(
        "plan",
        &[(
            "a.kdl",
            "unikernel \"a\" { image \"/a\" }\nunikernel \"b\" { image \"/b\" }\n",
        )],
    );
    let (code, out, _) = ctl(&["plan", "--offline", d.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("+ a (create") && out.contains("+ b (create"), "{out}");
    assert!(
        out.contains("Plan: 2 to create, 0 to replace, 0 to update in place, 0 to stop, 0 unchanged."),
        "{out}"
    );
    // Without --offline it asks the daemon; with no bus it says so and how to go on.
    let out = Command::new(env!("CARGO_BIN_EXE_unikernelctl"))
        .args(["plan", d.to_str().unwrap()])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("use --offline"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn deeply_nested_and_huge_files_are_errors_not_crashes() {
    // 1,500 levels (about 11 KB) overflowed the parser's stack and aborted us (rc 134).
    let deep = format!(
        "unikernel \"web\" {{\n    image \"/x\"\n{}{}}}\n",
        "n {\n".repeat(1500),
        "}\n".repeat(1500)
    );
    // Past the bound on blocks: refused before the parser is asked.
    let huge = "a {\n".repeat(20_000) + &"}\n".repeat(20_000);
    let d = dir(
        "deep",
        &[
            ("deep.kdl", &deep),
            ("huge.kdl", &huge),
            ("ok.kdl", "unikernel \"ok\" { image \"/ok\" }\n"),
        ],
    );
    let (code, _, err) = ctl(&["check", d.to_str().unwrap()]);
    assert_eq!(code, 1, "a clear failure, not an abort: {err}");
    assert!(err.contains("deep.kdl:3:1"), "{err}");
    assert!(err.contains("more than 16384 blocks"), "{err}");
    assert!(err.contains("huge.kdl:16385:3"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn check_knows_the_pool_the_host_and_the_command_line_limit() {
    let net =
        |address: &str| format!("unikernel \"web\" {{\n    image \"/x\"\n    net {{ address \"{address}\" }}\n}}\n");
    let outside = dir("pool-out", &[("web.kdl", &net("192.168.7.5"))]);
    let (code, _, err) = ctl(&["check", outside.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("web.kdl:1:1") && err.contains("192.168.7.5"), "{err}");
    let (code, _, err) = ctl(&["check", outside.to_str().unwrap(), "--pool", "192.168.7.0/24"]);
    assert_eq!(code, 0, "inside the pool given: {err}");
    let gateway = dir("pool-gw", &[("web.kdl", &net("10.200.0.1"))]);
    let (code, _, err) = ctl(&["check", gateway.to_str().unwrap()]);
    assert_eq!(code, 1, "the gateway is the host's: {err}");

    let huge = dir(
        "mem",
        &[(
            "web.kdl",
            "unikernel \"web\" {\n    image \"/x\"\n    memory \"100000G\"\n}\n",
        )],
    );
    let (code, _, err) = ctl(&["check", huge.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("web.kdl:3:12") && err.contains("more than this host's RAM"),
        "{err}"
    );

    let long = format!(
        "unikernel \"web\" {{\n    image \"/x\"\n    cmdline \"{}\"\n}}\n",
        "x".repeat(70_000)
    );
    let long = dir("cmdline", &[("web.kdl", &long)]);
    let (code, _, err) = ctl(&["check", long.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("70000 bytes, more than the 64512"), "{err}");
}
