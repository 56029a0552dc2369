//! GPT-2 pre-tokenizer, hand-written: the same splits as the regex the HF `ByteLevel`
//! pre-tokenizer runs with Oniguruma,
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//! Every character is exactly one of letter / number / white space / other, so the
//! alternatives reduce to a few cases (see `split_gpt2`).

use super::unicode_tables::CHAR_CLASS_RANGES;

/// The character classes the regex distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CharClass {
    /// `\p{L}`: general category L*.
    Letter,
    /// `\p{N}`: general category N*.
    Number,
    /// `\s`: the White_Space property.
    Space,
    /// Anything else (`[^\s\p{L}\p{N}]`).
    Other,
}

pub(crate) fn char_class(c: char) -> CharClass {
    let cp = c as u32;
    if cp < 0x80 {
        let b = cp as u8;
        return if b.is_ascii_alphabetic() {
            CharClass::Letter
        } else if b.is_ascii_digit() {
            CharClass::Number
        } else if matches!(b, b'\t'..=b'\r' | b' ') {
            CharClass::Space
        } else {
            CharClass::Other
        };
    }
    // Last range starting at or before cp.
    let idx = CHAR_CLASS_RANGES.partition_point(|&(first, _, _)| first <= cp);
    match idx.checked_sub(1).map(|i| CHAR_CLASS_RANGES[i]) {
        Some((_, last, class)) if cp <= last => class,
        _ => CharClass::Other,
    }
}

/// Splits `text` into GPT-2 pre-tokens; the pieces are consecutive and cover all of `text`.
pub(crate) fn split_gpt2<'t>(text: &'t str, mut emit: impl FnMut(&'t str)) {
    let chars: Vec<(usize, char, CharClass)> = text
        .char_indices()
        .map(|(i, c)| (i, c, char_class(c)))
        .collect();
    let n = chars.len();
    let byte_at = |k: usize| if k < n { chars[k].0 } else { text.len() };
    let mut i = 0;
    while i < n {
        let (_, c, class) = chars[i];
        let end = contraction_len(&chars[i..])
            .map(|len| i + len)
            .unwrap_or_else(|| {
                // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional literal space, then a
                // run of the (non-space) class of the next character.
                let run_start = if c == ' ' && i + 1 < n && chars[i + 1].2 != CharClass::Space {
                    i + 1
                } else {
                    i
                };
                let run_class = chars[run_start].2;
                if run_class != CharClass::Space {
                    let mut e = run_start + 1;
                    while e < n && chars[e].2 == run_class {
                        e += 1;
                    }
                    e
                } else {
                    debug_assert_eq!(class, CharClass::Space);
                    // `\s+(?!\S)`: the white-space run, less its last character when a
                    // non-space follows; if that leaves nothing, `\s+` takes the single char.
                    let mut e = i + 1;
                    while e < n && chars[e].2 == CharClass::Space {
                        e += 1;
                    }
                    if e < n && e - i >= 2 {
                        e - 1
                    } else {
                        e
                    }
                }
            });
        emit(&text[byte_at(i)..byte_at(end)]);
        i = end;
    }
}

/// Length in chars of `'s|'t|'re|'ve|'m|'ll|'d` at the start of `chars` (case-sensitive).
fn contraction_len(chars: &[(usize, char, CharClass)]) -> Option<usize> {
    let c = |k: usize| chars.get(k).map(|t| t.1);
    if c(0) != Some('\'') {
        return None;
    }
    match (c(1), c(2)) {
        (Some('s' | 't' | 'm' | 'd'), _) => Some(2),
        (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => Some(3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        let mut v = Vec::new();
        split_gpt2(s, |p| v.push(p));
        v
    }

    #[test]
    fn gpt2_examples() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            split("It's  a  test!!"),
            ["It", "'s", " ", " a", " ", " test", "!!"]
        );
        assert_eq!(split("a   b"), ["a", "  ", " b"]);
        assert_eq!(split("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(split("x  "), ["x", "  "]);
        assert_eq!(split(" 's 'LL 'll"), [" '", "s", " '", "LL", " '", "ll"]);
        assert_eq!(split("'sup 're're"), ["'s", "up", " '", "re", "'re"]);
        assert_eq!(split("abc123 456def"), ["abc", "123", " 456", "def"]);
        assert_eq!(split("###Human:"), ["###", "Human", ":"]);
        assert_eq!(split("<ImageHere>"), ["<", "ImageHere", ">"]);
        assert_eq!(split("a \tb"), ["a", " ", "\t", "b"]);
        assert_eq!(split("日本語です。x"), ["日本語です", "。", "x"]);
        assert_eq!(split("\u{00a0}x"), ["\u{00a0}", "x"]);
        assert_eq!(split(""), Vec::<&str>::new());
    }

    #[test]
    fn classes() {
        assert_eq!(char_class('é'), CharClass::Letter);
        assert_eq!(char_class('\u{0301}'), CharClass::Other); // combining mark: Mn
        assert_eq!(char_class('²'), CharClass::Number);
        assert_eq!(char_class('Ⅳ'), CharClass::Number);
        assert_eq!(char_class('\u{3000}'), CharClass::Space);
        assert_eq!(char_class('\u{85}'), CharClass::Space);
        assert_eq!(char_class('\u{200b}'), CharClass::Other);
        assert_eq!(char_class('😀'), CharClass::Other);
        assert_eq!(char_class('中'), CharClass::Letter);
        assert_eq!(char_class('\u{10FFFF}'), CharClass::Other);
    }
}
