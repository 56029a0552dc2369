//! GPT-2's byte ↔ unicode map: every byte gets a printable character so that BPE vocabularies
//! can be stored as text (`Ġ` = space, `Ċ` = newline).

/// `BYTE_TO_CHAR[b]` is the byte-level character of byte `b`.
pub(crate) static BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let byte = b as u8;
        let self_mapped = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if self_mapped {
            b as u32
        } else {
            next_shifted += 1;
            255 + next_shifted
        };
        // All values are below 0x144, never surrogates.
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
}

/// Byte-level characters all lie below U+0144; `CHAR_TO_BYTE[cp]` is the byte or -1.
static CHAR_TO_BYTE: [i16; 0x144] = build_char_to_byte();

const fn build_char_to_byte() -> [i16; 0x144] {
    let mut table = [-1i16; 0x144];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as i16;
        b += 1;
    }
    table
}

/// The byte a byte-level character stands for, if it is one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    match CHAR_TO_BYTE.get(c as usize) {
        Some(&b) if b >= 0 => Some(b as u8),
        _ => None,
    }
}

/// Raw bytes of a byte-level spelling, like the HF `ByteLevel` decoder: if any character is not
/// a byte-level character the token's own UTF-8 is used unchanged.
pub(crate) fn spelling_to_bytes(spelling: &str) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = spelling.chars().map(char_to_byte).collect();
    mapped.unwrap_or_else(|| spelling.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'\t' as usize], 'ĉ');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
        assert_eq!(BYTE_TO_CHAR[0xAD], 'Ń');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xE9], 'é');
    }

    #[test]
    fn map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(spelling_to_bytes("ĠhelloĊ"), b" hello\n");
        assert_eq!(spelling_to_bytes("  x"), b"  x");
        let spelled: String = "é ".bytes().map(|b| BYTE_TO_CHAR[b as usize]).collect();
        assert_eq!(spelled, "Ã©Ġ");
    }
}
