//! A fast reader for the plain subset of KDL v2 that declarations are written in: bare
//! node names, quoted strings without escapes, identifier strings, decimal integers,
//! `#true`/`#false`, `key=value` properties, `{ }` blocks, `;`, `//` comments. It builds
//! the same `KdlDocument` (names, values, spans) the kdl crate would, ~50x faster (the
//! kdl crate keeps every byte of formatting, which a daemon reading 10,000 files at start
//! does not need). Anything outside the subset returns `None`, and the caller parses the
//! file with kdl as before, which also gives syntax errors their full diagnostics.
use kdl::{KdlDocument, KdlEntry, KdlIdentifier, KdlNode, KdlValue};
use miette::SourceSpan;

/// The document, or `None` when `text` uses anything outside the subset.
pub fn parse(text: &str) -> Option<KdlDocument> {
    let mut p = Reader {
        s: text.as_bytes(),
        at: 0,
    };
    let nodes = p.nodes(0)?;
    (p.at == p.s.len()).then(|| document(nodes, 0, text.len()))
}

fn document(nodes: Vec<KdlNode>, start: usize, end: usize) -> KdlDocument {
    let mut doc = KdlDocument::new();
    *doc.nodes_mut() = nodes;
    doc.set_span(SourceSpan::from(start..end));
    doc
}

/// Nesting beyond this is left to kdl (declarations use two or three levels).
const MAX_DEPTH: usize = 16;

struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

/// KDL v2's disallowed literal code points beyond control characters: the Unicode
/// direction controls and U+FEFF.
fn forbidden(c: char) -> bool {
    matches!(c, '\u{200E}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    /// Spaces, tabs and `// comments` (up to, not including, the newline).
    fn blanks(&mut self) -> Option<()> {
        self.spaces();
        self.comment()?;
        Some(())
    }

    /// A newline: `\n` or `\r\n` (a lone `\r` and other newlines are kdl's).
    fn newline(&mut self) -> Option<bool> {
        match self.peek() {
            Some(b'\n') => {
                self.at += 1;
                Some(true)
            }
            Some(b'\r') if self.s.get(self.at + 1) == Some(&b'\n') => {
                self.at += 2;
                Some(true)
            }
            Some(b'\r') => None,
            _ => Some(false),
        }
    }

    /// Nodes until the end of the text (`depth` 0) or a `}`.
    fn nodes(&mut self, depth: usize) -> Option<Vec<KdlNode>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut nodes = Vec::new();
        loop {
            self.blanks()?;
            if self.newline()? {
                continue;
            }
            match self.peek() {
                None if depth == 0 => return Some(nodes),
                Some(b'}') if depth > 0 => return Some(nodes),
                Some(b) if is_ident_start(b) => {
                    nodes.push(self.node(depth)?);
                    // `;` ends a node; it is not a node of its own.
                    if self.peek() == Some(b';') {
                        self.at += 1;
                    }
                }
                _ => return None,
            }
        }
    }

    fn ident(&mut self) -> Option<KdlIdentifier> {
        let start = self.at;
        while self.peek().is_some_and(is_ident) {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.at]).ok()?;
        // Keywords-like names are not identifiers in v2 (`true`, `null`, `inf`...): kdl's.
        if matches!(text, "true" | "false" | "null" | "inf" | "nan") || text.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let mut id = KdlIdentifier::from(text);
        id.set_span(SourceSpan::from(start..self.at));
        Some(id)
    }

    fn spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// At `//`: true, and the comment is skipped (up to the newline); at another `/`: kdl's.
    fn comment(&mut self) -> Option<bool> {
        if self.peek() != Some(b'/') {
            return Some(false);
        }
        if self.s.get(self.at + 1) != Some(&b'/') {
            return None;
        }
        while !matches!(self.peek(), None | Some(b'\n' | b'\r')) {
            // Non-ASCII, and control characters (form feed and vertical tab end a line in
            // KDL v2, NUL and the like are refused): kdl's call (found by fuzz/kdl).
            let b = self.s[self.at];
            if b >= 0x7f || (b < 0x20 && b != b'\t') {
                return None;
            }
            self.at += 1;
        }
        Some(true)
    }

    fn node(&mut self, depth: usize) -> Option<KdlNode> {
        let start = self.at;
        let mut node = KdlNode::new(self.ident()?);
        // As kdl spans a node: up to the whitespace after its last entry or block, not
        // its comment or terminator.
        let end;
        loop {
            let before = self.at;
            self.spaces();
            let spaced = self.at > before;
            match self.peek() {
                None | Some(b'\n' | b'\r' | b';' | b'}' | b'/') => {
                    end = self.at;
                    self.comment()?;
                    break;
                }
                // A block needs a space before it, like every entry.
                Some(b'{') if spaced => {
                    self.at += 1;
                    let children = self.nodes(depth + 1)?;
                    if self.peek() != Some(b'}') {
                        return None;
                    }
                    // As kdl spans a block: from its first node to the end of its last
                    // (an empty one: where its `}` is).
                    let (from, to) = match (children.first(), children.last()) {
                        (Some(first), Some(last)) => (first.span().offset(), last.span().offset() + last.span().len()),
                        _ => (self.at, self.at),
                    };
                    self.at += 1;
                    *node.children_mut() = Some(document(children, from, to));
                    // Only a terminator (or a comment before one) may follow a block.
                    self.spaces();
                    end = self.at;
                    self.comment()?;
                    if !matches!(self.peek(), None | Some(b'\n' | b'\r' | b';' | b'}')) {
                        return None;
                    }
                    break;
                }
                Some(_) if !spaced => return None,
                Some(_) => {
                    let entry = self.entry()?;
                    node.entries_mut().push(entry);
                }
            }
        }
        node.set_span(SourceSpan::from(start..end));
        Some(node)
    }

    fn entry(&mut self) -> Option<KdlEntry> {
        let start = self.at;
        let b = self.peek()?;
        if is_ident_start(b) {
            let key = self.ident()?;
            if self.peek() == Some(b'=') {
                self.at += 1;
                let value = self.value()?;
                let mut e = KdlEntry::new_prop(key, value);
                e.set_span(SourceSpan::from(start..self.at));
                return Some(e);
            }
            // An identifier string as a value.
            let mut e = KdlEntry::new(KdlValue::String(key.value().to_string()));
            e.set_span(SourceSpan::from(start..self.at));
            return Some(e);
        }
        let value = self.value()?;
        let mut e = KdlEntry::new(value);
        e.set_span(SourceSpan::from(start..self.at));
        Some(e)
    }

    fn value(&mut self) -> Option<KdlValue> {
        let start = self.at;
        let v = match self.peek()? {
            b'"' => {
                if self.s.get(self.at + 1..self.at + 3) == Some(b"\"\"") {
                    return None; // a multi-line string
                }
                self.at += 1;
                let body = self.at;
                loop {
                    match self.peek()? {
                        b'"' => break,
                        // Escapes, and newlines kdl would refuse with a diagnostic.
                        b'\\' | b'\n' | b'\r' => return None,
                        _ => self.at += 1,
                    }
                }
                let text = std::str::from_utf8(&self.s[body..self.at]).ok()?;
                self.at += 1;
                // Non-ASCII whitespace, control characters and the code points KDL v2
                // forbids anywhere (bidi controls, as in "Trojan Source"; a BOM): kdl's
                // call (found by fuzz/kdl).
                if text
                    .chars()
                    .any(|c| c.is_control() || (!c.is_ascii() && c.is_whitespace()) || forbidden(c))
                {
                    return None;
                }
                KdlValue::String(text.to_string())
            }
            b'#' => {
                let word = &self.s[self.at..];
                if word.starts_with(b"#true") {
                    self.at += 5;
                    KdlValue::Bool(true)
                } else if word.starts_with(b"#false") {
                    self.at += 6;
                    KdlValue::Bool(false)
                } else {
                    return None;
                }
            }
            b'-' | b'+' | b'0'..=b'9' => {
                if matches!(self.peek(), Some(b'-' | b'+')) {
                    self.at += 1;
                }
                let digits = self.at;
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.at += 1;
                }
                if self.at == digits {
                    return None;
                }
                let text = std::str::from_utf8(&self.s[start..self.at]).ok()?;
                KdlValue::Integer(text.parse().ok()?)
            }
            _ => return None,
        };
        // A value ends at whitespace or a terminator; anything glued on (`1.5`, `0x10`,
        // `1_000`, `#truex`) is kdl's.
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b';' | b'}' | b'{') => Some(v),
            Some(b'/') if self.s.get(self.at + 1) == Some(&b'/') => Some(v),
            _ => None,
        }
    }
}

/// Everything the validation reads of a document: names, values, property keys, spans,
/// nesting. Two readings of a text agree when their shapes do (the tests and the fuzzer
/// compare this reader with the kdl crate by it).
pub fn shape(doc: &KdlDocument) -> Vec<String> {
    let mut out = Vec::new();
    for n in doc.nodes() {
        out.push(format!(
            "node {} name@{:?} span {:?}",
            n.name().value(),
            n.name().span(),
            n.span()
        ));
        for e in n.entries() {
            out.push(format!(
                "  entry {:?}={:?} @{:?}",
                e.name().map(|k| (k.value().to_string(), k.span())),
                e.value(),
                e.span()
            ));
        }
        if let Some(c) = n.children() {
            out.push(format!("  children @{:?}", c.span()));
            out.extend(shape(c).into_iter().map(|l| format!("    {l}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAME: &[&str] = &[
        "unikernel \"web\" {\n    image \"/usr/share/unikerneld/images/http\"\n    cmdline \"name=web port=80\"\n    memory \"16M\"\n    net {\n        expose 8080 guest=80\n    }\n    restart \"always\"\n}\n",
        "// a comment\nunikernel \"a\" { image \"/a\"; vcpus 2; }\nunikernel \"b\" {\n  image \"/b\" // trailing\n}",
        "unikernel \"x\" {\r\n\timage \"/x\"\r\n\tenv LOG=\"info\" MODE=\"prod\"\r\n\tstandby idle=\"30s\" prewarm=#true\r\n\tlimits { memory-max \"64M\"; cpu-weight 50; }\r\n}\r\n",
        "unikernel \"ü-名前\" { image \"/ä\"; cmdline \"a -- b\"; vcpus -1; restart always }",
        "\n\n   unikernel \"a\" {}\n",
        "unikernel \"a\" { }\nunikernel \"b\" {\n}\nx 1   // c\ny 2;",
        "a { b 1; c 2 }",
        "",
    ];

    #[test]
    fn the_subset_reads_exactly_as_kdl_does() {
        for text in SAME {
            let fast = parse(text).unwrap_or_else(|| panic!("should be in the subset: {text:?}"));
            let kdl = KdlDocument::parse_v2(text).unwrap();
            assert_eq!(shape(&fast), shape(&kdl), "{text:?}");
        }
    }

    #[test]
    fn anything_else_is_left_to_kdl() {
        for text in [
            "unikernel \"a\" { image \"/a\\n\" }",                // escapes
            "unikernel \"a\" { image #\"/a\"# }",                 // raw strings
            "unikernel \"a\" { /-image \"/a\" }",                 // slashdash
            "unikernel \"a\" { image \"/a\" /* c */ }",           // block comments
            "unikernel \"a\" { vcpus 1.5 }",                      // floats
            "unikernel \"a\" { vcpus 0x10 }",                     // hex
            "unikernel \"a\" { vcpus 1_0 }",                      // underscores
            "unikernel \"a\" { flag #null }",                     // null
            "unikernel \"a\" { vcpus (u8)1 }",                    // type annotations
            "\"quoted\" { }",                                     // quoted node names
            "unikernel \"a\" { image \"/a\" \\\n \"/b\" }",       // line continuation
            "unikernel \"a\" { image \"/a\" }\rnext",             // a lone CR
            "unikernel \"a\" { image \"\"\"\n/a\n\"\"\" }",       // multi-line strings
            "unikernel \"a\" { k = \"v\" }",                      // spaced properties
            "unikernel \"a\" {",                                  // unterminated
            "unikernel \"a\" } ",                                 // stray brace
            "unikernel \"a\" { image \"/a\" } x",                 // after a block
            "unikernel \"a\"{ image \"/a\" }",                    // glued block
            "unikernel true",                                     // v1 keywords
            "Z// \0 \x0c)\n",                                     // control characters in a comment
            "unikernel \"a\" { image \"/a\u{a0}\" }",             // odd whitespace
            "unikernel \"a\" { restart \"on-fa\u{202b}ilure\" }", // a bidi control
            "unikernel \"a\" { image \"\u{2066}/a\" }",           // another
            "unikernel \"a\" { image \"/a\u{feff}\" }",           // a BOM inside
        ] {
            assert!(parse(text).is_none(), "should be left to kdl: {text:?}");
        }
    }

    /// Mutated declarations (a small PRNG, fixed seed: the same cases every run): whatever
    /// the fast reader accepts, kdl must accept and read the same way.
    #[test]
    fn whatever_it_accepts_kdl_reads_the_same_way() {
        const PIECES: &[&str] = &[
            "\"", "{", "}", ";", "/", "//", "\n", "\r\n", "\r", " ", "\t", "=", "#", "#true", "-", "+", "0", "7", "a",
            "_", ".", "\\", "é", "\u{a0}", "(", "true", "\"\"\"", "/-", "/*",
        ];
        // UK_FAST_CASES and UK_FAST_SEED for a longer or another run.
        let cases: usize = std::env::var("UK_FAST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let mut seed: u64 = std::env::var("UK_FAST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut accepted = 0;
        for case in 0..cases {
            let mut text = SAME[case % SAME.len()].to_string();
            for _ in 0..1 + next(3) {
                let mut at = next(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let piece = PIECES[next(PIECES.len())];
                match next(3) {
                    0 => text.insert_str(at, piece),
                    1 => {
                        let mut end = (at + 1).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, piece);
                    }
                    _ => {
                        let mut end = (at + 1 + next(3)).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, "");
                    }
                }
            }
            if let Some(fast) = parse(&text) {
                accepted += 1;
                let kdl = KdlDocument::parse_v2(&text)
                    .unwrap_or_else(|e| panic!("kdl refuses what we read: {text:?}: {e:?}"));
                assert_eq!(shape(&fast), shape(&kdl), "{text:?}");
            }
        }
        assert!(
            accepted > cases / 20,
            "the mutations should leave many files in the subset ({accepted})"
        );
    }
}
