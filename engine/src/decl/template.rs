//! Placeholders in `cmdline` and `env` values, filled in by the daemon when it starts the
//! VM: `{address}`, `{prefix}`, `{gateway}`, `{netmask}`, `{mac}` (the guest's network) and
//! `{name}` (the service's). `{{` and `}}` stand for literal braces. Every guest spells its
//! network settings its own way (Unikraft `netdev.ip=`, Linux `ip=`), so the declaration
//! says how; without a network placeholder the daemon adds `ip=A/P gw=G` itself.
use std::fmt::Write;

/// The placeholders, and whether each needs the service's network.
pub const PLACEHOLDERS: [(&str, bool); 6] = [
    ("address", true),
    ("prefix", true),
    ("gateway", true),
    ("netmask", true),
    ("mac", true),
    ("name", false),
];

/// A problem at a byte offset within the value.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub offset: usize,
    pub len: usize,
    pub message: String,
    pub help: String,
}

fn known() -> String {
    PLACEHOLDERS
        .iter()
        .map(|(n, _)| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The placeholders `text` uses, or the first problem (unknown name, lone brace).
pub fn placeholders(text: &str) -> Result<Vec<&'static str>, Problem> {
    let mut used = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => i += 2,
            b'}' if bytes.get(i + 1) == Some(&b'}') => i += 2,
            b'{' => {
                let Some(len) = text[i + 1..].find('}') else {
                    return Err(Problem {
                        offset: i,
                        len: 1,
                        message: "a `{` that opens no placeholder".into(),
                        help: format!("write `{{{{` for a literal brace; placeholders are {}", known()),
                    });
                };
                let name = &text[i + 1..i + 1 + len];
                match PLACEHOLDERS.iter().find(|(n, _)| *n == name) {
                    Some((n, _)) => used.push(*n),
                    None => {
                        let suggestion = PLACEHOLDERS
                            .iter()
                            .map(|(n, _)| (strsim::damerau_levenshtein(name, n), *n))
                            .filter(|(d, _)| *d <= 2)
                            .min()
                            .map(|(_, n)| format!("did you mean {{{n}}}? "))
                            .unwrap_or_default();
                        return Err(Problem {
                            offset: i,
                            len: len + 2,
                            message: format!("unknown placeholder {{{name}}}"),
                            help: format!("{suggestion}placeholders are {}", known()),
                        });
                    }
                }
                i += len + 2;
            }
            b'}' => {
                return Err(Problem {
                    offset: i,
                    len: 1,
                    message: "a `}` that closes no placeholder".into(),
                    help: "write `}}` for a literal brace".into(),
                })
            }
            _ => i += 1,
        }
    }
    Ok(used)
}

/// Whether any of the placeholders needs the network.
pub fn uses_network(names: &[&str]) -> bool {
    names.iter().any(|n| PLACEHOLDERS.iter().any(|(p, net)| p == n && *net))
}

/// The values placeholders stand for; network values are absent without a NIC.
pub struct Values<'a> {
    pub name: &'a str,
    pub address: Option<String>,
    pub prefix: Option<String>,
    pub gateway: Option<String>,
    pub netmask: Option<String>,
    pub mac: Option<String>,
}

/// `text` with every placeholder replaced (text that passed [`placeholders`]; anything
/// else is copied as it is).
pub fn expand(text: &str, v: &Values<'_>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let end = match tail.starts_with('{') {
            true => tail.find('}'),
            false => None,
        };
        let Some(end) = end else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
            continue;
        };
        let value = match &tail[1..end] {
            "name" => Some(v.name),
            "address" => v.address.as_deref(),
            "prefix" => v.prefix.as_deref(),
            "gateway" => v.gateway.as_deref(),
            "netmask" => v.netmask.as_deref(),
            "mac" => v.mac.as_deref(),
            _ => None,
        };
        match value {
            Some(val) => out.push_str(val),
            None => {
                let _ = write!(out, "{}", &tail[..=end]);
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values {
            name: "web",
            address: Some("10.200.0.5".into()),
            prefix: Some("16".into()),
            gateway: Some("10.200.0.1".into()),
            netmask: Some("255.255.0.0".into()),
            mac: Some("02:75:aa:bb:cc:dd".into()),
        }
    }

    #[test]
    fn expands_the_conventions_of_real_guests() {
        let v = values();
        assert_eq!(
            expand("netdev.ip={address}/{prefix}:{gateway} -- -p 80", &v),
            "netdev.ip=10.200.0.5/16:10.200.0.1 -- -p 80"
        );
        assert_eq!(
            expand("ip={address}::{gateway}:{netmask}::eth0:off", &v),
            "ip=10.200.0.5::10.200.0.1:255.255.0.0::eth0:off"
        );
        assert_eq!(expand("name={name} json={{\"a\":1}}", &v), "name=web json={\"a\":1}");
        assert_eq!(expand("mac={mac}", &v), "mac=02:75:aa:bb:cc:dd");
    }

    #[test]
    fn finds_what_is_used_and_refuses_what_is_not_a_placeholder() {
        assert_eq!(
            placeholders("ip={address}/{prefix} n={name}").unwrap(),
            vec!["address", "prefix", "name"]
        );
        assert!(uses_network(&placeholders("ip={address}").unwrap()));
        assert!(!uses_network(&placeholders("n={name} {{x}}").unwrap()));
        let p = placeholders("ip={adress}/16").unwrap_err();
        assert_eq!((p.offset, p.len), (3, 8));
        assert!(
            p.message.contains("{adress}") && p.help.contains("did you mean {address}"),
            "{p:?}"
        );
        assert_eq!(placeholders("a { b").unwrap_err().offset, 2);
        assert_eq!(placeholders("a } b").unwrap_err().offset, 2);
    }
}
