//! What a file may hold before the kdl crate reads it. kdl 6's v2 reader reads what a
//! slashdash comments out more than once, so its time doubles with each level of
//! slashdashed blocks around a byte, whether the slashdash comments out a children block
//! (`a /-{ b /-{ ... } }`) or a node with children (`x { /-a { b; /-a { b; ... } } }`):
//! ~0.03 s at 12 levels, ~0.5 s at 16, and 0.64 s for an 859-byte file with 7 levels
//! around 700 nested blocks (found by fuzz/kdl, three times; one 334-byte file held the
//! parser for over three minutes). One file in /etc/unikernels, or in the followed git
//! repository, would stall every reload. So a file is refused before kdl sees it when its
//! slashdashed blocks nest more than [`MAX_SLASHDASH_NESTING`] deep, or when the reading
//! they add (each byte counted 2^depth - 1 more times) passes [`MAX_EXTRA_READING`].
//! Commented-out services side by side cost one extra reading of their bytes each.

/// Most slashdashed blocks a file may nest inside each other.
pub const MAX_SLASHDASH_NESTING: usize = 8;

/// Most extra byte readings slashdashed blocks may cost (~0.1-0.5 s of kdl at worst here;
/// 400 commented-out services of 150 bytes side by side stay under it).
pub const MAX_EXTRA_READING: u64 = 1 << 16;

/// Why a file is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooDeep {
    /// Slashdashed blocks nested too deep, or costing too much reading; the offset of
    /// the innermost one's slashdash.
    Nested(usize),
    /// The same, in a file with strings whose ends a reader could see elsewhere
    /// (multi-line, raw or unterminated strings, unterminated comments, characters KDL
    /// forbids), where every slashdashed block is taken to stay open to the end.
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
    // Where KDL forbids a character, the reader's recovery decides where strings end.
    if text.chars().any(forbidden) {
        return counted(text.as_bytes()).map(TooDeep::Counted);
    }
    match nesting(text.as_bytes()) {
        Ok(found) => found.map(TooDeep::Nested),
        Err(Unclear) => counted(text.as_bytes()).map(TooDeep::Counted),
    }
}

/// Code points KDL v2 forbids anywhere in a document.
fn forbidden(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{200e}' | '\u{200f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// A string or comment whose end a reader might see elsewhere.
struct Unclear;

/// The extra readings of `bytes` bytes inside `depth` slashdashed blocks.
fn extra(depth: usize, bytes: usize) -> u64 {
    ((1u64 << depth.min(40)) - 1).saturating_mul(bytes as u64)
}

fn nesting(b: &[u8]) -> Result<Option<usize>, Unclear> {
    // One entry per open block: whether a slashdash opened it.
    let mut blocks: Vec<bool> = Vec::new();
    // The slashdash of each slashdashed block open, innermost last.
    let mut marks: Vec<usize> = Vec::new();
    let mut reading = 0u64;
    let mut pending = None;
    let mut i = 0;
    while i < b.len() {
        let next = match &b[i..] {
            [b'/', b'-', ..] => {
                pending = pending.or(Some(i));
                i + 2
            }
            [b'/', b'/', ..] => line_end(b, i),
            [b'/', b'*', ..] => block_comment_end(b, i)?,
            [b'"', b'"', b'"', ..] | [b'#', ..] if raw_or_multiline(b, i) => return Err(Unclear),
            [b'"', ..] => string_end(b, i)?,
            [b'{', ..] => {
                let slashdash = pending.take();
                if let Some(at) = slashdash {
                    marks.push(at);
                    if marks.len() > MAX_SLASHDASH_NESTING {
                        return Ok(Some(at));
                    }
                }
                blocks.push(slashdash.is_some());
                i + 1
            }
            [b'}', ..] => {
                pending = None;
                if blocks.pop() == Some(true) {
                    marks.pop();
                }
                i + 1
            }
            _ => i + 1,
        };
        reading = reading.saturating_add(extra(marks.len(), next - i));
        if reading > MAX_EXTRA_READING {
            return Ok(marks.last().copied());
        }
        i = next;
    }
    Ok(None)
}

/// Every slashdashed block, as if none ever closed.
fn counted(b: &[u8]) -> Option<usize> {
    let mut marks: Vec<usize> = Vec::new();
    let mut reading = 0u64;
    let mut pending = None;
    for i in 0..b.len() {
        match &b[i..] {
            [b'/', b'-', ..] => pending = pending.or(Some(i)),
            [b'{', ..] => {
                if let Some(at) = pending.take() {
                    marks.push(at);
                    if marks.len() > MAX_SLASHDASH_NESTING {
                        return Some(at);
                    }
                }
            }
            _ => {}
        }
        reading = reading.saturating_add(extra(marks.len(), 1));
        if reading > MAX_EXTRA_READING {
            return marks.last().copied();
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
    fn a_big_region_inside_a_few_slashdashed_levels_is_refused() {
        // Found by fuzz/kdl: 7 levels (under the nesting limit) around 700 nested blocks.
        let open = "/-a { b; ".repeat(7);
        let text = format!("x {{ {open}{}", "c {".repeat(700));
        let Some(TooDeep::Nested(at)) = too_deep(&text) else {
            panic!("{:?}", too_deep(&text))
        };
        assert_eq!(at, text.rfind("/-").unwrap_or_default(), "at the innermost slashdash");
        // The same region under one level is read once more: fine.
        let text = format!("x {{ /-a {{ {}", "c {".repeat(700));
        assert_eq!(too_deep(&text), None);
    }

    #[test]
    fn commented_out_blocks_side_by_side_are_fine() {
        let many = "/-unikernel \"old\" { image \"/x\"; memory \"16M\"; net { expose 8080 guest=80; }; }\n".repeat(400);
        assert_eq!(too_deep(&many), None);
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
        for string in [
            "\"\"\"\n}\n\"\"\"",
            "#\"}\"#",
            "##\"}\"##",
            "\"}\n",
            "\"}",
            "\"\u{1b}}\"",
        ] {
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
