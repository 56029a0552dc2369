//! The sweep plot: mean KLD (log scale) against the language model's size and, with a vision
//! sweep, the mean visual-token cosine against the vision file's size; SVG and PNG. Text is
//! drawn with DejaVu Sans embedded in the binary, so no system font or fontconfig is needed.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Row;

const FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

struct Panel {
    title: String,
    x_desc: String,
    y_desc: String,
    /// (size in `unit`, y, label); y is log10 of the value when `log_y`.
    points: Vec<(f64, f64, String)>,
    log_y: bool,
    color: RGBColor,
}

fn register_font() -> Result<()> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the embedded font does not load"))
}

fn size_unit(max_bytes: f64) -> (f64, &'static str) {
    if max_bytes >= (2u64 << 30) as f64 {
        ((1u64 << 30) as f64, "GiB")
    } else if max_bytes >= (1u64 << 20) as f64 {
        ((1u64 << 20) as f64, "MiB")
    } else {
        (1024.0, "KiB")
    }
}

fn label(r: &Row, fallback: &Option<String>) -> String {
    r.quant
        .clone()
        .or_else(|| {
            fallback.as_ref().map(|p| {
                Path::new(p)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
        })
        .unwrap_or_default()
}

fn panels(rows: &[Row]) -> Vec<Panel> {
    let mut out = Vec::new();
    let lm: Vec<&Row> = rows
        .iter()
        .filter(|r| r.model.is_some() && r.lm.as_ref().is_some_and(|s| s.kld_mean > 0.0))
        .collect();
    if !lm.is_empty() {
        let (unit, name) = size_unit(lm.iter().map(|r| r.size_bytes as f64).fold(0.0, f64::max));
        out.push(Panel {
            title: "language model: mean KL divergence".into(),
            x_desc: format!("file size ({name})"),
            y_desc: "mean KLD vs base (log scale)".into(),
            points: lm
                .iter()
                .map(|r| {
                    (
                        r.size_bytes as f64 / unit,
                        r.lm.as_ref().unwrap().kld_mean.log10(),
                        label(r, &r.model),
                    )
                })
                .collect(),
            log_y: true,
            color: RGBColor(31, 119, 180),
        });
    }
    let vis: Vec<&Row> = rows.iter().filter(|r| r.vis.is_some()).collect();
    if !vis.is_empty() {
        let size = |r: &Row| r.mmproj_size_bytes.unwrap_or(r.size_bytes) as f64;
        let (unit, name) = size_unit(vis.iter().map(|r| size(r)).fold(0.0, f64::max));
        out.push(Panel {
            title: "vision tower: visual-token cosine".into(),
            x_desc: format!("vision file size ({name})"),
            y_desc: "mean cosine vs base tokens".into(),
            points: vis
                .iter()
                .map(|r| {
                    (
                        size(r) / unit,
                        r.vis.as_ref().unwrap().cosine_mean,
                        label(r, &r.mmproj),
                    )
                })
                .collect(),
            log_y: false,
            color: RGBColor(214, 39, 40),
        });
    }
    out
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    let (xmin, xmax) = p
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), q| {
            (a.min(q.0), b.max(q.0))
        });
    let (ymin, ymax) = p
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), q| {
            (a.min(q.1), b.max(q.1))
        });
    let xpad = ((xmax - xmin) * 0.15).max(xmax.abs() * 0.05).max(1e-3);
    let ypad = if p.log_y {
        0.5
    } else {
        ((ymax - ymin) * 0.15).max(ymax.abs() * 1e-4).max(1e-6)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (xmin - xpad).max(0.0)..xmax + xpad,
            ymin - ypad..ymax + ypad,
        )
        .map_err(err)?;
    let log_y = p.log_y;
    let span = xmax - xmin + 2.0 * xpad;
    let x_digits = if span < 0.5 {
        2
    } else if span < 5.0 {
        1
    } else {
        0
    };
    chart
        .configure_mesh()
        .x_desc(p.x_desc.as_str())
        .y_desc(p.y_desc.as_str())
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .y_label_formatter(&|v: &f64| {
            if log_y {
                format!("{:.1e}", 10f64.powf(*v))
            } else {
                format!("{v:.4}")
            }
        })
        .x_label_formatter(&|v: &f64| format!("{v:.x_digits$}"))
        .draw()
        .map_err(err)?;
    let mut pts: Vec<(f64, f64)> = p.points.iter().map(|q| (q.0, q.1)).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(pts, p.color.stroke_width(2)))
        .map_err(err)?;
    let color = p.color;
    // labels alternate above and below the points (by size order) so neighbours do not collide
    let mut order: Vec<usize> = (0..p.points.len()).collect();
    order.sort_by(|&a, &b| p.points[a].0.total_cmp(&p.points[b].0));
    chart
        .draw_series(order.iter().enumerate().map(|(k, &i)| {
            let (x, y, l) = &p.points[i];
            let dy = if k % 2 == 0 { -18 } else { 6 };
            EmptyElement::at((*x, *y))
                + Circle::new((0, 0), 5, color.filled())
                + Text::new(l.clone(), (7, dy), (FAMILY, 14).into_font().color(&BLACK))
        }))
        .map_err(err)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FAMILY, 22)).map_err(err)?;
    let areas = root.split_evenly((1, panels.len()));
    for (a, p) in areas.iter().zip(panels) {
        draw_panel(a, p)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Draws the rows to `path` (SVG, or PNG by extension) and its sibling in the other format;
/// returns the files written.
pub fn plot(path: &Path, title: &str, rows: &[Row]) -> Result<Vec<PathBuf>> {
    let panels = panels(rows);
    if panels.is_empty() {
        return Err(anyhow!(
            "nothing to plot: no row has a positive KLD or a visual-token cosine"
        ));
    }
    register_font()?;
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let (svg, png) = if is_png {
        (path.with_extension("svg"), path.to_path_buf())
    } else {
        (path.to_path_buf(), path.with_extension("png"))
    };
    let size = (620 * panels.len() as u32, 480);
    draw(
        SVGBackend::new(&svg, size).into_drawing_area(),
        title,
        &panels,
    )?;
    draw(
        BitMapBackend::new(&png, size).into_drawing_area(),
        title,
        &panels,
    )?;
    Ok(vec![svg, png])
}
