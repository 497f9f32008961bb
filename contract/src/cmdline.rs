//! Guest command lines have two parts: kernel parameters, then ` -- ` and the
//! application's arguments (Linux passes them to init, Unikraft to the app). Whatever the
//! daemon or the VMM adds is a kernel parameter and goes before the separator.

/// Splits at the first ` -- ` outside double quotes (a leading `-- ` or a trailing ` --`
/// count too): the kernel parameters, and the application's part if there is one.
pub fn split(cmdline: &str) -> (&str, Option<&str>) {
    if let Some(rest) = cmdline.strip_prefix("-- ") {
        return ("", Some(rest));
    }
    if cmdline == "--" {
        return ("", Some(""));
    }
    let mut quoted = false;
    for (i, c) in cmdline.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted && cmdline[i..].starts_with(" -- ") => {
                return (&cmdline[..i], Some(&cmdline[i + 4..]));
            }
            _ => {}
        }
    }
    if !quoted {
        if let Some(head) = cmdline.strip_suffix(" --") {
            return (head, Some(""));
        }
    }
    (cmdline, None)
}

/// `cmdline` with `params` added to its kernel parameters (before any ` -- `).
pub fn add_kernel_params(cmdline: &str, params: &[String]) -> String {
    let (kernel, app) = split(cmdline);
    let mut out: Vec<&str> = Vec::new();
    if !kernel.trim().is_empty() {
        out.push(kernel.trim());
    }
    out.extend(params.iter().map(String::as_str).filter(|p| !p.is_empty()));
    let mut line = out.join(" ");
    if let Some(app) = app {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str("--");
        if !app.is_empty() {
            line.push(' ');
            line.push_str(app);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_linux_and_unikraft() {
        assert_eq!(split("a b"), ("a b", None));
        assert_eq!(split("a -- b c"), ("a", Some("b c")));
        assert_eq!(split("-- b"), ("", Some("b")));
        assert_eq!(split("a --"), ("a", Some("")));
        assert_eq!(split("a -- b -- c"), ("a", Some("b -- c")));
        assert_eq!(split("x=\"1 -- 2\" -- c"), ("x=\"1 -- 2\"", Some("c")));
        assert_eq!(split("a--b"), ("a--b", None));
    }

    #[test]
    fn kernel_params_go_before_the_application_part() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(add_kernel_params("", &p(&["x=1"])), "x=1");
        assert_eq!(add_kernel_params("a -- app", &p(&["x=1", "y=2"])), "a x=1 y=2 -- app");
        assert_eq!(add_kernel_params("-- app", &p(&["x=1"])), "x=1 -- app");
        assert_eq!(add_kernel_params("a --", &p(&["x=1"])), "a x=1 --");
        assert_eq!(add_kernel_params("a b", &[]), "a b");
    }
}
