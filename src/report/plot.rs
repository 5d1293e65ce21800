//! Line plots as SVG (plotters' SVG backend: no system fonts needed).

use crate::{LabError, Result};
use plotters::prelude::*;
use std::path::Path;

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed-looking (thin, grey) when true: reference lines such as the ideal speedup.
    pub reference: bool,
}

/// DejaVu Sans (Bitstream Vera licence, assets/fonts/LICENSE-DejaVu.txt), embedded so plots lay out
/// text the same on any machine, with no system fonts (the GPU machine has none to rely on).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is a known-good embedded file: registration cannot fail on user input.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One SVG line chart with a legend. Axes span the data (y from 0).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    chart(path, title, x_label, y_label, series, false)
}

/// One SVG chart of unconnected points (one marker per point, a colour per series) with a legend;
/// `reference` series are still drawn as thin lines. For data whose x is a category index, where
/// joining neighbours would suggest a trend that is not there.
pub fn scatter_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    chart(path, title, x_label, y_label, series, true)
}

fn chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    markers: bool,
) -> Result<()> {
    let err =
        |e: &dyn std::fmt::Display| LabError::invalid("plot", format!("{}: {e}", path.display()));
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return Err(LabError::invalid(
            "plot",
            format!("{}: no data", path.display()),
        ));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, 0.0..(y1 * 1.1).max(1e-9))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = if s.reference {
                RGBColor(140, 140, 140).to_rgba()
            } else {
                Palette99::pick(i).to_rgba()
            };
            let style = ShapeStyle::from(color).stroke_width(if s.reference { 1 } else { 2 });
            if markers && !s.reference {
                let dot = ShapeStyle::from(color).filled();
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, dot)))
                    .map_err(|e| err(&e))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| Circle::new((x + 9, y), 3, dot));
            } else {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style))
                    .map_err(|e| err(&e))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    crate::util::write_atomic(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn writes_an_svg_with_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.svg");
        let s = vec![
            Series {
                label: "gemm_v2".into(),
                points: vec![(1.0, 3.5), (16.0, 3.1)],
                reference: false,
            },
            Series {
                label: "ideal 3.87x".into(),
                points: vec![(1.0, 3.87), (16.0, 3.87)],
                reference: true,
            },
        ];
        line_chart(&p, "speedup", "batch", "x", &s).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("gemm_v2") && text.contains("ideal 3.87x")
        );
        let e = line_chart(&p, "t", "x", "y", &[]).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("no data"),
            "{e}"
        );
        // Points: one circle per point, none for the reference line.
        scatter_chart(&p, "speedup", "key", "x", &s).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("gemm_v2") && text.contains("ideal 3.87x"));
        // Two data points + one legend marker.
        assert_eq!(text.matches("<circle").count(), 3, "{text}");
    }

    /// Data at a single x (one batch, one shape) still plots: no error, finite coordinates, a
    /// marker per point.
    #[test]
    fn data_at_one_x_still_plots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("one.svg");
        let s = [Series {
            label: "v".into(),
            points: vec![(8.0, 40.0), (8.0, 60.0)],
            reference: false,
        }];
        scatter_chart(&p, "t", "x", "y", &s).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
        assert_eq!(text.matches("<circle").count(), 3, "{text}");
    }
}
