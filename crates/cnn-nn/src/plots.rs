//! Pictures of a model: training curves, first-layer filters, feature maps.
//!
//! Every picture is drawn to a temporary file and renamed into place, so an interrupted run
//! never leaves a half-written PNG.

use crate::error::{NnError, Result};
use crate::train::EpochMetrics;
use image::{GrayImage, Luma};
use ndarray::{ArrayView2, ArrayView3};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Sans-serif families tried, in order, for the labels (any one installed will do; on Debian
/// `fonts-dejavu-core` gives the first).
const FONT_FAMILIES: [&str; 4] = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"];

fn plot_error(path: &Path, e: impl std::fmt::Display) -> NnError {
    NnError::Data { path: path.to_path_buf(), reason: format!("drawing failed: {e}") }
}

/// `dir/name.tmp.png` for `dir/name.png`: keeps the extension image formats are chosen by.
fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp.png")
}

fn finish(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| NnError::io(path, e))
}

/// The bytes of a sans-serif TrueType font of the system, found with fontdb (fontconfig's
/// directories and the usual ones).
fn find_font() -> std::result::Result<Vec<u8>, String> {
    let mut db = fontdb::Database::new();
    db.load_system_fonts();
    let families: Vec<fontdb::Family> = FONT_FAMILIES.iter().map(|&f| fontdb::Family::Name(f)).collect();
    let query = fontdb::Query { families: &families, ..fontdb::Query::default() };
    let id = db.query(&query).ok_or_else(|| {
        format!(
            "no sans-serif font found (tried {}) among the {} fonts of the system; the pictures need one: apt-get install fonts-dejavu-core",
            FONT_FAMILIES.join(", "),
            db.len()
        )
    })?;
    Ok(db.with_face_data(id, |data, _| data.to_vec()).expect("the face was just found"))
}

/// Registers the labels' font with plotters, once; the error, if any, is remembered.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let registered = REGISTERED.get_or_init(|| {
        find_font().map(|bytes| {
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            // a TrueType file found by fontdb: registration only fails on unparsable fonts
            let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, leaked);
        })
    });
    registered.clone().map_err(|reason| NnError::Data { path: "system fonts".into(), reason })
}

/// Loss and accuracy per epoch: two panels, train/validation/test.
///
/// # Errors
/// A missing font, a file that cannot be written.
pub fn training_curves(history: &[EpochMetrics], path: &Path) -> Result<()> {
    register_font()?;
    let tmp = tmp_path(path);
    {
        let root = BitMapBackend::new(&tmp, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let (left, right) = root.split_horizontally(500);
        let epochs = history.len().max(1) as f32;
        let x_range = 0.5f32..epochs + 0.5;

        let max_loss = history.iter().map(|m| m.train_loss).fold(0.1f32, f32::max) * 1.1;
        let mut chart = ChartBuilder::on(&left)
            .caption("training loss", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(x_range.clone(), 0f32..max_loss)
            .map_err(|e| plot_error(path, e))?;
        chart.configure_mesh().x_desc("epoch").y_desc("cross-entropy").draw().map_err(|e| plot_error(path, e))?;
        chart
            .draw_series(LineSeries::new(history.iter().map(|m| (m.epoch as f32, m.train_loss)), &RED).point_size(3))
            .map_err(|e| plot_error(path, e))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|e| plot_error(path, e))?;

        let accs = history.iter().flat_map(|m| [Some(m.train_acc), m.val_acc, m.test_acc]).flatten();
        let min_acc = accs.fold(1.0f32, f32::min).min(0.95) * 100.0 - 2.0;
        let mut chart = ChartBuilder::on(&right)
            .caption("accuracy", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(x_range, min_acc.max(0.0)..100f32)
            .map_err(|e| plot_error(path, e))?;
        chart.configure_mesh().x_desc("epoch").y_desc("%").draw().map_err(|e| plot_error(path, e))?;
        let series: [(&str, RGBColor, fn(&EpochMetrics) -> Option<f32>); 3] = [
            ("train", RED, |m| Some(m.train_acc)),
            ("validation", BLUE, |m| m.val_acc),
            ("test", GREEN, |m| m.test_acc),
        ];
        for (label, color, get) in series {
            let points: Vec<(f32, f32)> = history.iter().filter_map(|m| get(m).map(|a| (m.epoch as f32, 100.0 * a))).collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points, &color).point_size(3))
                .map_err(|e| plot_error(path, e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    finish(&tmp, path)
}

/// Tiles of grey images in a grid, each scaled to `[0, 255]` on its own and enlarged `zoom` times.
fn tile_grid(tiles: &[ArrayView2<f32>], columns: usize, zoom: u32) -> GrayImage {
    let (h, w) = tiles.first().map_or((1, 1), |t| t.dim());
    let rows = tiles.len().div_ceil(columns);
    let (th, tw, gap) = (h as u32 * zoom, w as u32 * zoom, 2);
    let mut img = GrayImage::from_pixel(columns as u32 * (tw + gap) + gap, rows as u32 * (th + gap) + gap, Luma([255]));
    for (i, tile) in tiles.iter().enumerate() {
        let (lo, hi) = tile.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
        let (x0, y0) = (gap + (i % columns) as u32 * (tw + gap), gap + (i / columns) as u32 * (th + gap));
        for y in 0..th {
            for x in 0..tw {
                let v = tile[[(y / zoom) as usize, (x / zoom) as usize]];
                img.put_pixel(x0 + x, y0 + y, Luma([((v - lo) * scale) as u8]));
            }
        }
    }
    img
}

fn save_png(img: &GrayImage, path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    img.save_with_format(&tmp, image::ImageFormat::Png).map_err(|e| plot_error(path, e))?;
    finish(&tmp, path)
}

/// The first layer's filters, one tile per kernel (`[c_out, c_in, kh, kw]` → `c_out · c_in` tiles).
///
/// # Errors
/// A file that cannot be written.
pub fn filters(weight: ndarray::ArrayView4<f32>, path: &Path) -> Result<()> {
    let (c_out, c_in, _, _) = weight.dim();
    let tiles: Vec<ArrayView2<f32>> =
        (0..c_out).flat_map(|f| (0..c_in).map(move |c| (f, c))).map(|(f, c)| weight.slice_move(ndarray::s![f, c, .., ..])).collect();
    save_png(&tile_grid(&tiles, 8, 24), path)
}

/// Feature maps of one sample, one tile per channel (`[c, h, w]`), enlarged to about 80 pixels.
///
/// # Errors
/// A file that cannot be written.
pub fn feature_maps(maps: ArrayView3<f32>, path: &Path) -> Result<()> {
    let tiles: Vec<ArrayView2<f32>> = maps.outer_iter().collect();
    let zoom = (80 / maps.dim().1.max(1)).max(1) as u32;
    save_png(&tile_grid(&tiles, 8, zoom), path)
}

/// One point of the low-rank trade-off: a setting, its measured speed-up and its accuracy.
pub struct TradeoffPoint {
    /// Name of the setting.
    pub label: String,
    /// Measured speed-up of the whole network's inference.
    pub speedup: f64,
    /// The decomposition (`channel`, `spatial`, or `mixed`): one colour each.
    pub decomposition: String,
    /// Test accuracy after fine-tuning, in percent.
    pub accuracy: f64,
}

/// Accuracy against whole-network speed-up, one labelled point per setting coloured by its
/// decomposition, with the original model's accuracy and the control's (the original
/// fine-tuned for the same epochs) as horizontal lines.
///
/// # Errors
/// A missing font, a file that cannot be written.
pub fn lowrank_tradeoff(points: &[TradeoffPoint], original_accuracy: f64, control_accuracy: f64, path: &Path) -> Result<()> {
    register_font()?;
    let tmp = tmp_path(path);
    {
        let root = BitMapBackend::new(&tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let max_x = points.iter().map(|p| p.speedup).fold(2.5f64, f64::max) * 1.1;
        let accs = points.iter().map(|p| p.accuracy).chain([original_accuracy, control_accuracy]);
        let (lo, hi) = accs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), a| (lo.min(a), hi.max(a)));
        let mut chart = ChartBuilder::on(&root)
            .caption("low-rank convolution: accuracy vs measured whole-network speed-up", ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.5f64..max_x, (lo - 1.0)..(hi + 1.0))
            .map_err(|e| plot_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc("whole-network inference speed-up (x)")
            .y_desc("test accuracy after fine-tuning (%)")
            .draw()
            .map_err(|e| plot_error(path, e))?;
        chart
            .draw_series(LineSeries::new([(0.5, original_accuracy), (max_x, original_accuracy)], &BLACK))
            .map_err(|e| plot_error(path, e))?
            .label("original model")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
        chart
            .draw_series(LineSeries::new([(0.5, control_accuracy), (max_x, control_accuracy)], &MAGENTA))
            .map_err(|e| plot_error(path, e))?
            .label("control: the original fine-tuned as long")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], MAGENTA));
        for p in points {
            let colour = match p.decomposition.as_str() {
                "channel" => BLUE,
                "spatial" => RED,
                _ => GREEN,
            };
            chart
                .draw_series([Circle::new((p.speedup, p.accuracy), 5, colour.filled())])
                .map_err(|e| plot_error(path, e))?;
            chart
                .draw_series([Text::new(p.label.clone(), (p.speedup, p.accuracy), ("sans-serif", 13))])
                .map_err(|e| plot_error(path, e))?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE).border_style(BLACK).draw().map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    finish(&tmp, path)
}
