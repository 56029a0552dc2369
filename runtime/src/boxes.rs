//! Parsing of stage-4 grounding answers: `<p>phrase</p> {<x1><y1><x2><y2>}` with coordinates on
//! a 0–100 grid (several boxes may be joined by `<delim>`), scaled to the original image.
//! Malformed spans are left as text; parsing never fails.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BoundingBox {
    pub phrase: String,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

/// Parses `{<a><b><c><d>}` at the start of `s`; returns the four numbers and the bytes used.
fn parse_box(s: &str) -> Option<([f32; 4], usize)> {
    let rest = s.strip_prefix('{')?;
    let mut used = 1;
    let mut vals = [0f32; 4];
    let mut cur = rest;
    for v in vals.iter_mut() {
        let inner = cur.strip_prefix('<')?;
        let end = inner.find('>')?;
        let num = inner[..end].trim();
        if num.is_empty() || num.len() > 6 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *v = num.parse::<f32>().ok()?;
        used += end + 2;
        cur = &inner[end + 1..];
    }
    cur.strip_prefix('}')?;
    Some((vals, used + 1))
}

/// Finds every box in `text`, attaches the closest preceding `<p>…</p>` phrase, and scales the
/// 0–100 coordinates to a `width × height` image (clamped to the image).
pub fn parse_boxes(text: &str, width: usize, height: usize) -> Vec<BoundingBox> {
    let mut out = Vec::new();
    let mut phrase = String::new();
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        let rest = &text[i..];
        if let Some(after) = rest.strip_prefix("<p>") {
            if let Some(end) = after.find("</p>") {
                phrase = after[..end].trim().to_string();
                i += 3 + end + 4;
                continue;
            }
        }
        if rest.starts_with('{') {
            if let Some((v, used)) = parse_box(rest) {
                let sx = width as f32 / 100.0;
                let sy = height as f32 / 100.0;
                let cx = |x: f32| (x * sx).clamp(0.0, width as f32);
                let cy = |y: f32| (y * sy).clamp(0.0, height as f32);
                out.push(BoundingBox {
                    phrase: phrase.clone(),
                    x1: cx(v[0]),
                    y1: cy(v[1]),
                    x2: cx(v[2]),
                    y2: cy(v[3]),
                });
                i += used;
                continue;
            }
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrase_and_box() {
        let b = parse_boxes("<p>a brown dog</p> {<10><20><50><100>}", 200, 100);
        assert_eq!(
            b,
            vec![BoundingBox {
                phrase: "a brown dog".into(),
                x1: 20.0,
                y1: 20.0,
                x2: 100.0,
                y2: 100.0
            }]
        );
    }

    #[test]
    fn several_boxes_with_delim_and_bare_box() {
        let b = parse_boxes(
            "<p>cat</p> {<0><0><10><10>}<delim>{<50><50><60><60>} and {<1><2><3><4>}",
            100,
            100,
        );
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|x| x.phrase == "cat"));
        assert_eq!(b[1].x1, 50.0);
    }

    #[test]
    fn malformed_answers_are_text() {
        for s in [
            "{<1><2><3>}",
            "{<a><b><c><d>}",
            "<p>unclosed {<1><2><3><4>",
            "{<1><2><3><4>",
            "{<>}",
            "😀{<1><2>",
            "<p></p>{<999999999><1><1><1>}",
        ] {
            let b = parse_boxes(s, 10, 10);
            assert!(b.is_empty() || s.starts_with("<p>unclosed"), "{s}: {b:?}");
        }
        // an unclosed phrase does not stop a later valid box from being found
        assert_eq!(parse_boxes("<p>unclosed {<1><2><3><4>}", 100, 100).len(), 1);
        // coordinates over 100 are clamped to the image
        assert_eq!(parse_boxes("{<0><0><150><100>}", 10, 10)[0].x2, 10.0);
    }
}
