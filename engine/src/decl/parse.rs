//! The KDL schema of a declaration file:
//!
//! ```kdl
//! unikernel "web" {
//!     image "/usr/share/unikerneld/images/http"   // required
//!     cmdline "name=web"                          // optional
//!     env LOG="info" MODE="prod"                  // optional, appended as KEY=VALUE
//!     memory "16M"                                // default 16M
//!     vcpus 1                                     // default 1
//!     initrd "/path/to/initrd"                    // optional
//!     net {                                       // optional: a NIC
//!         address "10.200.0.5"                    // optional: else from the pool
//!         expose 8080 guest=80                    // host port -> guest port, repeatable
//!     }
//!     restart "always"                            // always | on-failure | never
//! }
//! ```
//! Unknown nodes and properties are errors, with a suggestion when one is close.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use contract::limits;
use contract::size::MemSize;
use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::diagnostic::{did_you_mean, DeclError, Reporter};
use super::spec::{Expose, NetSpec, RestartPolicy, Source, Spec};
use super::template;

const SERVICE_FIELDS: [&str; 10] = [
    "image", "cmdline", "env", "memory", "vcpus", "initrd", "net", "restart", "standby", "limits",
];
const NET_FIELDS: [&str; 3] = ["address", "expose", "connections"];
const DEFAULT_MEMORY: u64 = 16 << 20;
/// Most diagnostics reported per file: the first ones say what to fix; thousands more
/// would only fill the journal and the status.
pub const MAX_DIAGNOSTICS: usize = 50;

/// Keeps the first [`MAX_DIAGNOSTICS`] and says how many more there were.
fn cap(r: &Reporter, diags: &mut Vec<DeclError>) {
    if diags.len() <= MAX_DIAGNOSTICS {
        return;
    }
    let more = diags.len() - MAX_DIAGNOSTICS;
    let at = diags[MAX_DIAGNOSTICS].span;
    diags.truncate(MAX_DIAGNOSTICS);
    diags.push(r.error(
        at,
        format!("{more} more problems in this file are not shown"),
        "the next one",
        Some("fix the ones above first".into()),
    ));
}

/// Room kept on the guest command line for what the daemon and the VMM add.
const CMDLINE_HEADROOM: usize = 1024;

/// Most `{` a file may hold (thousands of declarations; no real file comes close).
pub const MAX_BLOCKS: usize = 16_384;

/// Parses one file. Returns the specs it declares and every diagnostic (warnings too);
/// the file counts as failed when any diagnostic is an error. Safe on any thread: kdl
/// reads on a thread with the stack it needs ([`super::reader`]).
pub fn parse_file(path: &Path, text: &str) -> (Vec<Spec>, Vec<DeclError>) {
    parse(path, text, true)
}

/// [`parse_file`] with kdl on this thread, whose stack must hold the deepest file
/// ([`super::reader::PARSE_STACK`]): for the fuzzer, on libFuzzer's main thread (a thread
/// per deep input costs too much memory under ASan).
pub fn parse_file_here(path: &Path, text: &str) -> (Vec<Spec>, Vec<DeclError>) {
    parse(path, text, false)
}

fn parse(path: &Path, text: &str, on_reader: bool) -> (Vec<Spec>, Vec<DeclError>) {
    let text = Arc::new(text.to_string());
    let r = Reporter::new(path, text.clone());
    let mut diags = Vec::new();
    // The KDL parser recurses once per level of nesting. Whatever the file's lexical
    // tricks, its nesting is at most its number of `{`: bounding that bounds the stack
    // the parser needs (see `reader`), so a hostile file cannot abort us.
    if let Some((at, _)) = text.match_indices('{').nth(MAX_BLOCKS) {
        diags.push(r.error(
            SourceSpan::from((at, 1)),
            format!("more than {MAX_BLOCKS} blocks (`{{`) in one file"),
            "too many",
            Some("split the declarations into several files (a declaration needs 2 or 3 levels)".into()),
        ));
        return (Vec::new(), diags);
    }
    if let Some(refused) = super::guard::too_deep(&text) {
        let max = super::guard::MAX_SLASHDASH_NESTING;
        let message = match refused {
            super::guard::TooDeep::Nested(_) => {
                format!("commented-out blocks (`/-`) nested more than {max} deep")
            }
            super::guard::TooDeep::Counted(_) => format!(
                "more than {max} commented-out blocks (`/-`) in a file with multi-line, raw or unterminated strings"
            ),
        };
        diags.push(r.error(
            SourceSpan::from((refused.offset(), 2)),
            message,
            "one too many",
            Some("delete the commented-out blocks (KDL readers take time exponential in how deep they nest)".into()),
        ));
        return (Vec::new(), diags);
    }
    // Most files are in the plain subset the fast reader takes; what it cannot read, and
    // any file with something to report, goes through kdl, whose spans and syntax
    // diagnostics are the reference.
    if let Some(doc) = super::fast::parse(&text) {
        let mut fast_diags = Vec::new();
        let specs = services(&r, &doc, &mut fast_diags);
        if fast_diags.is_empty() {
            return (specs, fast_diags);
        }
    }
    if !on_reader {
        return parse_with_kdl(&r, &text, diags);
    }
    let blocks = text.matches('{').count();
    let (reporter, shared) = (r.clone(), text.clone());
    match super::reader::run(blocks, move || parse_with_kdl(&reporter, &shared, diags)) {
        Ok(read) => read,
        Err(message) => (Vec::new(), vec![r.error(SourceSpan::from(0..0), message, "here", None)]),
    }
}

/// [`parse_file`] through the kdl crate only (the reference the fast reader must match).
fn parse_with_kdl(r: &Reporter, text: &str, mut diags: Vec<DeclError>) -> (Vec<Spec>, Vec<DeclError>) {
    let doc = match KdlDocument::parse_v2(text) {
        Ok(doc) => doc,
        // The v1 reader panics on some malformed input (found by fuzz/kdl): contained,
        // such a file is one more file that does not parse.
        Err(v2_err) => match crate::panic::contained(|| KdlDocument::parse_v1(text)) {
            Ok(Ok(doc)) => {
                diags.push(r.warning(
                    SourceSpan::from(0..0),
                    "this file is KDL v1; v1 is accepted for now",
                    Some("convert it to KDL v2 (`kdl` crate's v1_to_v2, or by hand: bare strings need quotes, `true` becomes `#true`)".into()),
                ));
                doc
            }
            Ok(Err(_)) | Err(_) => {
                for d in &v2_err.diagnostics {
                    let message = d.message.clone().unwrap_or_else(|| "invalid KDL".into());
                    let label = d.label.clone().unwrap_or_else(|| "here".into());
                    diags.push(r.error(d.span, format!("syntax error: {message}"), label, d.help.clone()));
                }
                if diags.is_empty() {
                    diags.push(r.error(SourceSpan::from(0..0), "syntax error", "here", None));
                }
                cap(r, &mut diags);
                return (Vec::new(), diags);
            }
        },
    };
    let specs = services(r, &doc, &mut diags);
    cap(r, &mut diags);
    (specs, diags)
}

/// Every `unikernel` node of a parsed file.
fn services(r: &Reporter, doc: &KdlDocument, diags: &mut Vec<DeclError>) -> Vec<Spec> {
    let mut specs = Vec::new();
    for node in doc.nodes() {
        if node.name().value() != "unikernel" {
            diags.push(
                r.error(
                    node.name().span(),
                    format!("unknown top-level node `{}`", node.name().value()),
                    "not a declaration",
                    Some(
                        did_you_mean(node.name().value(), &["unikernel"])
                            .unwrap_or_else(|| "declare services with `unikernel \"name\" { ... }`".into()),
                    ),
                ),
            );
            continue;
        }
        if let Some(spec) = service(r, node, diags) {
            specs.push(spec);
        }
    }
    specs
}

pub(super) fn string<'a>(r: &Reporter, e: &'a KdlEntry, what: &str, diags: &mut Vec<DeclError>) -> Option<&'a str> {
    match e.value() {
        KdlValue::String(s) => Some(s),
        other => {
            diags.push(r.error(
                e.span(),
                format!("{what} must be a string, not {other}"),
                "expected a string",
                Some(format!("write it in quotes: \"{other}\"")),
            ));
            None
        }
    }
}

pub(super) fn integer(
    r: &Reporter,
    e: &KdlEntry,
    what: &str,
    range: std::ops::RangeInclusive<i128>,
    diags: &mut Vec<DeclError>,
) -> Option<i128> {
    match e.value() {
        KdlValue::Integer(i) if range.contains(i) => Some(*i),
        KdlValue::Integer(i) => {
            diags.push(r.error(
                e.span(),
                format!("{what} {i} is out of range"),
                "out of range",
                Some(format!("use a value from {} to {}", range.start(), range.end())),
            ));
            None
        }
        other => {
            diags.push(r.error(
                e.span(),
                format!("{what} must be a number, not {other}"),
                "expected a number",
                None,
            ));
            None
        }
    }
}

/// The single positional argument of `node`, and no properties.
pub(super) fn one_arg<'a>(r: &Reporter, node: &'a KdlNode, diags: &mut Vec<DeclError>) -> Option<&'a KdlEntry> {
    let args: Vec<&KdlEntry> = node.entries().iter().filter(|e| e.name().is_none()).collect();
    for (e, name) in node.entries().iter().filter_map(|e| Some((e, e.name()?))) {
        let name = name.value();
        diags.push(r.error(
            e.span(),
            format!("`{}` takes no property `{name}`", node.name().value()),
            "unexpected property",
            None,
        ));
    }
    match args.as_slice() {
        [one] => Some(*one),
        [] => {
            diags.push(r.error(
                node.span(),
                format!("`{}` needs a value", node.name().value()),
                "value missing",
                None,
            ));
            None
        }
        [_, extra, ..] => {
            diags.push(r.error(
                extra.span(),
                format!("`{}` takes one value", node.name().value()),
                "extra value",
                None,
            ));
            None
        }
    }
}

pub(super) fn no_children(r: &Reporter, node: &KdlNode, diags: &mut Vec<DeclError>) {
    if let Some(children) = node.children() {
        diags.push(r.error(
            children.span(),
            format!("`{}` takes no block", node.name().value()),
            "unexpected block",
            None,
        ));
    }
}

/// An env name that stays one word on the command line.
fn valid_env_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn service(r: &Reporter, node: &KdlNode, diags: &mut Vec<DeclError>) -> Option<Spec> {
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    let name = one_arg(r, node, diags)
        .and_then(|e| string(r, e, "the service name", diags))
        .map(str::to_string);
    if let Some(n) = &name {
        if !valid_name(n) {
            diags.push(
                r.error(
                    node.entries()[0].span(),
                    format!("invalid service name {n:?}"),
                    "invalid name",
                    Some(
                        "use letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63 characters"
                            .into(),
                    ),
                ),
            );
        }
    }
    let (line, column) = r.line_col(node.span().offset());
    let mut image: Option<PathBuf> = None;
    let mut initrd = None;
    let mut cmdline = String::new();
    let mut env = BTreeMap::new();
    // Values that may hold placeholders, with where they were written (checked once the
    // whole declaration is read: `net` may come after them).
    let mut templated: Vec<(SourceSpan, String)> = Vec::new();
    let mut memory_bytes = DEFAULT_MEMORY;
    let mut vcpus = 1u8;
    let mut net = None;
    let mut restart = RestartPolicy::Always;
    let mut standby = None;
    let mut standby_at = None;
    let mut limits_node: Option<&KdlNode> = None;
    let mut seen: Vec<&str> = Vec::new();

    for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
        let field = child.name().value();
        if !SERVICE_FIELDS.contains(&field) {
            diags.push(
                r.error(
                    child.name().span(),
                    format!("unknown setting `{field}`"),
                    "unknown",
                    Some(
                        did_you_mean(field, &SERVICE_FIELDS)
                            .unwrap_or_else(|| format!("settings are {}", SERVICE_FIELDS.join(", "))),
                    ),
                ),
            );
            continue;
        }
        if field != "env" && seen.contains(&field) {
            diags.push(r.error(
                child.name().span(),
                format!("`{field}` is set twice"),
                "second time",
                Some("keep one".into()),
            ));
            continue;
        }
        seen.push(field);
        if field != "net" && field != "limits" {
            no_children(r, child, diags);
        }
        match field {
            "image" | "initrd" | "cmdline" | "memory" | "restart" => {
                let Some(entry) = one_arg(r, child, diags) else {
                    continue;
                };
                let Some(value) = string(r, entry, field, diags) else {
                    continue;
                };
                match field {
                    "image" | "initrd" => {
                        let path = PathBuf::from(value);
                        if !path.is_absolute() {
                            diags.push(r.error(
                                entry.span(),
                                format!("{field} path {value:?} is relative"),
                                "relative path",
                                Some("write an absolute path, like /usr/share/unikerneld/images/http".into()),
                            ));
                        } else if field == "image" {
                            image = Some(path);
                        } else {
                            initrd = Some(path);
                        }
                    }
                    "cmdline" => {
                        cmdline = value.to_string();
                        templated.push((entry.span(), cmdline.clone()));
                    }
                    "memory" => match value.parse::<MemSize>().map(MemSize::bytes) {
                        Ok(b) if b >= limits::MIN_MEMORY && b % limits::MEMORY_ALIGN == 0 => {
                            match host_ram().filter(|&host| b > host) {
                                Some(host) => diags.push(r.error(
                                    entry.span(),
                                    format!(
                                        "memory {value:?} is more than this host's RAM ({})",
                                        MemSize::from_bytes(host)
                                    ),
                                    "cannot start here",
                                    Some("guest memory is reserved lazily, but never beyond the host's RAM: use a size like 16M or 1G".into()),
                                )),
                                None => memory_bytes = b,
                            }
                        }
                        _ => diags.push(r.error(
                            entry.span(),
                            format!("invalid memory size {value:?}"),
                            "invalid size",
                            Some("sizes look like 16M or 1G (at least 2M, a multiple of 4K)".into()),
                        )),
                    },
                    _ => match RestartPolicy::parse(value) {
                        Some(p) => restart = p,
                        None => diags.push(
                            r.error(
                                entry.span(),
                                format!("unknown restart policy {value:?}"),
                                "unknown policy",
                                Some(
                                    did_you_mean(value, &RestartPolicy::NAMES)
                                        .unwrap_or_else(|| "use always, on-failure or never".into()),
                                ),
                            ),
                        ),
                    },
                }
            }
            "vcpus" => {
                if let Some(v) = one_arg(r, child, diags)
                    .and_then(|e| integer(r, e, "vcpus", 1..=i128::from(limits::MAX_VCPUS), diags))
                {
                    vcpus = v as u8;
                }
            }
            "env" => {
                for e in child.entries() {
                    match e.name() {
                        None => diags.push(r.error(
                            e.span(),
                            "env takes KEY=\"value\" pairs",
                            "not a pair",
                            Some("write env LOG=\"info\"".into()),
                        )),
                        Some(key) if !valid_env_key(key.value()) => diags.push(r.error(
                            e.span(),
                            format!("invalid env name {:?}", key.value()),
                            "invalid name",
                            Some("names are letters, digits, `_`, `.` and `-`, starting with a letter or `_` (they become KEY=VALUE words on the command line)".into()),
                        )),
                        Some(key) => {
                            if let Some(v) = string(r, e, "an env value", diags) {
                                if v.contains(char::is_whitespace) {
                                    diags.push(r.error(
                                        e.span(),
                                        "env values end up on the kernel command line and cannot contain spaces",
                                        "contains a space",
                                        None,
                                    ));
                                } else {
                                    templated.push((e.span(), v.to_string()));
                                    env.insert(key.value().to_string(), v.to_string());
                                }
                            }
                        }
                    }
                }
            }
            "standby" => {
                standby_at = Some(child.name().span());
                standby = super::standby::parse(r, child, diags);
            }
            // Checked against memory and vcpus, which may come after it.
            "limits" => limits_node = Some(child),
            _ => net = net_block(r, child, diags),
        }
    }
    let limits = match limits_node {
        Some(node) => super::limits::parse(r, node, memory_bytes, vcpus, diags).unwrap_or_default(),
        None => Default::default(),
    };
    if let Some(at) = standby_at {
        if net.as_ref().is_none_or(|n: &NetSpec| n.expose.is_empty()) {
            diags.push(r.error(
                at,
                "standby needs an exposed port: a connection to it is what wakes the service",
                "nothing can wake it",
                Some("add net { expose 8080 guest=80 }".into()),
            ));
        }
    }
    for (span, value) in &templated {
        check_placeholders(r, *span, value, net.is_some(), diags);
    }
    // What the daemon and the VMM add (network parameters, the device's) fits in this.
    let declared = cmdline.len() + env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
    if declared > limits::MAX_CMDLINE - CMDLINE_HEADROOM {
        diags.push(r.error(
            node.name().span(),
            format!(
                "the command line with its env is {declared} bytes, more than the {} a guest gets",
                limits::MAX_CMDLINE - CMDLINE_HEADROOM
            ),
            "too long",
            Some("pass large settings some other way (an initrd, a file the image carries)".into()),
        ));
    }
    let errors_after = diags.iter().filter(|d| d.is_error()).count();
    if image.is_none() && !seen.contains(&"image") {
        diags.push(r.error(
            node.name().span(),
            format!("unikernel {:?} has no image", name.as_deref().unwrap_or("?")),
            "image missing",
            Some("add: image \"/path/to/unikernel\"".into()),
        ));
        return None;
    }
    if errors_after > errors_before {
        return None;
    }
    Some(Spec {
        name: name?,
        image: image?,
        initrd,
        cmdline,
        env,
        memory_bytes,
        vcpus,
        net,
        restart,
        standby,
        limits,
        source: Source {
            file: r.file().to_path_buf(),
            line,
            column,
            offset: node.span().offset(),
        },
        hash_cache: Default::default(),
    })
}

/// Placeholders in a `cmdline` or `env` value: known names only, and network ones only
/// with a `net` block. Points at the placeholder itself when the value is written plainly.
fn check_placeholders(r: &Reporter, span: SourceSpan, value: &str, has_net: bool, diags: &mut Vec<DeclError>) {
    let at = |offset: usize, len: usize| {
        let written = r.text().get(span.offset()..span.offset() + span.len()).unwrap_or("");
        match written.find(value) {
            Some(start) if !value.is_empty() => SourceSpan::from((span.offset() + start + offset, len)),
            _ => span,
        }
    };
    match template::placeholders(value) {
        Err(p) => diags.push(r.error(at(p.offset, p.len), p.message, "here", Some(p.help))),
        Ok(used) if !has_net && template::uses_network(&used) => {
            let first = used
                .iter()
                .find(|n| template::uses_network(&[n]))
                .copied()
                .unwrap_or("address");
            let offset = value.find(&format!("{{{first}}}")).unwrap_or(0);
            diags.push(r.error(
                at(offset, first.len() + 2),
                format!("{{{first}}} needs the service's network, and it declares none"),
                "no network",
                Some("add a net block (net { }) or remove the placeholder".into()),
            ));
        }
        Ok(_) => {}
    }
}

fn net_block(r: &Reporter, node: &KdlNode, diags: &mut Vec<DeclError>) -> Option<NetSpec> {
    if let Some(e) = node.entries().first() {
        diags.push(r.error(
            e.span(),
            "`net` takes a block, not values",
            "unexpected value",
            Some("write net { expose 8080 guest=80 }".into()),
        ));
    }
    let mut spec = NetSpec {
        address: None,
        expose: Vec::new(),
        connections: Default::default(),
    };
    for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
        let field = child.name().value();
        no_children(r, child, diags);
        match field {
            "address" => {
                let Some(e) = one_arg(r, child, diags) else { continue };
                let Some(v) = string(r, e, "address", diags) else {
                    continue;
                };
                match v.parse::<Ipv4Addr>() {
                    Ok(a) if a.is_unspecified() || a.is_loopback() || a.is_broadcast() || a.is_multicast() => {
                        diags.push(r.error(
                            e.span(),
                            format!("{a} cannot be a guest's address"),
                            "not a unicast host address",
                            Some("use an address from the daemon's pool (--pool, 10.200.0.0/16 by default), or leave it out".into()),
                        ))
                    }
                    Ok(a) => spec.address = Some(a),
                    Err(_) => diags.push(r.error(
                        e.span(),
                        format!("invalid IPv4 address {v:?}"),
                        "invalid address",
                        Some("write it like \"10.200.0.5\"".into()),
                    )),
                }
            }
            "expose" => {
                let mut host = None;
                let mut guest = None;
                let mut bind = Ipv4Addr::UNSPECIFIED;
                for e in child.entries() {
                    match e.name().map(|n| n.value()) {
                        None if host.is_none() => host = integer(r, e, "the host port", 1..=65535, diags),
                        Some("guest") => guest = integer(r, e, "the guest port", 1..=65535, diags),
                        Some("bind") => match string(r, e, "bind", diags).map(str::parse::<Ipv4Addr>) {
                            Some(Ok(a)) if !a.is_multicast() && !a.is_broadcast() => bind = a,
                            Some(_) => diags.push(r.error(
                                e.span(),
                                "bind takes one IPv4 address of this host",
                                "not a host address",
                                Some(
                                    "write bind=\"127.0.0.1\" (this host only) or leave it out (all addresses)".into(),
                                ),
                            )),
                            None => {}
                        },
                        None => diags.push(r.error(
                            e.span(),
                            "expose takes one host port",
                            "extra value",
                            Some("write expose 8080 guest=80".into()),
                        )),
                        Some(other) => diags.push(
                            r.error(
                                e.span(),
                                format!("unknown property `{other}`"),
                                "unknown",
                                Some(
                                    did_you_mean(other, &["guest", "bind"])
                                        .unwrap_or_else(|| "write expose 8080 guest=80 [bind=\"127.0.0.1\"]".into()),
                                ),
                            ),
                        ),
                    }
                }
                match host {
                    Some(h) if spec.expose.iter().any(|x| i128::from(x.host) == h) => diags.push(r.error(
                        child.span(),
                        format!("host port {h} is exposed twice"),
                        "again",
                        Some("a host port goes to one guest port: keep one of the two".into()),
                    )),
                    Some(h) => spec.expose.push(Expose {
                        host: h as u16,
                        guest: guest.unwrap_or(h) as u16,
                        bind,
                    }),
                    None => diags.push(r.error(
                        child.span(),
                        "expose needs a host port",
                        "port missing",
                        Some("write expose 8080 guest=80".into()),
                    )),
                }
            }
            "connections" => {
                for e in child.entries() {
                    match e.name().map(|n| n.value()) {
                        Some("max") => {
                            if let Some(n) = integer(r, e, "max", 1..=1_000_000, diags) {
                                spec.connections.max = Some(n as u32);
                            }
                        }
                        Some("idle") => match string(r, e, "idle", diags).map(super::standby::parse_duration) {
                            Some(Some(d)) if d >= std::time::Duration::from_secs(1) => spec.connections.idle = Some(d),
                            Some(_) => diags.push(r.error(
                                e.span(),
                                "invalid idle timeout",
                                "invalid duration",
                                Some("write a duration of at least 1s, like \"60s\" or \"15m\"".into()),
                            )),
                            None => {}
                        },
                        _ => diags.push(r.error(
                            e.span(),
                            "connections takes max=N and idle=\"DURATION\"",
                            "unknown",
                            Some("write connections max=48 idle=\"60s\"".into()),
                        )),
                    }
                }
            }
            other => diags.push(
                r.error(
                    child.name().span(),
                    format!("unknown net setting `{other}`"),
                    "unknown",
                    Some(
                        did_you_mean(other, &NET_FIELDS)
                            .unwrap_or_else(|| "net settings are address, expose, connections".into()),
                    ),
                ),
            ),
        }
    }
    Some(spec)
}

/// This host's RAM, asked of the kernel at most once a second: a cold load of 10,000
/// declarations asked 10,000 times (2% of its time), and memory plugged in or out is
/// still seen by the next load.
fn host_ram() -> Option<u64> {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static ASKED: Mutex<Option<(Instant, Option<u64>)>> = Mutex::new(None);
    let mut asked = ASKED.lock().unwrap_or_else(|e| e.into_inner());
    match *asked {
        Some((at, ram)) if at.elapsed() < Duration::from_secs(1) => ram,
        _ => {
            let ram = limits::host_ram();
            *asked = Some((Instant::now(), ram));
            ram
        }
    }
}

#[cfg(test)]
mod tests;
