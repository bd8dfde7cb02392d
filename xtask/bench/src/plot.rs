//! The report's charts, drawn with `plotters` as SVG: the SVG backend needs no
//! font files (the viewer lays the text out), so a fresh machine needs nothing
//! installed to draw them.
use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    coord::Shift,
    prelude::{
        BLACK, ChartBuilder, Circle, DrawingArea, IntoDrawingArea as _, IntoFont as _, LineSeries, PathElement,
        RGBColor, Rectangle, SVGBackend, SeriesLabelPosition, Text, WHITE,
    },
    style::{
        Color as _,
        text_anchor::{HPos, Pos, VPos},
    },
};

/// Colours of the series, in order (colour-blind friendly palette).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// One named series of values, one per category.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per category; `None` where nothing was measured.
    pub values: Vec<Option<f64>>,
}

/// What a chart shows.
pub struct Chart<'a> {
    /// Title, above the plot.
    pub title: &'a str,
    /// Label of the x axis (the categories).
    pub x_label: &'a str,
    /// Label of the y axis, with its unit.
    pub y_label: &'a str,
    /// The categories along x.
    pub categories: Vec<String>,
    /// The series.
    pub series: Vec<Series>,
}

const SIZE: (u32, u32) = (960, 540);

/// A "nice" axis maximum and tick step above `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() { max * 1.08 } else { 1.0 };
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(raw);
    ((max / step).ceil() * step, step)
}

/// A short label for a tick value.
fn tick_label(v: f64) -> String {
    if v >= 1e9 {
        format!("{}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{}k", v / 1e3)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').to_owned()
    }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// Draws the chart on `root`: axes over the categories (each one unit wide,
/// its centre at `i + 0.5`), then `draw` adds the series.
fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &Chart<'_>,
    draw: impl FnOnce(&mut plotters::chart::ChartContext<'_, SVGBackend<'_>, Cartesian>) -> Result<()>,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let max = chart.series.iter().flat_map(|s| s.values.iter().flatten()).copied().fold(0.0, f64::max);
    let (top, step) = axis(max);
    #[expect(clippy::cast_precision_loss, reason = "a handful of categories")]
    let n = chart.categories.len().max(1) as f64;
    let mut ctx = ChartBuilder::on(root)
        .caption(chart.title, ("sans-serif", 20).into_font())
        .margin(16)
        .x_label_area_size(64)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..n, 0.0..top)
        .map_err(err)?;
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a handful of ticks")]
    let ticks = (top / step).round() as usize + 1;
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(ticks)
        .y_label_formatter(&|v| tick_label(*v))
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .draw()
        .map_err(err)?;
    // The category names go under the axis, outside the plotting area.
    let below = Pos::new(HPos::Center, VPos::Top);
    for (i, c) in chart.categories.iter().enumerate() {
        let (x, y) = ctx.backend_coord(&(centre(i), 0.0));
        let style = ("sans-serif", 14).into_font().color(&BLACK).pos(below);
        root.draw(&Text::new(c.clone(), (x, y + 10), style)).map_err(err)?;
    }
    draw(&mut ctx)?;
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

type Cartesian = plotters::coord::cartesian::Cartesian2d<
    plotters::coord::types::RangedCoordf64,
    plotters::coord::types::RangedCoordf64,
>;

/// The x of category `i`'s centre.
#[expect(clippy::cast_precision_loss, reason = "a handful of categories")]
fn centre(i: usize) -> f64 {
    i as f64 + 0.5
}

/// Renders `chart` as an SVG document, drawn by `draw_series`.
fn render(
    chart: &Chart<'_>,
    draw_series: impl FnOnce(&mut plotters::chart::ChartContext<'_, SVGBackend<'_>, Cartesian>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, chart, draw_series)?;
    }
    Ok(svg)
}

/// Grouped bars: one group per category, one bar per series, values printed on top.
///
/// # Errors
/// When plotters fails to draw.
pub fn bars(chart: &Chart<'_>) -> Result<String> {
    render(chart, |ctx| {
        #[expect(clippy::cast_precision_loss, reason = "a handful of series")]
        let width = 0.75 / chart.series.len().max(1) as f64;
        for (j, s) in chart.series.iter().enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let bars: Vec<(f64, f64)> =
                s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (centre(i) - 0.375, v))).collect();
            #[expect(clippy::cast_precision_loss, reason = "a handful of series")]
            let offset = j as f64 * width;
            let rectangles =
                bars.iter().map(|(x, v)| Rectangle::new([(x + offset, 0.0), (x + offset + width, *v)], color.filled()));
            ctx.draw_series(rectangles)
                .map_err(err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.filled()));
            let above = Pos::new(HPos::Center, VPos::Bottom);
            let values = bars.iter().map(|(x, v)| {
                let label = tick_label((v * 10.0).round() / 10.0);
                Text::new(
                    label,
                    (x + offset + width / 2.0, *v),
                    ("sans-serif", 13).into_font().color(&BLACK).pos(above),
                )
            });
            ctx.draw_series(values).map_err(err)?;
        }
        Ok(())
    })
}

/// Lines with markers: one line per series across the categories.
///
/// # Errors
/// When plotters fails to draw.
pub fn lines(chart: &Chart<'_>) -> Result<String> {
    render(chart, |ctx| {
        for (j, s) in chart.series.iter().enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let points: Vec<(f64, f64)> =
                s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (centre(i), v))).collect();
            ctx.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(3)))
                .map_err(err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(3)));
            ctx.draw_series(points.iter().map(|p| Circle::new(*p, 5, color.filled()))).map_err(err)?;
        }
        Ok(())
    })
}

/// Writes an SVG document to `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn save(svg: &str, path: &Path) -> Result<()> {
    fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart<'static> {
        Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            categories: vec!["one".into(), "two".into()],
            series: vec![
                Series { name: "a".into(), values: vec![Some(1.0), Some(2.5)] },
                Series { name: "b".into(), values: vec![None, Some(4.0)] },
            ],
        }
    }

    #[test]
    fn charts_are_svg_documents_with_their_labels() {
        for svg in [bars(&chart()).expect("bars"), lines(&chart()).expect("lines")] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
            for text in ["t", "one", "two", "a", "b"] {
                assert!(svg.lines().any(|line| line.trim() == text), "{text} missing from {svg}");
            }
        }
    }

    /// Not a check: writes the two charts to `target/plot-sample-*.svg` to look at.
    #[test]
    #[ignore = "writes files to look at"]
    fn write_samples() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        save(&bars(&chart()).expect("bars"), &dir.join("plot-sample-bars.svg")).expect("write");
        save(&lines(&chart()).expect("lines"), &dir.join("plot-sample-lines.svg")).expect("write");
    }

    #[test]
    fn axis_ticks_cover_the_maximum() {
        for max in [0.3, 1.0, 7.0, 42.0, 999.0, 123_456.0] {
            let (top, step) = axis(max);
            assert!(top >= max && step > 0.0 && top / step <= 12.0, "{max}: top {top} step {step}");
        }
    }
}
