//! The schema's readings and refusals, through both readers.
use super::*;

/// The fast reader is an optimisation: every file must give the same specs and the
/// same diagnostics as through kdl alone.
#[test]
fn the_fast_reader_and_kdl_give_the_same_specs_and_diagnostics() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/declarations");
    let mut corpus: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    corpus.extend(
        [
            "unikernel \"web\" {\n    image \"/i\"\n    cmdline \"name={name} ip={address}/{prefix}\"\n    env LOG=\"info\" A=\"b\"\n    memory \"24M\"\n    vcpus 2\n    initrd \"/r\"\n    net {\n        address \"10.200.0.5\"\n        expose 8080 guest=80 bind=\"127.0.0.1\"\n        expose 8443\n        connections max=48 idle=\"60s\"\n    }\n    restart \"on-failure\"\n    standby idle=\"30s\" connections=\"hold\" prewarm=#true\n    limits { memory-max \"64M\"; cpu-weight 50; cpu-quota \"50%\"; tasks-max 8; }\n}\n",
            "unikernel \"a\" { image \"/a\"; }\nunikernel \"b\" { image \"/b\"; restart never; }\n",
            // Mistakes: the diagnostics come from kdl's document either way.
            "unikernel \"a\" { image \"/a\"; memroy \"16M\"; }\n",
            "unikernel \"a\" { image \"relative\"; }\n",
            "unikernel \"a\" { cmdline \"{nope}\"; image \"/a\"; }\n",
            "unikernel \"a\" { image \"/a\"; limits { memory-max \"1M\"; } }\n",
            "unikernl \"a\" { image \"/a\" }\n",
            "unikernel \"a\" { image \"/a\" \n",
            "unikernel \"a\" { image \"/a\\\"\" }\n",
        ]
        .map(String::from),
    );
    for text in &corpus {
        let path = Path::new("/etc/unikernels/t.kdl");
        let (specs, diags) = parse_file(path, text);
        let r = Reporter::new(path, Arc::new(text.clone()));
        let (kdl_specs, kdl_diags) = parse_with_kdl(&r, text, Vec::new());
        assert_eq!(specs, kdl_specs, "{text}");
        let lines = |d: &[DeclError]| d.iter().map(|d| d.one_line()).collect::<Vec<_>>();
        assert_eq!(lines(&diags), lines(&kdl_diags), "{text}");
    }
    assert!(
        super::super::fast::parse(&corpus[corpus.len() - 9]).is_some(),
        "the full example is in the subset"
    );
}

#[test]
fn a_file_that_would_hold_the_kdl_reader_for_minutes_is_refused_at_once() {
    // Found by fuzz/kdl (minimised), in two shapes: kdl 6 reads these in time doubling
    // with each level (the second is valid KDL).
    for (open, ninth) in [("/-{b ", 15 + 5 * 8), ("/-b { c; ", 15 + 9 * 8)] {
        let text = format!("unikernel \"a\" {{ {}{} }}", open.repeat(30), "}".repeat(30));
        let t = std::time::Instant::now();
        let (specs, diags) = parse_file(Path::new("/etc/unikernels/t.kdl"), &text);
        assert!(specs.is_empty());
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].message.contains("nested more than 8 deep"), "{diags:?}");
        assert_eq!(
            (diags[0].line, diags[0].column),
            (1, ninth + 2),
            "at the ninth /-: {open}"
        );
    }
}

#[test]
fn many_commented_out_services_side_by_side_are_fine() {
    let old = "/-unikernel \"old\" {\n    image \"/x\"\n    net { expose 8080 guest=80; }\n}\n".repeat(20);
    let text = format!("{old}unikernel \"web\" {{\n    image \"/x\"\n}}\n");
    let (specs, diags) = parse_file(Path::new("/etc/unikernels/t.kdl"), &text);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["web"]);
}

#[test]
fn a_bidi_control_in_a_string_is_an_error_not_a_hidden_value() {
    // Found by fuzz/kdl: the fast reader took it, kdl (KDL v2) refuses it. A
    // right-to-left embedding can make a value read differently than it is.
    let text = "unikernel \"a\" {\n    image \"/x\"\n    restart \"on-fa\u{202b}ilure\"\n}\n";
    let (specs, diags) = parse_file(Path::new("/etc/unikernels/t.kdl"), text);
    assert!(specs.is_empty(), "{specs:?}");
    assert!(diags.iter().any(|d| d.is_error() && d.line == 3), "{diags:?}");
}

#[test]
fn a_file_that_panics_the_kdl_v1_reader_is_a_syntax_error() {
    // Found by fuzz/kdl: kdl's v1 reader slices past the end of this input.
    let text = "r  (null";
    let (specs, diags) = parse_file(Path::new("/etc/unikernels/t.kdl"), text);
    assert!(specs.is_empty());
    assert!(diags.iter().any(|d| d.message.starts_with("syntax error")), "{diags:?}");
}
