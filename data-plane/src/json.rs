//! A JSON syntax check (RFC 8259) for the envelope: does a client's text hold exactly one JSON
//! value, and where is it? Nothing is built; strings are skipped with `memchr2` and a
//! vectorisable control-character scan, several times faster than a general parser on the long
//! strings agents exchange. Agrees with `serde_json` (a property test below checks it), except
//! that nesting is bounded at [`MAX_DEPTH`] so the envelope around it stays within
//! `serde_json`'s limit of 128.

/// Deepest nesting accepted: the envelope adds one level, so an agent parsing it with
/// `serde_json` (limit 128) can always read it.
pub const MAX_DEPTH: usize = 127;

/// The byte range of the one JSON value `s` holds (without the white space around it), or
/// `None` when `s` is not JSON.
pub fn value_span(s: &str) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let start = skip_ws(b, 0);
    let end = value(b, start)?;
    (skip_ws(b, end) == b.len()).then_some((start, end))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Where the container opened at each level is: a bit per level, set for an object.
struct Stack {
    objects: u128,
    depth: usize,
}

impl Stack {
    fn push(&mut self, object: bool) -> Option<()> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        self.objects = (self.objects << 1) | u128::from(object);
        self.depth += 1;
        Some(())
    }

    fn pop(&mut self) {
        self.objects >>= 1;
        self.depth -= 1;
    }

    fn in_object(&self) -> bool {
        self.objects & 1 == 1
    }
}

/// One value starting at `i` (no white space before it); returns the index after it.
fn value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut stack = Stack {
        objects: 0,
        depth: 0,
    };
    loop {
        // A value is expected at `i`.
        match *b.get(i)? {
            open @ (b'{' | b'[') => {
                let object = open == b'{';
                stack.push(object)?;
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&closing(object)) {
                    stack.pop();
                    i += 1;
                } else {
                    if object {
                        i = key(b, i)?;
                    }
                    continue;
                }
            }
            b'"' => i = string(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            _ => i = number(b, i)?,
        }
        // After a value: close containers or go on to the next element.
        loop {
            if stack.depth == 0 {
                return Some(i);
            }
            i = skip_ws(b, i);
            let close = closing(stack.in_object());
            match *b.get(i)? {
                b',' => {
                    i = skip_ws(b, i + 1);
                    if stack.in_object() {
                        i = key(b, i)?;
                    }
                    break;
                }
                c if c == close => {
                    stack.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

fn closing(object: bool) -> u8 {
    if object {
        b'}'
    } else {
        b']'
    }
}

/// `"key" :` and the white space after it.
fn key(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string(b, i)?);
    (b.get(i) == Some(&b':')).then(|| skip_ws(b, i + 1))
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..i + word.len())
        .filter(|w| *w == word)
        .map(|_| i + word.len())
}

/// A string opening at `i`; returns the index after its closing quote.
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i = special(b, i)?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        i = match *b.get(i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i + 2,
            b'u' => {
                let hex = b.get(i + 2..i + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                i + 6
            }
            _ => return None,
        };
    }
}

/// Bytes a short string is scanned for eight at a time before the scan turns to `memchr2`:
/// most strings in a message (keys, short values) end within them, and `memchr2`'s set-up
/// costs more than the whole of such a string.
const SHORT: usize = 64;

/// The index of the first `"` or `\` from `i` on; `None` when a control character (invalid
/// unescaped) comes first or the input ends.
fn special(b: &[u8], mut i: usize) -> Option<usize> {
    let end = b.len().min(i.saturating_add(SHORT));
    while let Some(word) = b.get(i..end).and_then(<[u8]>::first_chunk::<8>) {
        let found = special_bytes(u64::from_le_bytes(*word));
        if found != 0 {
            i += (found.trailing_zeros() / 8) as usize;
            return (b[i] >= 0x20).then_some(i);
        }
        i += 8;
    }
    // Fewer than eight bytes left in the window.
    while i < end {
        match b[i] {
            b'"' | b'\\' => return Some(i),
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
    let rest = b.get(i..)?;
    let n = memchr::memchr2(b'"', b'\\', rest)?;
    // The input is UTF-8 already; only unescaped control characters are invalid.
    (!has_control(&rest[..n])).then_some(i + n)
}

/// The high bit of each byte of `w` that is `"`, `\` or below 0x20 (SWAR). Borrows can mark
/// bytes above a marked one as well, so only the lowest mark is exact: the one used.
fn special_bytes(w: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | below_space
}

/// Whether `s` holds a byte below 0x20: a running minimum over 32-byte blocks, which the
/// compiler turns into vector instructions (a byte-at-a-time test costs several times more on
/// long strings).
fn has_control(s: &[u8]) -> bool {
    let (blocks, tail) = s.as_chunks::<32>();
    let mut low = [u8::MAX; 32];
    for block in blocks {
        for (l, &c) in low.iter_mut().zip(block) {
            *l = (*l).min(c);
        }
    }
    // (Reduced with `min`, not `any`: this form keeps the loop above in vector registers.)
    low.into_iter().min().is_some_and(|m| m < 0x20) || tail.iter().any(|&c| c < 0x20)
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| {
        let n = b[i.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        (n > 0).then_some(i + n)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_span(s: &str) -> Option<(usize, usize)> {
        let raw = serde_json::from_str::<&serde_json::value::RawValue>(s).ok()?;
        let start = raw.get().as_ptr() as usize - s.as_ptr() as usize;
        Some((start, start + raw.get().len()))
    }

    #[test]
    fn agrees_with_serde_json_on_a_corpus() {
        let cases = [
            "0",
            "-0",
            "1",
            "-1",
            "10",
            "01",
            "-01",
            "1.",
            "1.5",
            ".5",
            "1e5",
            "1E+5",
            "1e-5",
            "1e",
            "1e+",
            "-",
            "+1",
            "1.5e3",
            "0.0",
            "00",
            "1x",
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "nulll",
            "True",
            "\"\"",
            "\"a\"",
            "\"a",
            "\"\\\"\"",
            "\"\\\\\"",
            "\"\\/\"",
            "\"\\b\\f\\n\\r\\t\"",
            "\"\\x\"",
            "\"\\u00e9\"",
            "\"\\u00g9\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"a\tb\"",
            "\"a\u{1}b\"",
            "\"a\u{7f}b\"",
            "\"é✓😀\"",
            "[]",
            "[ ]",
            "[1]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,2]",
            "[[[]]]",
            "[[]",
            "[]]",
            "{}",
            "{ }",
            "{\"a\":1}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{a:1}",
            "{1:1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":{\"b\":[1,{\"c\":null}]}}",
            "{\"a\":1,\"a\":2}",
            " 1 ",
            "\n[1]\r\n\t",
            "1 2",
            "{\"a\":1} x",
            "",
            " ",
            "[\"a\",{\"b\":\"c\\\"d\"}]",
            "{\"a\":[}",
            "[{]}",
            "[1}",
            "{\"a\":1]",
            "\u{feff}1",
            "[1,\n2 ,\t3 ]",
            "{ \"a\" : 1 , \"b\" : [ true , false ] }",
        ];
        for c in cases {
            assert_eq!(value_span(c), serde_span(c), "{c:?}");
        }
    }

    /// Random edits of valid documents: every result judged the same as `serde_json` does.
    #[test]
    fn agrees_with_serde_json_on_mutations() {
        let seeds = [
            r#"{"a":[1,-2.5e3,true,false,null,"x\"y\\z\u00e9"],"b":{"c":{}},"d":[]}"#,
            r#"[0,{"k":"v"},[[["deep"]]],-0.0,1E+2,"\t"]"#,
            r#""just a string with \n escapes""#,
            r#"{"long":"a string long enough to be checked in 32-byte blocks, twice over and then some","n":1}"#,
        ];
        let alphabet = b"{}[]:,\"\\ 0123456789.eE+-tfnrulasx\x01\t\n";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let seed = seeds[next() as usize % seeds.len()];
            let mut doc = seed.as_bytes().to_vec();
            for _ in 0..1 + next() % 3 {
                let at = next() as usize % (doc.len() + 1);
                let c = alphabet[next() as usize % alphabet.len()];
                match next() % 3 {
                    0 => doc.insert(at, c),
                    1 if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ if at < doc.len() => doc[at] = c,
                    _ => doc.push(c),
                }
            }
            // Edits are ASCII, so a cut through a multi-byte character is the only way out
            // of UTF-8; those inputs never reach the check.
            let Ok(s) = std::str::from_utf8(&doc) else {
                continue;
            };
            assert_eq!(value_span(s), serde_span(s), "{s:?}");
        }
    }

    #[test]
    fn a_control_character_is_found_anywhere_in_a_long_string() {
        let clean = "x".repeat(100);
        assert!(!has_control(clean.as_bytes()));
        for at in 0..100 {
            let mut b = clean.clone().into_bytes();
            b[at] = 0x1f;
            assert!(has_control(&b), "{at}");
            let doc = format!("\"{}\"", std::str::from_utf8(&b).unwrap());
            assert_eq!(value_span(&doc), None, "{at}");
        }
    }

    /// The word-at-a-time scan finds what a byte loop finds, wherever the byte sits relative to
    /// the words and the short window, next to bytes of multi-byte characters too.
    #[test]
    fn the_scan_for_quotes_backslashes_and_control_characters_matches_a_byte_loop() {
        let naive = |b: &[u8], i: usize| {
            let at = i + b[i..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            (b[at] >= 0x20).then_some(at)
        };
        let fillers: [&[u8]; 3] = [b"x", "é".as_bytes(), &[0xa2, 0xdc, 0xa0, 0x7f]];
        for filler in fillers {
            for len in 0..SHORT + 20 {
                for special_byte in [b'"', b'\\', 0x00, 0x1f] {
                    for at in 0..=len {
                        let mut b: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
                        if at < len {
                            b[at] = special_byte;
                        }
                        for start in [0, 1, 3] {
                            if start <= b.len() {
                                assert_eq!(special(&b, start), naive(&b, start), "{b:?} {start}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn nesting_is_bounded_so_the_envelope_stays_readable() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(value_span(&ok), Some((0, ok.len())));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(value_span(&deep), None);
        let objects = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(value_span(&objects).is_some());
        // Very deep input is refused without recursion.
        let huge = "[".repeat(1 << 20);
        assert_eq!(value_span(&huge), None);
    }
}
