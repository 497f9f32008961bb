//! What a file may hold before the kdl crate reads it. kdl 6's reader takes time
//! exponential in the nesting of slashdashed children blocks (`a /-{ b /-{ c ... } }`):
//! ~0.13 s at 12 levels, doubling with each (found by fuzz/kdl: a 334-byte file held the
//! parser for over three minutes). A declaration has no use for more than a few, so a file
//! with more than [`MAX_SLASHDASHED_BLOCKS`] is refused before kdl sees it.

/// Most slashdashed children blocks (`/-{`) a file may hold.
pub const MAX_SLASHDASHED_BLOCKS: usize = 8;

/// The byte offset of the first slashdash over the limit, if the file has too many.
///
/// A slashdash counts when the next thing after it (past whitespace, newlines, line
/// continuations and comments, which KDL allows there) is `{`. The scan is lexical and
/// does not skip strings: a `/-{` inside a string counts too, which can only refuse a
/// file, never let a slow one through.
pub fn too_many_slashdashed_blocks(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut count = 0;
    let mut i = 0;
    while let Some(found) = find(bytes, i, b"/-") {
        let at = found;
        i = found + 2;
        if bytes.get(skip_space(bytes, i)) == Some(&b'{') {
            count += 1;
            if count > MAX_SLASHDASHED_BLOCKS {
                return Some(at);
            }
        }
    }
    None
}

fn find(bytes: &[u8], from: usize, what: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(what.len())
        .position(|w| w == what)
        .map(|p| from + p)
}

/// The first offset at or after `i` that is not whitespace, a line continuation or a
/// comment.
fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    loop {
        match bytes.get(i..) {
            Some([b' ' | b'\t' | b'\n' | b'\r' | b'\\', ..]) => i += 1,
            Some([b'/', b'/', ..]) => {
                i = find(bytes, i, b"\n").unwrap_or(bytes.len());
            }
            Some([b'/', b'*', ..]) => {
                // Block comments nest in KDL.
                let mut depth = 0usize;
                while i < bytes.len() {
                    match &bytes[i..] {
                        [b'/', b'*', ..] => {
                            depth += 1;
                            i += 2;
                        }
                        [b'*', b'/', ..] => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
            }
            // Other Unicode whitespace (KDL allows it) is multi-byte: stepped over whole.
            Some(rest) => match std::str::from_utf8(&rest[..rest.len().min(4)])
                .ok()
                .or_else(|| std::str::from_utf8(&rest[..rest.len().min(3)]).ok())
                .or_else(|| std::str::from_utf8(&rest[..rest.len().min(2)]).ok())
                .and_then(|s| s.chars().next())
            {
                Some(c) if c.is_whitespace() && !c.is_ascii() => i += c.len_utf8(),
                _ => return i,
            },
            None => return i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize, between: &str) -> String {
        format!("a {}{}", format!("/-{between}{{b ").repeat(n), "}".repeat(n))
    }

    #[test]
    fn nested_slashdashed_blocks_are_counted_whatever_lies_between() {
        assert_eq!(too_many_slashdashed_blocks(&nested(MAX_SLASHDASHED_BLOCKS, " ")), None);
        for between in [
            "",
            " ",
            "\t\n",
            " \\\n ",
            " /* c /* nested */ */ ",
            "// line\n",
            "\u{3000}",
        ] {
            let text = nested(MAX_SLASHDASHED_BLOCKS + 1, between);
            let at = too_many_slashdashed_blocks(&text).unwrap_or_else(|| panic!("{between:?}"));
            assert!(text[at..].starts_with("/-"), "{between:?}");
        }
    }

    #[test]
    fn other_slashdashes_are_not_counted() {
        // Commented-out nodes and arguments are common and cheap for kdl.
        let nodes = "/-unikernel \"old\" { image \"/x\" }\n".repeat(40);
        assert_eq!(too_many_slashdashed_blocks(&nodes), None);
        let args = format!("a {} {{ }}", "/-1 ".repeat(40));
        assert_eq!(too_many_slashdashed_blocks(&args), None);
        assert_eq!(too_many_slashdashed_blocks("/-"), None);
        assert_eq!(too_many_slashdashed_blocks("a /- /* unclosed"), None);
    }
}
