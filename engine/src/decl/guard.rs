//! What a file may hold before the kdl crate reads it. kdl 6's v2 reader takes time
//! exponential in how deep slashdashed blocks nest, whether the slashdash comments out a
//! children block (`a /-{ b /-{ ... } }`) or a node with children
//! (`x { /-a { b; /-a { b; ... } } }`): ~0.03 s at 12 levels, ~0.5 s at 16, doubling with
//! each (found by fuzz/kdl, twice: a 334-byte file held the parser for over three minutes).
//! One file in /etc/unikernels, or in the followed git repository, would stall every
//! reload. Commented-out blocks side by side cost nothing, so it is their nesting that is
//! bounded: more than [`MAX_SLASHDASH_NESTING`] levels are refused before kdl sees them.

/// Most slashdashed blocks a file may nest inside each other.
pub const MAX_SLASHDASH_NESTING: usize = 8;

/// Why a file is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooDeep {
    /// A slashdashed block nested too deep; the offset of its slashdash.
    Nested(usize),
    /// The file has strings whose ends a reader could see elsewhere (multi-line, raw or
    /// unterminated strings, unterminated comments): its blocks are all counted, nested or
    /// not. The offset of the slashdash over the limit.
    Counted(usize),
}

impl TooDeep {
    pub fn offset(self) -> usize {
        match self {
            TooDeep::Nested(at) | TooDeep::Counted(at) => at,
        }
    }
}

/// Whether kdl could take too long on `text`.
///
/// A block counts as slashdashed when a `/-` came before its `{` since the last block
/// opened or closed: that counts a commented-out node's or children block's block, and
/// also (harmlessly) a block after a commented-out argument or leaf node. Depth goes back
/// down at `}`. That needs to know where strings and comments are, which this reads as KDL
/// v2 does (kdl's v1 reader is not slow); a file with a string whose end is not plain
/// gets [`TooDeep::Counted`] instead: every slashdashed block counts, closed or not.
pub fn too_deep(text: &str) -> Option<TooDeep> {
    match nesting(text.as_bytes()) {
        Ok(found) => found.map(TooDeep::Nested),
        Err(Unclear) => counted(text.as_bytes()).map(TooDeep::Counted),
    }
}

/// A string or comment whose end a reader might see elsewhere.
struct Unclear;

fn nesting(b: &[u8]) -> Result<Option<usize>, Unclear> {
    // One entry per open block: the offset of its slashdash, if it had one.
    let mut blocks: Vec<Option<usize>> = Vec::new();
    let mut depth = 0;
    let mut pending = None;
    let mut i = 0;
    while i < b.len() {
        match &b[i..] {
            [b'/', b'-', ..] => {
                pending = pending.or(Some(i));
                i += 2;
            }
            [b'/', b'/', ..] => i = line_end(b, i),
            [b'/', b'*', ..] => i = block_comment_end(b, i)?,
            [b'"', b'"', b'"', ..] | [b'#', ..] if raw_or_multiline(b, i) => return Err(Unclear),
            [b'"', ..] => i = string_end(b, i)?,
            [b'{', ..] => {
                let slashdash = pending.take();
                if let Some(at) = slashdash {
                    depth += 1;
                    if depth > MAX_SLASHDASH_NESTING {
                        return Ok(Some(at));
                    }
                }
                blocks.push(slashdash);
                i += 1;
            }
            [b'}', ..] => {
                pending = None;
                if let Some(Some(_)) = blocks.pop() {
                    depth -= 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(None)
}

/// Every slashdashed block, as if none ever closed.
fn counted(b: &[u8]) -> Option<usize> {
    let mut count = 0;
    let mut pending = None;
    for i in 0..b.len() {
        match &b[i..] {
            [b'/', b'-', ..] => pending = pending.or(Some(i)),
            [b'{', ..] => {
                if let Some(at) = pending.take() {
                    count += 1;
                    if count > MAX_SLASHDASH_NESTING {
                        return Some(at);
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// `"""` opens a multi-line string, `#"` or `##"` a raw one: their ends depend on rules
/// (indentation, hash counts) not worth repeating here.
fn raw_or_multiline(b: &[u8], i: usize) -> bool {
    if b[i] == b'"' {
        return true;
    }
    let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
    b.get(i + hashes) == Some(&b'"')
}

fn line_end(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p)
}

/// Block comments nest in KDL.
fn block_comment_end(b: &[u8], mut i: usize) -> Result<usize, Unclear> {
    let mut depth = 0usize;
    while i < b.len() {
        match &b[i..] {
            [b'/', b'*', ..] => {
                depth += 1;
                i += 2;
            }
            [b'*', b'/', ..] => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(Unclear)
}

/// A single-line string: `\` escapes the next character; a newline (other than one
/// escaped) or the end of the file leaves it unclear where a reader ends it.
fn string_end(b: &[u8], mut i: usize) -> Result<usize, Unclear> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            b'\n' | b'\r' | b'\x0b' | b'\x0c' => return Err(Unclear),
            // NEL, LS and PS are newlines in KDL v2 too.
            0xc2 if b.get(i + 1) == Some(&0x85) => return Err(Unclear),
            0xe2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xa8 | 0xa9)) => return Err(Unclear),
            _ => i += 1,
        }
    }
    Err(Unclear)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `levels` slashdashed blocks, each inside the last, in one of the shapes kdl is
    /// slow on; `between` separates each slashdash from what it comments out.
    fn nested(levels: usize, shape: &str, between: &str) -> String {
        let open = match shape {
            "children" => format!("a /-{between}{{ "),
            "node" => format!("/-{between}a {{ b; "),
            "argument" => format!("a /-{between}1 {{ "),
            _ => unreachable!(),
        };
        format!("x {{ {}{} }}", open.repeat(levels), "}".repeat(levels))
    }

    #[test]
    fn nested_slashdashed_blocks_are_refused_at_the_first_too_deep() {
        for shape in ["children", "node", "argument"] {
            assert_eq!(too_deep(&nested(MAX_SLASHDASH_NESTING, shape, "")), None, "{shape}");
            for between in ["", " ", "\t\n", " \\\n ", " /* c /* nested */ */ ", "// line\n"] {
                let text = nested(MAX_SLASHDASH_NESTING + 1, shape, between);
                let Some(TooDeep::Nested(at)) = too_deep(&text) else {
                    panic!("{shape} {between:?}: {:?}", too_deep(&text))
                };
                assert!(text[at..].starts_with("/-"), "{shape} {between:?}");
                let last = text.rfind("/-").unwrap_or_default();
                assert_eq!(at, last, "the ninth level is the last one: {shape} {between:?}");
            }
        }
    }

    #[test]
    fn commented_out_blocks_side_by_side_are_fine() {
        let services = "/-unikernel \"old\" {\n    image \"/x\"\n    net { expose 80 guest=80; }\n}\n".repeat(40);
        assert_eq!(too_deep(&services), None);
        let blocks = "a /-{ b; } /-{ c; }\n".repeat(40);
        assert_eq!(too_deep(&blocks), None);
        let args = format!("a {} {{ }}", "/-1 ".repeat(40));
        assert_eq!(too_deep(&args), None);
        assert_eq!(too_deep("/-"), None);
        assert_eq!(too_deep("a /- /* unclosed"), None);
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_close_blocks() {
        // Each `}` here is inside a string or comment: to kdl the blocks stay open.
        for hide in ["\"}\"", "\"\\\"}\"", "/* } */", "// }\n", "\"a\\\\\" \"}\""] {
            let open = format!("/-a {hide} {{ b; ");
            let text = format!("x {{ {} }}", open.repeat(MAX_SLASHDASH_NESTING + 1));
            assert!(matches!(too_deep(&text), Some(TooDeep::Nested(_))), "{hide}: {text}");
        }
    }

    #[test]
    fn strings_whose_end_is_unclear_count_every_slashdashed_block() {
        for string in ["\"\"\"\n}\n\"\"\"", "#\"}\"#", "##\"}\"##", "\"}\n", "\"}"] {
            let closed = "/-a { b; }\n".repeat(MAX_SLASHDASH_NESTING + 1);
            let text = format!("s {string}\n{closed}");
            let Some(TooDeep::Counted(at)) = too_deep(&text) else {
                panic!("{string:?}: {:?}", too_deep(&text))
            };
            assert!(text[at..].starts_with("/-"));
            let fewer = format!("s {string}\n{}", "/-a { b; }\n".repeat(MAX_SLASHDASH_NESTING));
            assert_eq!(too_deep(&fewer), None, "{string:?}");
        }
        // Keywords are not raw strings.
        let text = format!("a #true {}", "/-b { c; }\n".repeat(20));
        assert_eq!(too_deep(&text), None);
    }
}
