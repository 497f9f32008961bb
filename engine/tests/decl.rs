//! Declarations: parsing, validation, diagnostics with places, last-good per file,
//! cross-file duplicates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
use std::path::{Path, PathBuf};

use unikerneld::decl::parse::parse_file;
use unikerneld::decl::{Loader, RestartPolicy};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("ukdecl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const WEB: &str = r#"
unikernel "web" {
    image "/usr/share/unikerneld/images/http"
    cmdline "name=web"
    env LOG="info" MODE="prod"
    memory "32M"
    vcpus 2
    net {
        expose 8080 guest=80
        expose 8443
    }
    restart "on-failure"
}
"#;

fn parse(text: &str) -> (Vec<unikerneld::decl::Spec>, Vec<unikerneld::decl::DeclError>) {
    parse_file(Path::new("/etc/unikernels/test.kdl"), text)
}

#[test]
fn a_full_declaration_parses_into_a_spec() {
    let (specs, diags) = parse(WEB);
    assert!(diags.is_empty(), "{diags:?}");
    let s = &specs[0];
    assert_eq!(s.name, "web");
    assert_eq!(s.memory_bytes, 32 << 20);
    assert_eq!(s.vcpus, 2);
    assert_eq!(s.restart, RestartPolicy::OnFailure);
    assert_eq!(s.guest_cmdline(None), "name=web LOG=info MODE=prod");
    let net = s.net.as_ref().unwrap();
    assert_eq!(
        net.expose.iter().map(|e| (e.host, e.guest)).collect::<Vec<_>>(),
        vec![(8080, 80), (8443, 8443)]
    );
    assert_eq!((s.source.line, s.source.column), (2, 1));
}

#[test]
fn defaults_apply_and_several_services_fit_in_one_file() {
    let (specs, diags) = parse("unikernel \"a\" { image \"/a\" }\nunikernel \"b\" { image \"/b\" }\n");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(specs.len(), 2);
    assert_eq!(
        (specs[0].memory_bytes, specs[0].vcpus, specs[0].restart),
        (16 << 20, 1, RestartPolicy::Always)
    );
    assert_eq!(specs[1].source.line, 2);
}

fn first_error(text: &str) -> unikerneld::decl::DeclError {
    let (specs, diags) = parse(text);
    assert!(specs.is_empty(), "should not yield a spec");
    diags.into_iter().find(|d| d.is_error()).expect("an error")
}

#[test]
fn mistakes_are_reported_where_they_are_with_help() {
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    memroy \"16M\"\n}\n");
    assert_eq!((e.line, e.column), (3, 5));
    assert!(e.message.contains("unknown setting `memroy`"));
    assert_eq!(e.help.as_deref(), Some("did you mean `memory`?"));
    assert_eq!(
        e.one_line(),
        "/etc/unikernels/test.kdl:3:5: unknown setting `memroy` (did you mean `memory`?)"
    );

    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    memory \"16Q\"\n}\n");
    assert_eq!(e.line, 3);
    assert!(e.help.unwrap().contains("sizes look like 16M or 1G"));

    let e = first_error("unikernel \"web\" {\n    image \"relative/x\"\n}\n");
    assert!(e.message.contains("is relative"), "{}", e.message);

    let e = first_error("unikernel \"web\" {\n    cmdline \"x\"\n}\n");
    assert!(e.message.contains("has no image"));

    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    restart \"alwys\"\n}\n");
    assert_eq!(e.help.as_deref(), Some("did you mean `always`?"));

    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    net { expose 8080 gest=80 }\n}\n");
    assert_eq!(e.help.as_deref(), Some("did you mean `guest`?"));

    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    vcpus 0\n}\n");
    assert!(e.message.contains("out of range"));

    let e = first_error("unikernl \"web\" { image \"/x\" }\n");
    assert_eq!(e.help.as_deref(), Some("did you mean `unikernel`?"));

    let e = first_error("unikernel \"bad name!\" { image \"/x\" }\n");
    assert!(e.message.contains("invalid service name"));
}

#[test]
fn addresses_ports_and_env_names_that_cannot_work_are_refused() {
    for bad in ["0.0.0.0", "127.0.0.1", "255.255.255.255", "224.0.0.1"] {
        let e = first_error(&format!(
            "unikernel \"w\" {{\n    image \"/x\"\n    net {{ address \"{bad}\" }}\n}}\n"
        ));
        assert!(
            e.message.contains("cannot be a guest's address"),
            "{bad}: {}",
            e.message
        );
        assert_eq!(e.line, 3);
    }
    let e = first_error("unikernel \"w\" {\n    image \"/x\"\n    net {\n        expose 6060 guest=80\n        expose 6060 guest=81\n    }\n}\n");
    assert_eq!((e.line, e.column), (5, 9), "{}", e.one_line());
    assert!(e.message.contains("host port 6060 is exposed twice"));
    let e = first_error("unikernel \"w\" {\n    image \"/x\"\n    env \"A B\"=\"1\"\n}\n");
    assert!(e.message.contains("invalid env name \"A B\""), "{}", e.message);
}

#[test]
fn a_file_with_thousands_of_mistakes_reports_the_first_fifty_and_a_count() {
    let text = "junk\n".repeat(20_000);
    let (specs, diags) = parse(&text);
    assert!(specs.is_empty());
    assert_eq!(diags.len(), 51);
    assert_eq!((diags[49].line, diags[49].column), (50, 1));
    assert!(
        diags[50].message.contains("19950 more problems"),
        "{}",
        diags[50].message
    );
    assert_eq!(diags[50].line, 51);
}

#[test]
fn placeholders_are_checked_where_they_are_written() {
    // Column 24 is the `{` of the misspelt placeholder itself.
    let e = first_error(
        "unikernel \"web\" {\n    image \"/x\"\n    cmdline \"netdev.ip={adress}/{prefix}\"\n    net { }\n}\n",
    );
    assert_eq!((e.line, e.column), (3, 24), "{}", e.one_line());
    assert!(e.message.contains("unknown placeholder {adress}"), "{}", e.message);
    assert!(e.help.as_deref().unwrap().contains("did you mean {address}?"));

    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    env IP=\"{address}\"\n}\n");
    assert_eq!(e.line, 3);
    assert!(
        e.message.contains("{address} needs the service's network"),
        "{}",
        e.message
    );

    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    cmdline \"a } b\"\n}\n");
    assert!(e.help.as_deref().unwrap().contains("}}"), "{:?}", e.help);

    // `net` after the cmdline that uses it, and literal braces: fine.
    let (specs, diags) =
        parse("unikernel \"web\" {\n    image \"/x\"\n    cmdline \"ip={address} j={{1}}\"\n    net { }\n}\n");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(specs.len(), 1);
}

#[test]
fn syntax_errors_point_at_the_line() {
    let e = first_error("unikernel \"web\" {\n    image \"/x\n}\n");
    assert!(e.message.starts_with("syntax error"), "{}", e.message);
    assert!(e.line >= 2, "line {}", e.line);
}

#[test]
fn kdl_v1_is_accepted_with_a_warning_that_says_how_to_convert() {
    let (specs, diags) = parse("unikernel \"web\" {\n    image \"/x\"\n    enabled true\n}\n");
    // `enabled` is unknown, but the point here is the version: v1 `true` is parsed.
    assert!(specs.is_empty());
    assert!(
        diags.iter().any(|d| !d.is_error() && d.message.contains("KDL v1")),
        "{diags:?}"
    );
    let (specs, diags) = parse("unikernel web {\n    image \"/x\"\n}\n");
    assert_eq!(specs.len(), 1, "v2 accepts bare identifiers: {diags:?}");
}

#[test]
fn a_broken_file_keeps_its_last_good_specs_and_others_are_untouched() {
    let dir = Dir::new("lastgood");
    dir.write("web.kdl", "unikernel \"web\" { image \"/a\"\n memory \"16M\" }\n");
    dir.write("api.kdl", "unikernel \"api\" { image \"/b\" }\n");
    let mut loader = Loader::default();
    let first = loader.load_dir(&dir.0);
    assert_eq!(first.specs.keys().collect::<Vec<_>>(), vec!["api", "web"]);
    assert_eq!(first.errors().count(), 0);

    dir.write("web.kdl", "unikernel \"web\" { image \"/a\"\n memory \"32M\" \n"); // unclosed block
    dir.write("api.kdl", "unikernel \"api\" { image \"/b2\" }\n");
    let second = loader.load_dir(&dir.0);
    assert_eq!(second.failed_files, vec![dir.0.join("web.kdl")]);
    assert_eq!(
        second.specs["web"].memory_bytes,
        16 << 20,
        "last good spec of web.kdl kept"
    );
    assert_eq!(
        second.specs["api"].image,
        Path::new("/b2"),
        "api.kdl applies on its own"
    );

    dir.write("web.kdl", "unikernel \"web\" { image \"/a\"\n memory \"32M\" }\n");
    let third = loader.load_dir(&dir.0);
    assert!(third.failed_files.is_empty());
    assert_eq!(third.specs["web"].memory_bytes, 32 << 20, "the fix converges");

    std::fs::remove_file(dir.0.join("web.kdl")).unwrap();
    let fourth = loader.load_dir(&dir.0);
    assert!(!fourth.specs.contains_key("web"), "a removed file removes its services");
}

#[test]
fn the_same_name_in_two_files_is_reported_at_both_and_the_running_one_stays() {
    let dir = Dir::new("dup");
    dir.write("b.kdl", "unikernel \"web\" { image \"/from-b\" }\n");
    let mut loader = Loader::default();
    assert_eq!(loader.load_dir(&dir.0).specs["web"].image, Path::new("/from-b"));
    dir.write("a.kdl", "// a comment\nunikernel \"web\" { image \"/from-a\" }\n");
    let loaded = loader.load_dir(&dir.0);
    assert_eq!(
        loaded.specs["web"].image,
        Path::new("/from-b"),
        "the one in force stays, though a.kdl sorts first"
    );
    let errors: Vec<String> = loaded.errors().map(|e| e.one_line()).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("a.kdl:2:1") && e.contains("also declared at") && e.contains("b.kdl:1:1")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("b.kdl:1:1") && e.contains("a.kdl:2:1")),
        "{errors:?}"
    );
}

#[test]
fn host_ports_and_addresses_are_unique_across_files() {
    let dir = Dir::new("ports");
    dir.write(
        "a.kdl",
        "unikernel \"a\" { image \"/a\"\n net { expose 8080\n address \"10.200.0.9\" } }\n",
    );
    dir.write("b.kdl", "unikernel \"b\" { image \"/b\"\n net { expose 8080 } }\n");
    dir.write(
        "c.kdl",
        "unikernel \"c\" { image \"/c\"\n net { address \"10.200.0.9\" } }\n",
    );
    let loaded = Loader::default().load_dir(&dir.0);
    assert_eq!(loaded.specs.keys().collect::<Vec<_>>(), vec!["a"]);
    let errors: Vec<String> = loaded.errors().map(|e| e.message.clone()).collect();
    assert!(
        errors.iter().any(|e| e.starts_with("host port 8080 is also declared")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("address 10.200.0.9 is also declared")),
        "{errors:?}"
    );
}

#[test]
fn editor_temporary_files_are_not_declarations() {
    let dir = Dir::new("tmpfiles");
    dir.write(".web.kdl.swp", "garbage");
    dir.write(".#web.kdl", "garbage");
    dir.write("web.kdl~", "garbage");
    dir.write("notes.txt", "garbage");
    dir.write("web.kdl", "unikernel \"web\" { image \"/a\" }\n");
    let loaded = Loader::default().load_dir(&dir.0);
    assert_eq!(loaded.specs.len(), 1);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
}

#[test]
fn spec_hashes_change_with_what_matters_only() {
    let (a, _) = parse(WEB);
    let (b, _) = parse_file(Path::new("/elsewhere.kdl"), &format!("\n\n{WEB}"));
    assert_eq!(a[0].hash(), b[0].hash(), "moving a declaration does not change the VM");
    let (c, _) = parse(&WEB.replace("32M", "64M"));
    assert_ne!(a[0].hash(), c[0].hash());
    assert_eq!(c[0].changed_fields(&a[0]), vec!["memory"]);
}

#[test]
fn standby_settings_parse_and_their_mistakes_say_where() {
    use std::time::Duration;
    use unikerneld::decl::Connections;
    let ok = "unikernel \"web\" {\n    image \"/x\"\n    net { expose 8080 guest=80 }\n    standby idle=\"90s\" connections=\"hold\" prewarm=#true\n}\n";
    let (specs, diags) = parse(ok);
    assert!(diags.is_empty(), "{diags:?}");
    let s = specs[0].standby.unwrap();
    assert_eq!(s.idle, Duration::from_secs(90));
    assert_eq!(s.connections, Connections::Hold);
    assert!(s.prewarm);
    let (specs, _) = parse("unikernel \"web\" {\n    image \"/x\"\n    net { expose 8080 }\n    standby\n}\n");
    let s = specs[0].standby.unwrap();
    assert_eq!(
        (s.idle, s.connections, s.prewarm),
        (Duration::from_secs(30), Connections::KeepAwake, false)
    );
    // Standby settings change in place: not part of the VM's hash.
    let (plain, _) = parse("unikernel \"web\" {\n    image \"/x\"\n    net { expose 8080 }\n}\n");
    assert_eq!(plain[0].hash(), specs[0].hash());
    assert_eq!(plain[0].changed_live_fields(&specs[0]), vec!["standby"]);

    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    standby idle=\"30s\"\n}\n");
    assert_eq!((e.line, e.column), (3, 5));
    assert!(e.message.contains("standby needs an exposed port"), "{}", e.message);
    let with_net = |setting: &str| {
        first_error(&format!(
            "unikernel \"web\" {{\n    image \"/x\"\n    net {{ expose 8080 }}\n    standby {setting}\n}}\n"
        ))
    };
    let e = with_net("idle=\"30\"");
    assert_eq!(e.line, 4);
    assert!(e.help.unwrap().contains("like \"30s\""));
    assert!(with_net("idle=\"50ms\"").message.contains("invalid idle time"));
    assert!(with_net("idle=30").message.contains("takes a string"));
    assert_eq!(
        with_net("connections=\"keep_awake\"").help.as_deref(),
        Some("did you mean `keep-awake`?")
    );
    assert_eq!(with_net("idel=\"1s\"").help.as_deref(), Some("did you mean `idle`?"));
    assert!(with_net("\"30s\"").message.contains("properties, not values"));
    assert!(with_net("prewarm=\"yes\"").message.contains("#true or #false"));
}

#[test]
fn a_host_port_may_name_its_bind_address() {
    let (specs, diags) =
        parse("unikernel \"web\" {\n    image \"/x\"\n    net {\n        expose 8080 guest=80 bind=\"127.0.0.1\"\n        expose 9090\n    }\n}\n");
    assert!(diags.is_empty(), "{diags:?}");
    let e: Vec<_> = specs[0].exposed().collect();
    assert_eq!(e[0].bind, std::net::Ipv4Addr::LOCALHOST);
    assert!(e[1].bind.is_unspecified(), "all addresses by default");
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    net { expose 8080 bind=\"localhost\" }\n}\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("bind takes one IPv4 address"), "{}", e.message);
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    net { expose 8080 bnd=\"127.0.0.1\" }\n}\n");
    assert_eq!(e.help.as_deref(), Some("did you mean `bind`?"));
}

#[test]
fn connection_limits_parse_and_change_in_place() {
    let (specs, diags) =
        parse("unikernel \"web\" {\n    image \"/x\"\n    net {\n        expose 8080\n        connections max=48 idle=\"60s\"\n    }\n}\n");
    assert!(diags.is_empty(), "{diags:?}");
    let c = specs[0].net.as_ref().unwrap().connections;
    assert_eq!((c.max, c.idle), (Some(48), Some(std::time::Duration::from_secs(60))));
    let (plain, _) = parse("unikernel \"web\" {\n    image \"/x\"\n    net {\n        expose 8080\n    }\n}\n");
    assert_eq!(plain[0].hash(), specs[0].hash(), "not part of the VM");
    assert_eq!(plain[0].changed_live_fields(&specs[0]), vec!["connections"]);
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    net { connections idle=\"500ms\" }\n}\n");
    assert!(e.message.contains("invalid idle timeout"), "{}", e.message);
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    net { connections max=0 }\n}\n");
    assert!(e.message.contains("out of range"), "{}", e.message);
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    net { connections most=3 }\n}\n");
    assert!(e.message.contains("connections takes max=N"), "{}", e.message);
}

#[test]
fn limits_parse_change_in_place_and_are_checked_against_the_guest() {
    let (specs, diags) = parse(
        "unikernel \"web\" {\n    image \"/x\"\n    limits {\n        memory-max \"48M\"\n        cpu-weight 50\n        cpu-quota \"25%\"\n        tasks-max 8\n    }\n}\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    let l = specs[0].limits;
    assert_eq!(
        (l.memory_max, l.cpu_weight, l.cpu_quota_percent, l.tasks_max),
        (Some(48 << 20), Some(50), Some(25), Some(8))
    );
    let (plain, _) = parse("unikernel \"web\" {\n    image \"/x\"\n}\n");
    assert!(plain[0].limits.is_empty());
    assert_eq!(plain[0].hash(), specs[0].hash(), "limits apply to the running VM");
    assert_eq!(plain[0].changed_live_fields(&specs[0]), vec!["limits"]);

    // memory-max is checked against memory even when memory comes later.
    let e = first_error(
        "unikernel \"web\" {\n    image \"/x\"\n    limits { memory-max \"16M\"; }\n    memory \"32M\"\n}\n",
    );
    assert_eq!((e.line, e.column), (3, 25));
    assert!(
        e.message.contains("less than the guest's memory (32M)"),
        "{}",
        e.message
    );
    assert!(e.help.unwrap().contains("\"36M\""));
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    limits { cpu-quota \"250%\"; }\n}\n");
    assert!(e.help.unwrap().contains("\"100%\" (100% per vCPU)"));
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    vcpus 2\n    limits { tasks-max 3; }\n}\n");
    assert!(e.message.contains("out of range"), "{}", e.message);
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    limits { memory-mx \"64M\"; }\n}\n");
    assert_eq!(e.help.as_deref(), Some("did you mean `memory-max`?"));
    let e = first_error("unikernel \"web\" {\n    image \"/x\"\n    limits \"64M\"\n}\n");
    assert!(e.message.contains("takes a block"), "{}", e.message);
}
