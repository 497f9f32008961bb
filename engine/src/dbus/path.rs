//! Object paths for services, escaped as systemd escapes bus labels
//! (`bus_label_escape`): ASCII letters and digits stay, every other byte becomes `_xx`
//! (lower-case hex), and the empty string is `_`. So `web-1.api` is `web_2d1_2eapi`.
use zbus::zvariant::OwnedObjectPath;

pub const MANAGER_PATH: &str = "/org/unikerneld1";
pub const UNIKERNEL_PREFIX: &str = "/org/unikerneld1/unikernel";

pub fn escape_label(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

pub fn unescape_label(s: &str) -> Option<String> {
    if s == "_" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[allow(clippy::expect_used, reason = "escape_label yields only [A-Za-z0-9_] (tested)")]
pub fn unikernel_path(name: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{UNIKERNEL_PREFIX}/{}", escape_label(name))).expect("escaped labels are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(escape_label("web"), "web");
        assert_eq!(escape_label("web-1.api"), "web_2d1_2eapi");
        assert_eq!(escape_label("a_b"), "a_5fb");
        assert_eq!(escape_label(""), "_");
        for n in ["web", "web-1.api", "a_b", "", "x.y_z-0"] {
            assert_eq!(unescape_label(&escape_label(n)).as_deref(), Some(n));
        }
        assert_eq!(unikernel_path("web-1").as_str(), "/org/unikerneld1/unikernel/web_2d1");
    }
}
