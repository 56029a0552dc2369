//! `--draw-boxes`: the image with each grounding box outlined and labelled with its phrase.
//! Labels use a tiny built-in 3×5 pixel font (upper-case letters, digits, a few signs), drawn
//! at 2× scale, so no font file is needed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::boxes::BoundingBox;
use crate::image::RgbImage;

const PALETTE: [[u8; 3]; 6] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [240, 50, 230],
];

/// 3×5 glyphs: 5 rows of 3 bits (MSB = left column).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b110, 0b001, 0b010, 0b100, 0b111],
        '3' => [0b110, 0b001, 0b010, 0b001, 0b110],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b110, 0b001, 0b110],
        '6' => [0b011, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b110],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        ',' => [0b000, 0b000, 0b000, 0b010, 0b100],
        '\'' => [0b010, 0b010, 0b000, 0b000, 0b000],
        ' ' => [0; 5],
        _ => [0b111, 0b101, 0b101, 0b101, 0b111],
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as usize) < img.width && (y as usize) < img.height {
        let i = (y as usize * img.width + x as usize) * 3;
        img.data[i..i + 3].copy_from_slice(&c);
    }
}

/// Draws `boxes` onto a copy of `img` (2-pixel outlines, label above the box) and writes it as
/// PNG (or any format the extension names).
pub fn draw_boxes(img: &RgbImage, boxes: &[BoundingBox], out: &Path) -> Result<()> {
    let mut canvas = img.clone();
    for (n, b) in boxes.iter().enumerate() {
        let color = PALETTE[n % PALETTE.len()];
        let (x1, y1, x2, y2) = (b.x1 as i64, b.y1 as i64, b.x2 as i64, b.y2 as i64);
        for t in 0..2 {
            for x in x1..=x2 {
                put(&mut canvas, x, y1 + t, color);
                put(&mut canvas, x, y2 - t, color);
            }
            for y in y1..=y2 {
                put(&mut canvas, x1 + t, y, color);
                put(&mut canvas, x2 - t, y, color);
            }
        }
        // label: 2× scaled glyphs on a filled strip above (or inside, at the top edge) the box
        let label: String = b.phrase.chars().take(40).collect();
        let (scale, adv) = (2i64, 8i64);
        let ly = if y1 >= 12 { y1 - 12 } else { y1 + 2 };
        for (i, ch) in label.chars().enumerate() {
            let ox = x1 + i as i64 * adv;
            for yy in -1..11 {
                for xx in -1..adv - 1 {
                    put(&mut canvas, ox + xx, ly + yy, color);
                }
            }
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        for sy in 0..scale {
                            for sx in 0..scale {
                                put(
                                    &mut canvas,
                                    ox + col * scale + sx,
                                    ly + row as i64 * scale + sy,
                                    [255, 255, 255],
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    let buf = image::RgbImage::from_raw(canvas.width as u32, canvas.height as u32, canvas.data)
        .context("image buffer size")?;
    buf.save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
