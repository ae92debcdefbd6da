//! im2col and col2im: the lowering that turns a convolution into one matrix product.
//!
//! Every receptive field — the `c * kh * kw` input values one output pixel sees — becomes one
//! **column** of a 2-D matrix (Caffe's layout), so that the filters, flattened to one row each,
//! multiply it in a single GEMM and the product comes out already in NCHW order:
//!
//! ```text
//! cols[(ci * kh + ky) * kw + kx, oy * ow + ox] = x[ci, oy * sh + ky * dh - pad_top, ox * sw + kx * dw - pad_left]
//! ```
//!
//! (zero where that lands in the padding). Transposed, row `oy * ow + ox` is the flattened patch
//! at `(oy, ox)`, as the course material writes it. col2im is the adjoint: it walks the same
//! loops with `+=`, so a pixel shared by several windows receives the sum of their values.

use crate::error::{expect_nonempty, expect_shape, Result};
use crate::window::{Geometry, Window};
use ndarray::{Array2, Array4, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;
use std::ops::Range;

/// Lowers a batch: one column per receptive field, samples side by side.
///
/// Built in parallel over the samples. Zero padding is written here; no padded copy of the
/// input is made.
///
/// # Shapes
/// - `x`: `[n, c, h, w]`
/// - returns: `[c * kh * kw, n * oh * ow]`; column `i * oh * ow + oy * ow + ox` is the
///   receptive field of output `(oy, ox)` of sample `i`
///
/// # Errors
/// An empty input or a window that does not fit (see [`Window::geometry`]).
///
/// ```
/// use cnn_core::{im2col, Window};
/// use ndarray::Array4;
/// // a 3x3 image 0..9, a 2x2 window: 4 receptive fields of 4 pixels
/// let x = Array4::from_shape_vec((1, 1, 3, 3), (0..9).map(|v| v as f32).collect()).unwrap();
/// let cols = im2col(x.view(), &Window::square(2)).unwrap();
/// assert_eq!(cols.t().row(0).to_vec(), [0., 1., 3., 4.]); // the patch at (0, 0)
/// assert_eq!(cols.t().row(3).to_vec(), [4., 5., 7., 8.]); // the patch at (1, 1)
/// ```
pub fn im2col(x: ndarray::ArrayView4<f32>, win: &Window) -> Result<Array2<f32>> {
    let (n, c, h, w) = x.dim();
    expect_nonempty("input", x.shape())?;
    let g = win.geometry(h, w)?;
    let p = g.positions();
    let mut cols = Array2::zeros((c * g.kh * g.kw, n * p));
    cols.axis_chunks_iter_mut(Axis(1), p)
        .into_par_iter()
        .zip(x.axis_iter(Axis(0)))
        .for_each(|(cols_i, x_i)| im2col_sample(x_i, &g, cols_i));
    Ok(cols)
}

/// The adjoint of [`im2col`]: scatters columns back onto an image, **adding** where windows
/// overlap, and dropping what falls on the padding.
///
/// # Shapes
/// - `cols`: `[c * kh * kw, n * oh * ow]`
/// - `x_shape`: `[n, c, h, w]`, the shape of the image that was lowered
/// - returns: `[n, c, h, w]`
///
/// # Errors
/// A `cols` shape that does not match `x_shape` and the window.
pub fn col2im(cols: ArrayView2<f32>, x_shape: [usize; 4], win: &Window) -> Result<Array4<f32>> {
    let [n, c, h, w] = x_shape;
    expect_nonempty("image shape", &x_shape)?;
    let g = win.geometry(h, w)?;
    let p = g.positions();
    expect_shape("lowered matrix", &[c * g.kh * g.kw, n * p], cols.shape())?;
    let mut x = Array4::zeros(x_shape);
    x.axis_iter_mut(Axis(0)).into_par_iter().zip(cols.axis_chunks_iter(Axis(1), p)).for_each(|(x_i, cols_i)| {
        // each sample's columns copied: col2im clears those of padding positions as it goes
        col2im_sample(cols_i.to_owned().view_mut(), &g, x_i)
    });
    Ok(x)
}

/// The output rows of `inside` that are also in `tile`.
fn clip(inside: Range<usize>, tile: &Range<usize>) -> Range<usize> {
    let start = inside.start.max(tile.start);
    start..inside.end.min(tile.end).max(start)
}

/// Lowers one sample into `cols` (`[c * kh * kw, oh * ow]`, rows contiguous).
///
/// # Panics
/// If `cols` has the wrong shape or non-contiguous rows (a bug in the caller).
pub(crate) fn im2col_sample(x: ArrayView3<f32>, g: &Geometry, cols: ArrayViewMut2<f32>) {
    im2col_tile(x, g, 0..g.oh, cols)
}

/// Lowers the receptive fields of the output rows `tile` of one sample into `cols`
/// (`[c * kh * kw, tile.len() * ow]`, rows contiguous): a large image is lowered a band of
/// rows at a time, so the lowered matrix stays small.
///
/// # Panics
/// If `cols` has the wrong shape or non-contiguous rows (a bug in the caller).
pub(crate) fn im2col_tile(x: ArrayView3<f32>, g: &Geometry, tile: Range<usize>, cols: ArrayViewMut2<f32>) {
    let (c, h, w) = x.dim();
    assert_eq!((h, w), (g.h, g.w), "im2col: image does not match geometry");
    assert_eq!(cols.dim(), (c * g.kh * g.kw, tile.len() * g.ow), "im2col: wrong cols shape");
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    match Table::of(g, &tile, &cols.view()) {
        Some(table) => table.lower(x, g, cols),
        None => im2col_by_taps(x, c, g, tile, cols),
    }
}

/// [`im2col_tile`] tap by tap (`x`: the `c` channels as one slice).
fn im2col_by_taps(x: &[f32], c: usize, g: &Geometry, tile: Range<usize>, mut cols: ArrayViewMut2<f32>) {
    let (h, w) = (g.h, g.w);
    let ow = g.ow;
    // tap by tap, the channels innermost: where a tap reads (its rows and columns inside the
    // image, whether it is one run) is the same for every channel, and worked out once
    for ky in 0..g.kh {
        // output rows (of the tile, counted from its start) whose input row is in the image
        let rows = clip(g.rows_inside(ky), &tile);
        let (first, end) = (rows.start - tile.start, rows.end - tile.start);
        for kx in 0..g.kw {
            let xs = g.cols_inside(kx);
            let inside = !rows.is_empty() && !xs.is_empty();
            let run = if inside { run(g, &rows, &xs, tile.start, ky, kx) } else { None };
            for ci in 0..c {
                let plane = &x[ci * h * w..(ci + 1) * h * w];
                let mut row = cols.row_mut((ci * g.kh + ky) * g.kw + kx);
                let row = row.as_slice_mut().expect("cols rows are contiguous");
                // output rows whose input row is padding: zeros, in two blocks
                row[..first * ow].fill(0.0);
                row[end * ow..].fill(0.0);
                if !inside {
                    row[first * ow..end * ow].fill(0.0);
                    continue;
                }
                if let Some(run) = &run {
                    // one copy for the whole tap, then the padding columns it wrapped over
                    row[run.out.clone()].copy_from_slice(&plane[run.input.clone()]);
                    for oy in first..end {
                        row[oy * ow..oy * ow + xs.start].fill(0.0);
                        row[oy * ow + xs.end..(oy + 1) * ow].fill(0.0);
                    }
                    continue;
                }
                for oy in rows.clone() {
                    let out = &mut row[(oy - tile.start) * ow..(oy - tile.start + 1) * ow];
                    // padding columns at either end (only with padding)
                    out[..xs.start].fill(0.0);
                    out[xs.end..].fill(0.0);
                    let ix0 = g.input_row(oy, ky) * w + g.input_col(xs.start, kx);
                    let out = &mut out[xs.clone()];
                    if g.sw == 1 {
                        out.copy_from_slice(&plane[ix0..ix0 + out.len()]);
                    } else {
                        for (o, s) in out.iter_mut().zip(plane[ix0..].iter().step_by(g.sw)) {
                            *o = *s;
                        }
                    }
                }
            }
        }
    }
}

/// One tap's values as a single run: where the output is as wide as the input and both
/// strides are 1 (a 3x3 SAME convolution), consecutive output positions read consecutive
/// pixels, so the tap's whole lowered row is one contiguous stretch of the input plane —
/// except that at the end of each output row it runs on into the next input row where the
/// window would be on the padding. `out` and `input` are the stretch, from the first inside
/// position to the last (in the lowered row of a tile starting at `tile_start`, and in the
/// plane); the caller clears or skips the padding columns.
struct Run {
    out: Range<usize>,
    input: Range<usize>,
}

fn run(g: &Geometry, rows: &Range<usize>, xs: &Range<usize>, tile_start: usize, ky: usize, kx: usize) -> Option<Run> {
    if g.sh != 1 || g.sw != 1 || g.ow != g.w {
        return None;
    }
    let len = (rows.len() - 1) * g.ow + xs.len();
    let out = (rows.start - tile_start) * g.ow + xs.start;
    let input = g.input_row(rows.start, ky) * g.w + g.input_col(xs.start, kx);
    Some(Run { out: out..out + len, input: input..input + len })
}

/// Adds the columns of one sample back onto `dx` (`[c, h, w]`, zero-filled by the caller):
/// the mirror image of [`im2col_sample`], the same loops with `+=`.
///
/// # Panics
/// If the shapes disagree with the geometry (a bug in the caller).
pub(crate) fn col2im_sample(cols: ArrayViewMut2<f32>, g: &Geometry, dx: ArrayViewMut3<f32>) {
    col2im_tile(cols, g, 0..g.oh, dx)
}

/// The mirror image of [`im2col_tile`]: adds the columns of the output rows `tile` back onto
/// `dx`.
///
/// # Panics
/// If the shapes disagree with the geometry (a bug in the caller).
pub(crate) fn col2im_tile(cols: ArrayViewMut2<f32>, g: &Geometry, tile: Range<usize>, mut dx: ArrayViewMut3<f32>) {
    let (c, h, w) = dx.dim();
    assert_eq!((h, w), (g.h, g.w), "col2im: image does not match geometry");
    assert_eq!(cols.dim(), (c * g.kh * g.kw, tile.len() * g.ow), "col2im: wrong cols shape");
    let dx = dx.as_slice_mut().expect("col2im: dx must be contiguous");
    match Table::of(g, &tile, &cols.view()) {
        Some(table) => table.add_back(cols.view(), g, dx),
        None => col2im_by_taps(cols, g, tile, dx),
    }
}

/// [`col2im_tile`] tap by tap (`dx`: the channels as one slice).
fn col2im_by_taps(mut cols: ArrayViewMut2<f32>, g: &Geometry, tile: Range<usize>, dx: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    // where each tap's values land, worked out once for all channels: small images have
    // rows of 3 to 11 values, where working it out per row cost more than the additions
    let taps: Vec<Tap> = (0..g.kh).flat_map(|ky| (0..g.kw).map(move |kx| (ky, kx))).map(|(ky, kx)| Tap::new(g, &tile, ky, kx)).collect();
    // cols' rows in order: channel by channel, each channel's taps
    let mut rows = cols.rows_mut().into_iter();
    for plane in dx.chunks_exact_mut(h * w) {
        for (tap, mut row) in taps.iter().zip(&mut rows) {
            tap.add(row.as_slice_mut().expect("cols rows are contiguous"), plane, g);
        }
    }
}

/// At most this many lowered values per channel for a [`Table`].
const TABLE_VALUES: usize = 256;

/// im2col and col2im for a tiny image (the reference network's conv3: 5x5 pixels, 3x3
/// outputs, 81 lowered values per channel in rows of 3): where each lowered value of a
/// channel comes from is listed once, and every channel is copied or added through the list,
/// with no work per row or tap (conv3's backward, batch 64, Zen 3: col2im had been a quarter
/// of it, im2col a tenth).
struct Table {
    /// `(offset in the channel's rows of cols, pixel of its plane)` of the values inside the
    /// image; the others are padding.
    entries: Vec<(usize, usize)>,
    /// Rows of cols per channel (`kh·kw`), `stride` values apart.
    taps: usize,
    stride: usize,
}

impl Table {
    /// The table of a tile of output rows, if the image is tiny ([`TABLE_VALUES`]) and `cols`
    /// has contiguous rows (and values).
    fn of(g: &Geometry, tile: &Range<usize>, cols: &ArrayView2<f32>) -> Option<Table> {
        let (taps, stride) = (g.kh * g.kw, cols.strides()[0]);
        if taps * tile.len() * g.ow > TABLE_VALUES || cols.is_empty() || cols.strides()[1] != 1 || stride < cols.ncols() as isize {
            return None;
        }
        let stride = stride as usize;
        let mut entries = Vec::with_capacity(taps * tile.len() * g.ow);
        for (t, (ky, kx)) in (0..g.kh).flat_map(|ky| (0..g.kw).map(move |kx| (ky, kx))).enumerate() {
            for oy in clip(g.rows_inside(ky), tile) {
                for ox in g.cols_inside(kx) {
                    entries.push((t * stride + (oy - tile.start) * g.ow + ox, g.input_row(oy, ky) * g.w + g.input_col(ox, kx)));
                }
            }
        }
        Some(Table { entries, taps, stride })
    }

    /// Values of `cols` from its first to its last, rows `stride` apart.
    fn span(&self, cols: &ArrayView2<f32>) -> usize {
        (cols.nrows() - 1) * self.stride + cols.ncols()
    }

    /// im2col of the channels `x` (`[c, h, w]` as one slice) into `cols`.
    fn lower(&self, x: &[f32], g: &Geometry, mut cols: ArrayViewMut2<f32>) {
        if self.entries.len() < self.taps * cols.ncols() {
            cols.fill(0.0);
        }
        let span = self.span(&cols.view());
        // SAFETY: `cols` holds `span` values from its first (rows `stride` apart, checked in `of`)
        let values = unsafe { std::slice::from_raw_parts_mut(cols.as_mut_ptr(), span) };
        for (ci, plane) in x.chunks_exact(g.h * g.w).enumerate() {
            let rows = &mut values[ci * self.taps * self.stride..];
            for &(at, pixel) in &self.entries {
                rows[at] = plane[pixel];
            }
        }
    }

    /// col2im: adds `cols` back onto the channels `dx` (`[c, h, w]` as one slice).
    fn add_back(&self, cols: ArrayView2<f32>, g: &Geometry, dx: &mut [f32]) {
        // SAFETY: as in `lower`
        let values = unsafe { std::slice::from_raw_parts(cols.as_ptr(), self.span(&cols)) };
        for (ci, plane) in dx.chunks_exact_mut(g.h * g.w).enumerate() {
            let rows = &values[ci * self.taps * self.stride..];
            for &(at, pixel) in &self.entries {
                plane[pixel] += rows[at];
            }
        }
    }
}

/// Where one tap `(ky, kx)` of the window reads, for the output rows of a tile: the rows and
/// columns inside the image, and whether it is one run ([`run`]).
struct Tap {
    ky: usize,
    kx: usize,
    rows: Range<usize>,
    xs: Range<usize>,
    run: Option<Run>,
    tile_start: usize,
}

impl Tap {
    fn new(g: &Geometry, tile: &Range<usize>, ky: usize, kx: usize) -> Tap {
        let (rows, xs) = (clip(g.rows_inside(ky), tile), g.cols_inside(kx));
        let run = if rows.is_empty() || xs.is_empty() { None } else { run(g, &rows, &xs, tile.start, ky, kx) };
        Tap { ky, kx, rows, xs, run, tile_start: tile.start }
    }

    /// Adds this tap's lowered row (of one channel) onto its input plane.
    fn add(&self, row: &mut [f32], plane: &mut [f32], g: &Geometry) {
        let (ow, w, xs) = (g.ow, g.w, self.xs.clone());
        if self.rows.is_empty() || xs.is_empty() {
            return;
        }
        if let Some(run) = &self.run {
            // the values of padding positions inside the run would land on the
            // neighbouring row's pixels: drop them, then add the run at once
            for oy in self.rows.start - self.tile_start..self.rows.end - self.tile_start {
                row[oy * ow..oy * ow + xs.start].fill(0.0);
                row[oy * ow + xs.end..(oy + 1) * ow].fill(0.0);
            }
            plane[run.input.clone()].iter_mut().zip(&row[run.out.clone()]).for_each(|(d, s)| *d += s);
            return;
        }
        let ix0 = g.input_col(xs.start, self.kx);
        for oy in self.rows.clone() {
            let iy = g.input_row(oy, self.ky);
            let dst = &mut plane[iy * w + ix0..(iy + 1) * w];
            let at = (oy - self.tile_start) * ow;
            let src = &row[at + xs.start..at + xs.end];
            if g.sw == 1 {
                // contiguous: a loop the compiler vectorises
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                dst.iter_mut().step_by(g.sw).zip(src).for_each(|(d, s)| *d += s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Padding;
    use ndarray::{array, Array};

    #[test]
    fn material_example_rows_are_patches() {
        // 4x4 image with values 1..=16, a 3x3 filter at stride 1: 2x2 = 4 receptive fields.
        let x = Array::from_shape_vec((1, 1, 4, 4), (1..=16).map(|v| v as f32).collect()).unwrap();
        let cols = im2col(x.view(), &Window::square(3)).unwrap();
        // Row i*out_W + j of the transposed matrix is the flattened patch at (i, j).
        let expected = array![
            [1., 2., 3., 5., 6., 7., 9., 10., 11.],
            [2., 3., 4., 6., 7., 8., 10., 11., 12.],
            [5., 6., 7., 9., 10., 11., 13., 14., 15.],
            [6., 7., 8., 10., 11., 12., 14., 15., 16.],
        ];
        assert_eq!(cols.t(), expected);
    }

    #[test]
    fn padding_and_channels_and_batch() {
        // 2 samples, 2 channels of 2x2, 2x2 kernel, SAME (pad 0 top/left, 1 bottom/right)
        let x = Array::from_shape_vec((2, 2, 2, 2), (1..=16).map(|v| v as f32).collect()).unwrap();
        let cols = im2col(x.view(), &Window::square(2).padding(Padding::Same)).unwrap();
        assert_eq!(cols.dim(), (8, 8));
        // sample 0, position (0,0): channel 0 patch [1,2,3,4], channel 1 patch [5,6,7,8]
        assert_eq!(cols.column(0).to_vec(), [1., 2., 3., 4., 5., 6., 7., 8.]);
        // sample 0, position (1,1): only the top-left of each patch is inside
        assert_eq!(cols.column(3).to_vec(), [4., 0., 0., 0., 8., 0., 0., 0.]);
        // sample 1, position (0,1)
        assert_eq!(cols.column(5).to_vec(), [10., 0., 12., 0., 14., 0., 16., 0.]);
    }

    /// Tiny images go through a [`Table`]: the same lowered values and the same sums, bit for
    /// bit, as tap by tap — padding, strides, dilation, a band of rows, and `cols` a slice of
    /// wider rows (samples side by side) whose other columns stay untouched.
    #[test]
    fn tables_lower_and_add_back_as_the_taps_do() {
        for ((c, h, w), win, band) in [
            ((3, 5, 5), Window::square(3), None),
            ((2, 4, 4), Window::square(2).padding(Padding::Same), None),
            ((2, 7, 6), Window::new(3, 2).strides(2, 1).padding(Padding::uniform(1)), Some(1..3)),
            ((1, 6, 6), Window::square(2).dilation(2).padding(Padding::Same), None),
        ] {
            let g = win.geometry(h, w).unwrap();
            let tile = band.unwrap_or(0..g.oh);
            let (k, m) = (c * g.kh * g.kw, tile.len() * g.ow);
            let inside = ndarray::s![.., 2..2 + m];
            let x: Vec<f32> = (0..c * h * w).map(|i| (i % 13) as f32 * 0.25 - 1.5).collect();
            let mut by_table = Array2::from_elem((k, m + 5), f32::NAN);
            let mut by_taps = by_table.clone();
            let table = Table::of(&g, &tile, &by_table.slice(inside)).unwrap_or_else(|| panic!("{win}: a tiny image"));
            table.lower(&x, &g, by_table.slice_mut(inside));
            im2col_by_taps(&x, c, &g, tile.clone(), by_taps.slice_mut(inside));
            let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(by_table.as_slice().unwrap()), bits(by_taps.as_slice().unwrap()), "{win}: lowered");
            assert!(by_table.column(1).iter().chain(by_table.column(m + 2)).all(|v| v.is_nan()), "{win}: other columns");
            let cols = Array2::from_shape_fn((k, m + 5), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.125 - 0.6);
            let (mut dx_table, mut dx_taps) = (vec![0.5; c * h * w], vec![0.5; c * h * w]);
            table.add_back(cols.slice(inside), &g, &mut dx_table);
            col2im_by_taps(cols.clone().slice_mut(inside), &g, tile, &mut dx_taps);
            assert_eq!(bits(&dx_table), bits(&dx_taps), "{win}: added back");
            assert!(dx_table.iter().filter(|&&v| v != 0.5).count() > c * h * w / 2, "{win}: most pixels receive values");
        }
        // conv2 of the reference network (13x13 to 11x11) is no tiny image
        let conv2 = Window::square(3).geometry(13, 13).unwrap();
        assert!(Table::of(&conv2, &(0..11), &Array2::zeros((288, 121)).view()).is_none());
    }

    #[test]
    fn col2im_adds_overlaps() {
        // 3x3 image, 2x2 window, stride 1: the centre pixel is in all 4 windows, corners in 1.
        let cols = Array2::ones((4, 4));
        let x = col2im(cols.view(), [1, 1, 3, 3], &Window::square(2)).unwrap();
        assert_eq!(x.into_shape_with_order((3, 3)).unwrap(), array![[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]);
    }

    #[test]
    fn col2im_checks_shape() {
        let cols = Array2::ones((4, 5));
        let e = col2im(cols.view(), [1, 1, 3, 3], &Window::square(2)).unwrap_err();
        assert_eq!(e.to_string(), "shape mismatch for lowered matrix: expected [4, 4], got [4, 5]");
    }
}
