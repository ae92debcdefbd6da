//! 2-D convolution by im2col: the whole layer is one matrix product per sample (or per small
//! group of samples).
//!
//! ```text
//! w_mat: [c_out, c_in*kh*kw]   one row per filter: its c_in kernels, flattened
//! cols:  [c_in*kh*kw, oh*ow]   one column per receptive field (im2col)
//! y = w_mat · cols + b         [c_out, oh*ow] = the sample's output, already NCHW
//! ```
//!
//! The batch is split over rayon in small groups of samples ([`group_size`]: one sample for
//! large images, a few for small ones, so every GEMM is wide enough), each group with its own
//! lowered matrix and a single-threaded GEMM (see [`crate::threads`]). On this 2-core machine
//! that beat one big multi-threaded GEMM over the whole batch's lowered matrix: a group's
//! matrix stays in cache between the lowering and the product (the benches measure both).
//!
//! Backward, with the same lowering:
//! ```text
//! dw    = Σ_samples dy · colsᵀ     [c_out, c_in*kh*kw]
//! dcols = w_matᵀ · dy              [c_in*kh*kw, oh*ow]
//! dx    = col2im(dcols)            a pixel shared by several windows receives the sum of their gradients
//! db    = Σ_samples, positions dy
//! ```

use crate::depthwise;
use crate::direct;
use crate::implicit;
use crate::winograd;
use crate::gemm::mat_mul;
use crate::error::{expect_allocatable, expect_shape, CnnError, Result};
use crate::im2col::{col2im_sample, col2im_tile, im2col_sample, im2col_tile};
use crate::operands::Conv2dGrads;
use crate::operands::conv_geometry;
use crate::threads::{self, Scratch};
use crate::window::{Geometry, Padding, Window};
use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

/// Samples lowered side by side into one matrix per task. Images with few output positions
/// (the reference network's conv3: 3x3) make GEMMs too thin for BLAS one sample at a time, so
/// up to 16 go together (about 256 columns); from 64 positions on, one sample per task was
/// faster here (OpenBLAS's small-matrix kernels, and a lowered matrix that stays in L2).
/// Measured with `cargo xtask bench`: conv3 forward+backward at batch 64 went from 6.9 to
/// 3.1 ms, conv2 got slower when grouped. It depends on the shape only, never on the number of
/// threads, so partial gradients are always summed in the same order.
pub(crate) fn group_size(positions: usize) -> usize {
    if positions >= 64 {
        1
    } else {
        256usize.div_ceil(positions).min(16)
    }
}

/// Values of a lowered band: a sample whose lowered matrix (`K x oh·ow`) is larger is lowered
/// a band of output rows at a time. 1 Mi values (4 MiB, about an L2 cache and a half here):
/// a 224x224 layer of 64 channels would otherwise lower 115 MB per task.
const BAND_VALUES: usize = 1 << 20;

/// Output rows per band for a one-sample group: the whole image when it fits [`BAND_VALUES`].
/// A function of the shape only, so results never depend on the number of threads.
fn band_rows(g: &Geometry, k: usize) -> usize {
    (BAND_VALUES / (k * g.ow).max(1)).clamp(1, g.oh)
}

/// The bands of `rows` output rows covering the image.
fn bands(g: &Geometry, rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    (0..g.oh).step_by(rows).map(move |start| start..(start + rows).min(g.oh))
}

/// Lowers the samples of `x` side by side into `cols` (`[K, samples·oh·ow]`).
fn lower_group(x: ArrayView4<f32>, g: &Geometry, cols: &mut ArrayViewMut2<f32>) {
    let p = g.positions();
    for (i, x_i) in x.outer_iter().enumerate() {
        im2col_sample(x_i, g, cols.slice_mut(s![.., i * p..(i + 1) * p]));
    }
}

/// Copies the samples of `dy` (`[samples, c_out, oh, ow]`) side by side into the first
/// `samples·oh·ow` columns of `out` (`[c_out, ..]`), as the lowered matrix holds them.
fn group_side_by_side(dy: ArrayView4<f32>, out: &mut ArrayViewMut2<f32>) {
    let (c_out, p) = (dy.dim().1, dy.dim().2 * dy.dim().3);
    for (i, dy_i) in dy.outer_iter().enumerate() {
        let dy_i = dy_i.into_shape_with_order((c_out, p)).expect("dy sample is contiguous");
        out.slice_mut(s![.., i * p..(i + 1) * p]).assign(&dy_i);
    }
}

/// Runs `product(cols, y)` for every group of samples in parallel: `cols` is the group's
/// lowered input (`[c_in·kh·kw, samples·oh·ow]`) and `y` its output (`[c_out, samples·oh·ow]`),
/// already holding the bias if there is one (use beta = 0 otherwise). The scaffold shared by the full-rank and low-rank
/// convolutions.
pub(crate) fn lowered_forward(
    x: ArrayView4<f32>,
    g: &Geometry,
    c_out: usize,
    b: Option<ArrayView1<f32>>,
    product: impl Fn(&ArrayView2<f32>, &mut ArrayViewMut2<f32>) + Sync,
) -> Result<Array4<f32>> {
    let (n, c_in, _, _) = x.dim();
    let (k, p) = (c_in * g.kh * g.kw, g.positions());
    let group = group_size(p);
    let rows = band_rows(g, k);
    // a group of several small samples side by side, a band of one sample's rows, or nothing
    // for a 1x1 convolution (the sample is its own lowering)
    let width = if group > 1 { group * p } else if g.is_identity() { 0 } else { rows * g.ow };
    // sizes were checked by conv_geometry; the memory is asked for before any work
    expect_allocatable("lowered matrix", k * width)?;
    expect_allocatable("output", n * c_out * p)?;
    threads::init();
    let run = |cols: &ArrayView2<f32>, out: &mut ArrayViewMut2<f32>| {
        if let Some(b) = b {
            Zip::from(out.rows_mut()).and(&b).for_each(|mut row, &bias| row.fill(bias));
        }
        product(cols, out);
    };
    let mut y = Array4::zeros((n, c_out, g.oh, g.ow));
    y.axis_chunks_iter_mut(Axis(0), group).into_par_iter().zip(x.axis_chunks_iter(Axis(0), group)).for_each_init(
        // the side-by-side output buffer is only used by groups of several samples
        || (Scratch::matrix(k, width), Scratch::matrix(c_out, if group > 1 { width } else { 0 })),
        |(cols, out), (mut y_group, x_group)| {
            let (mut cols, mut out) = (cols.view_mut(), out.view_mut());
            if y_group.dim().0 == 1 {
                // one sample, band by band: the product lands in its output directly
                let x_i = x_group.index_axis(Axis(0), 0);
                let mut y_i = y_group.index_axis_mut(Axis(0), 0).into_shape_with_order((c_out, p)).expect("y sample is contiguous");
                if g.is_identity() {
                    // a 1x1 convolution: the sample is its own lowered matrix, no copy
                    let x_i = x_i.as_standard_layout();
                    run(&x_i.view().into_shape_with_order((k, p)).expect("standard layout"), &mut y_i);
                    return;
                }
                for band in bands(g, rows) {
                    let (start, end) = (band.start * g.ow, band.end * g.ow);
                    let mut cols = cols.slice_mut(s![.., ..end - start]);
                    im2col_tile(x_i, g, band, cols.view_mut());
                    run(&cols.view(), &mut y_i.slice_mut(s![.., start..end]));
                }
            } else {
                // several: side by side, then each sample's block goes to its place in NCHW
                let m = x_group.dim().0 * p;
                let mut cols = cols.slice_mut(s![.., ..m]);
                lower_group(x_group, g, &mut cols);
                let mut out = out.slice_mut(s![.., ..m]);
                run(&cols.view(), &mut out);
                for (i, y_i) in y_group.outer_iter_mut().enumerate() {
                    let mut y_i = y_i.into_shape_with_order((c_out, p)).expect("y sample is contiguous");
                    y_i.assign(&out.slice(s![.., i * p..(i + 1) * p]));
                }
            }
        },
    );
    Ok(y)
}

/// Samples per backward task: whole groups, at least 4 samples, so that a batch of 64 makes
/// a few partial gradients (not 64) to allocate and add up.
fn backward_chunk(group: usize) -> usize {
    group * 4usize.div_ceil(group)
}

/// Runs `step(partial, cols, dy, dcols)` for every group of samples ([`group_size`]) —
/// `cols` and `dy` (`[c_out, samples·oh·ow]`) side by side as in the forward — then col2im's
/// `dcols` into the samples' `dx`. Tasks of [`backward_chunk`] samples run in parallel, each
/// accumulating into its own `partial`; the partials come back **in batch order**, so that
/// summing them is deterministic whatever the number of threads.
pub(crate) fn lowered_backward<T: Send>(
    x: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    g: &Geometry,
    init: impl Fn() -> T + Sync,
    step: impl Fn(&mut T, &ArrayView2<f32>, &ArrayView2<f32>, &mut ArrayViewMut2<f32>) + Sync,
) -> Result<(Array4<f32>, Vec<T>)> {
    let (n, c_in, h, w) = x.dim();
    let c_out = dy.dim().1;
    let (k, p) = (c_in * g.kh * g.kw, g.positions());
    let group = group_size(p);
    let chunk = backward_chunk(group);
    let rows = band_rows(g, k);
    let width = if group > 1 { group * p } else if g.is_identity() { 0 } else { rows * g.ow };
    expect_allocatable("lowered matrix and its gradient", 2 * k * width)?;
    expect_allocatable("input gradient", x.len())?;
    let dy = dy.as_standard_layout();
    threads::init();
    let mut dx = threads::par_zeros(ndarray::Dim([n, c_in, h, w]));
    let partials = dx
        .axis_chunks_iter_mut(Axis(0), chunk)
        .into_par_iter()
        .zip(x.axis_chunks_iter(Axis(0), chunk))
        .zip(dy.axis_chunks_iter(Axis(0), chunk))
        .map_init(
            || (Scratch::matrix(k, width), Scratch::matrix(c_out, if group > 1 { width } else { 0 }), Scratch::matrix(k, width)),
            |(cols, dy_mat, dcols), ((mut dx_chunk, x_chunk), dy_chunk)| {
                let (mut cols, mut dy_mat, mut dcols) = (cols.view_mut(), dy_mat.view_mut(), dcols.view_mut());
                let mut partial = init();
                let groups = dx_chunk.axis_chunks_iter_mut(Axis(0), group).zip(x_chunk.axis_chunks_iter(Axis(0), group));
                for ((mut dx_group, x_group), dy_group) in groups.zip(dy_chunk.axis_chunks_iter(Axis(0), group)) {
                    if x_group.dim().0 == 1 {
                        // one sample, band by band: its dy is the block already
                        let (x_i, mut dx_i) = (x_group.index_axis(Axis(0), 0), dx_group.index_axis_mut(Axis(0), 0));
                        let dy_i = dy_group.index_axis(Axis(0), 0).into_shape_with_order((c_out, p)).expect("dy sample is contiguous");
                        if g.is_identity() {
                            // a 1x1 convolution: the sample is its own lowering, dx its dcols
                            let x_i = x_i.as_standard_layout();
                            let cols = x_i.view().into_shape_with_order((k, p)).expect("standard layout");
                            let mut dx_i = dx_i.into_shape_with_order((k, p)).expect("dx sample is contiguous");
                            step(&mut partial, &cols, &dy_i, &mut dx_i);
                            continue;
                        }
                        for band in bands(g, rows) {
                            let (start, end) = (band.start * g.ow, band.end * g.ow);
                            let mut cols = cols.slice_mut(s![.., ..end - start]);
                            im2col_tile(x_i, g, band.clone(), cols.view_mut());
                            let dy_band = dy_i.slice(s![.., start..end]);
                            let mut dcols = dcols.slice_mut(s![.., ..end - start]);
                            step(&mut partial, &cols.view(), &dy_band, &mut dcols);
                            col2im_tile(dcols.view_mut(), g, band, dx_i.view_mut());
                        }
                        continue;
                    }
                    // several: side by side
                    let m = x_group.dim().0 * p;
                    let mut cols = cols.slice_mut(s![.., ..m]);
                    lower_group(x_group, g, &mut cols);
                    group_side_by_side(dy_group, &mut dy_mat);
                    let mut dcols = dcols.slice_mut(s![.., ..m]);
                    step(&mut partial, &cols.view(), &dy_mat.slice(s![.., ..m]), &mut dcols);
                    for (i, dx_i) in dx_group.outer_iter_mut().enumerate() {
                        col2im_sample(dcols.slice_mut(s![.., i * p..(i + 1) * p]), g, dx_i);
                    }
                }
                partial
            },
        )
        .collect();
    Ok((dx, partials))
}

/// The filter and bias gradients alone, without the input gradient (of the layers Winograd
/// does not compute: those take [`winograd::filter_gradient`]): for outputs of fewer
/// than 64 positions, or of rows too short for the dot products ([`short_rows`]), by one
/// GEMM per task on channels-last copies with AVX2
/// ([`implicit::filter_gradient_channels_last`]; ResNet-20's 7x7 layers, 64 channels, batch
/// 128, Zen 3: 3.9 ms against the lowering's 5.1); for fewer than 64 positions without AVX2
/// by the lowering with samples side by side ([`lowered_filter_gradient`]; on AVX-512, the
/// stride-2 7x7 layer's forward + backward 3.6 → 3.4 ms against the dot products);
/// otherwise by dot products of rows read in
/// place ([`implicit::filter_gradient`]: 3.5 ms against 4.1 channels-last at 28x28, 3.8
/// against 4.0 at 14x14).
fn filter_gradient(x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> Result<(Array4<f32>, Array1<f32>)> {
    let small = group_size(g.positions()) > 1;
    if crate::gemm::kernel_name() == "avx2+fma" && (small || short_rows(g, x.dim().1)) {
        expect_allocatable("channels-last padded samples", implicit::channels_last_values(g, x.dim().1, dy.dim().1))?;
        return Ok(implicit::filter_gradient_channels_last(x, dy, g));
    }
    if small {
        return lowered_filter_gradient(x, dy, g);
    }
    expect_allocatable("padded sample", implicit::padded_values(g, x.dim().1))?;
    Ok(implicit::filter_gradient(x, dy, g))
}

/// Outputs of at most this many positions have rows too short for the filter gradient's dot
/// products with AVX2 (11x11: 121 values in rows of 144, wrapped columns and lanes included)
/// and take the channels-last GEMM, if the input channels fill its 16-lane slivers. Measured on
/// Zen 3, the filter gradient alone, dot products against channels-last (ms): batch 128, 32 →
/// 32 channels, SAME, 10x10 2.44 / 2.00, 12x12 3.10 / 2.87, 14x14 3.80 / 3.74, 16x16 4.89 /
/// 4.89, 20x20 (16 channels) 1.95 / 2.12; the reference network's conv2 (13x13 → 11x11, 32 →
/// 64) at batch 64 2.58 / 2.20 and at 256 10.1 / 8.4; 13x13 → 11x11 with 16 or 64 channels
/// level; 3 channels (13 of 16 lanes empty) 0.30 / 0.67.
const SHORT_ROWS: usize = 144;

/// Whether the filter gradient's dot products would run on short rows ([`SHORT_ROWS`]) of a
/// layer whose `c_in` input channels fill the channels-last GEMM's slivers.
fn short_rows(g: &Geometry, c_in: usize) -> bool {
    g.positions() <= SHORT_ROWS && c_in.is_multiple_of(crate::gemm::Kernel::best().nr)
}

/// The filter and bias gradients alone by the lowering, for outputs of fewer than 64
/// positions ([`group_size`] samples side by side): `dw = Σ dy · colsᵀ` over groups of
/// samples, in tasks of [`backward_chunk`] samples whose partial sums are added in batch order.
fn lowered_filter_gradient(x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> Result<(Array4<f32>, Array1<f32>)> {
    let (c_in, c_out) = (x.dim().1, dy.dim().1);
    let (k, p) = (c_in * g.kh * g.kw, g.positions());
    let group = group_size(p);
    expect_allocatable("lowered matrix", k * group * p)?;
    let dy = dy.as_standard_layout();
    let (dw, db) = filter_gradient_tasks(
        x,
        dy.view(),
        backward_chunk(group),
        (c_out, k),
        || (Scratch::matrix(k, group * p), Scratch::matrix(c_out, group * p)),
        |(cols, dy_mat), x_chunk, dy_chunk| {
            let (mut cols, mut dy_mat) = (cols.view_mut(), dy_mat.view_mut());
            let (mut dw, mut db) = (Array2::zeros((c_out, k)), Array1::zeros(c_out));
            for (x_group, dy_group) in x_chunk.axis_chunks_iter(Axis(0), group).zip(dy_chunk.axis_chunks_iter(Axis(0), group)) {
                let m = x_group.dim().0 * p;
                let mut cols = cols.slice_mut(s![.., ..m]);
                lower_group(x_group, g, &mut cols);
                group_side_by_side(dy_group, &mut dy_mat);
                let dy_m = dy_mat.slice(s![.., ..m]);
                mat_mul(1.0, &dy_m, &cols.t(), 1.0, &mut dw.view_mut());
                db += &dy_m.sum_axis(Axis(1));
            }
            (dw, db)
        },
    );
    Ok((dw.into_shape_with_order((c_out, c_in, g.kh, g.kw)).expect("dw has the filters' size"), db))
}

/// How a convolution is computed. [`conv2d`] and its kin choose from the shapes, in this one
/// place ([`Algorithm::choose`]); [`conv2d_with`] and [`conv2d_backward_with`] run the one you
/// name, to compare them side by side (the benches do). All agree with the naive loops
/// within f32 rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// im2col, then one GEMM per sample (or small group of samples): the lecture's algorithm.
    Lowered,
    /// The same products, the lowered matrix read from a padded copy of each sample (split
    /// into phase planes for a stride above 1) and never written (`src/implicit.rs` explains
    /// how); for stride 1 the backward too where the padding is within the kernel's reach
    /// (else the lowered backward); for larger strides the filter gradient too, the input
    /// gradient as one stride-1 convolution per phase of the input (or by col2im where a phase
    /// has no tap). Chosen where it was measured faster.
    Implicit,
    /// 3x3, stride 1, no dilation, padding of at most 2: Winograd's F(2x2, 3x3), 16
    /// multiplications per 2x2 outputs where the direct product spends 36
    /// (`src/winograd.rs`); the input and filter gradients too (the filter gradient by
    /// F(4x4) where its tiles fit the image, else F(2x2)). Chosen on CPUs with AVX-512 or AVX2 where F(4x4)'s tiles do not
    /// fit the image but these do (14x14, 16x16; not 7x7 or 8x8) and the layer has 24 channels
    /// or more (ResNet-20's second stage; with AVX-512 at most 32 filters).
    Winograd,
    /// As [`Algorithm::Winograd`] with the larger tile F(4x4, 3x3): 36 multiplications per 4x4
    /// outputs where the direct product spends 144, values rounded a little more (its
    /// transforms multiply by up to 8). Chosen on CPUs with AVX-512 or AVX2 for 3x3 stride-1
    /// layers of 8 channels or more on images its tiles fit (at most 1.2 outputs computed per
    /// output kept: 28x28, 32x32, not 16x16) — ResNet-20's first stage; with AVX-512 fewer
    /// than 32 filters.
    Winograd4,
    /// Direct convolution, oneDNN's way: vectors along the output channels, each output
    /// pixel's input values broadcast from the padded sample (`src/direct.rs`); no wrapped
    /// columns, no lowered matrix. Chosen where the filters fill its vector tiles (32 filters
    /// a tile with AVX-512, 16 with AVX2), the receptive field is 32 values or longer (with
    /// AVX2, whose tiles go straight to the output, any: one-channel stems too) and the
    /// output planes are not a multiple of 512 values (32x32: its stores would share an L1
    /// set).
    Direct,
    /// Each group of channels through [`Algorithm::Lowered`] on its own.
    Grouped,
    /// One input channel per group: direct loops (`src/depthwise.rs`); a GEMM with
    /// `K = kh·kw` would be too thin for BLAS.
    Depthwise,
}

impl Algorithm {
    /// Every algorithm, in the order above.
    pub const ALL: [Algorithm; 7] = [Algorithm::Lowered, Algorithm::Implicit, Algorithm::Winograd, Algorithm::Winograd4, Algorithm::Direct, Algorithm::Grouped, Algorithm::Depthwise];

    /// The algorithm [`conv2d_groups`] takes for these operands (shapes `[n, c_in, h, w]` and
    /// `[c_out, c_in / groups, kh, kw]`).
    ///
    /// # Errors
    /// As [`conv2d_groups`]: operands that do not fit together.
    ///
    /// ```
    /// use cnn_core::{gemm::kernel_name, Algorithm, Padding, Window};
    /// let same = Window::square(3).padding(Padding::Same);
    /// let choose = |x: &[usize], w: &[usize], win: &Window| Algorithm::choose(x, w, win, 1).unwrap();
    /// // Winograd's F(4x4) for 16 filters on 28x28 and F(2x2) for 32 on 14x14 with a vector
    /// // kernel; the direct convolution where the filters fill its vector tiles (32 a tile
    /// // with AVX-512, 16 with AVX2) and Winograd does not suit; the implicit product else;
    /// // one input channel (a receptive field of 9): the direct convolution with AVX2 (its
    /// // tiles go straight to the output), the lowering else; 64 channels at 7x7: F(4x4) in
    /// // strips of samples with AVX2
    /// let (large_16, small_16, small_32, large_32, one_channel, small_64) = match kernel_name() {
    ///     "avx512" => (Algorithm::Winograd4, Algorithm::Implicit, Algorithm::Winograd, Algorithm::Direct, Algorithm::Lowered, Algorithm::Direct),
    ///     "avx2+fma" => (Algorithm::Winograd4, Algorithm::Direct, Algorithm::Winograd, Algorithm::Winograd4, Algorithm::Direct, Algorithm::Winograd4),
    ///     _ => (Algorithm::Implicit, Algorithm::Implicit, Algorithm::Implicit, Algorithm::Implicit, Algorithm::Lowered, Algorithm::Implicit),
    /// };
    /// assert_eq!(choose(&[8, 64, 7, 7], &[64, 64, 3, 3], &same), small_64);
    /// assert_eq!(choose(&[8, 1, 28, 28], &[32, 1, 3, 3], &same), one_channel);
    /// assert_eq!(choose(&[8, 16, 28, 28], &[16, 16, 3, 3], &same), large_16);
    /// assert_eq!(choose(&[8, 16, 14, 14], &[16, 16, 3, 3], &same), small_16);
    /// assert_eq!(choose(&[8, 16, 28, 28], &[16, 16, 3, 3], &same.stride(2)), small_16);
    /// assert_eq!(choose(&[8, 32, 14, 14], &[32, 32, 3, 3], &same), small_32);
    /// assert_eq!(choose(&[8, 32, 28, 28], &[32, 32, 3, 3], &same), large_32);
    /// ```
    pub fn choose(x: &[usize], w: &[usize], win: &Window, groups: usize) -> Result<Algorithm> {
        let g = conv_geometry(x, w, None, win, groups)?;
        Ok(Algorithm::of(x[1], w[0], groups, &g))
    }

    /// Its short name: `lowered`, `implicit`, `winograd`, `winograd4`, `direct`, `grouped`, `depthwise`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Lowered => "lowered",
            Algorithm::Implicit => "implicit",
            Algorithm::Winograd => "winograd",
            Algorithm::Winograd4 => "winograd4",
            Algorithm::Direct => "direct",
            Algorithm::Grouped => "grouped",
            Algorithm::Depthwise => "depthwise",
        }
    }

    fn of(c_in: usize, c_out: usize, groups: usize, g: &Geometry) -> Algorithm {
        match groups {
            1 => match winograd::suits(g, c_in, c_out) {
                Some(winograd::Size::F4) => Algorithm::Winograd4,
                Some(winograd::Size::F2) => Algorithm::Winograd,
                None if direct::suits(g, c_in, c_out) => Algorithm::Direct,
                None if implicit::suits(g, c_in, c_out) => Algorithm::Implicit,
                None => Algorithm::Lowered,
            },
            g if g == c_in => Algorithm::Depthwise,
            _ => Algorithm::Grouped,
        }
    }

    /// Winograd's tile of this algorithm (the F(4x4) one for [`Algorithm::Winograd4`]).
    fn winograd_size(self) -> winograd::Size {
        if self == Algorithm::Winograd4 { winograd::Size::F4 } else { winograd::Size::F2 }
    }

    /// An error when this algorithm cannot compute a convolution of this shape.
    fn check(self, c_in: usize, groups: usize, g: &Geometry) -> Result<()> {
        let reason = match self {
            Algorithm::Lowered | Algorithm::Implicit | Algorithm::Winograd | Algorithm::Winograd4 | Algorithm::Direct if groups != 1 => format!("computes one group, not {groups} (use grouped or depthwise)"),
            Algorithm::Winograd | Algorithm::Winograd4 if !winograd::applies(g) => "needs a 3x3 kernel, stride 1, no dilation and padding of at most 2".to_string(),
            Algorithm::Depthwise if groups != c_in => format!("needs one group per input channel ({c_in}), not {groups}"),
            _ => return Ok(()),
        };
        Err(CnnError::Invalid { what: "algorithm", reason: format!("{} {reason}", self.name()) })
    }
}

/// An activation applied to a convolution's outputs as they are stored, after the bias
/// (oneDNN's post-op): inference passes over the output once, where a separate layer would
/// read and write it again. [`conv2d_activated`] takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// The outputs as computed.
    #[default]
    Identity,
    /// `max(0, v)`, NaN kept (−0 may stay −0).
    Relu,
}

impl Activation {
    /// The least value it lets through: a store writes [`clip`]`(v, floor)`.
    fn floor(self) -> f32 {
        match self {
            Activation::Identity => f32::NEG_INFINITY,
            Activation::Relu => 0.0,
        }
    }
}

/// `v` raised to `floor` where it is below, NaN kept: an activation as one compare and select,
/// `max(floor, v)` in vector registers (whose max returns its second operand for a NaN).
#[inline(always)]
pub(crate) fn clip(v: f32, floor: f32) -> f32 {
    if v < floor { floor } else { v }
}

/// What a convolution does to each output value as it stores it: adds the filter's bias,
/// then clips at the activation's floor. The algorithms whose stores are this crate's own
/// (implicit, direct, Winograd) take it; the others are followed by a pass.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub(crate) bias: Option<ArrayView1<'a, f32>>,
    pub(crate) floor: f32,
}

impl<'a> Epilogue<'a> {
    /// The bias alone (no activation): what the backward passes' convolutions store.
    pub(crate) fn bias(bias: Option<ArrayView1<'a, f32>>) -> Self {
        Epilogue { bias, floor: f32::NEG_INFINITY }
    }

    /// The bias of output channel `c` (0 without one).
    pub(crate) fn bias_of(&self, c: usize) -> f32 {
        self.bias.map_or(0.0, |b| b[c])
    }
}

/// Convolution forward: `y = w ⊛ x + b`, by im2col and one GEMM per sample (or small group).
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`
/// - `w`: `[c_out, c_in, kh, kw]` — `c_out` filters, each a stack of `c_in` kernels
/// - `b`: `[c_out]` (optional)
/// - returns `y`: `[n, c_out, oh, ow]`
///
/// # Errors
/// Channel or bias mismatch, a window that does not match the filters or does not fit the
/// input, a zero stride, an empty input.
///
/// ```
/// use cnn_core::{conv2d, Window};
/// use ndarray::{Array1, Array4};
/// let x = Array4::<f32>::ones((2, 3, 5, 5));
/// let w = Array4::<f32>::ones((4, 3, 3, 3));
/// let b = Array1::from(vec![0.0, 1.0, 2.0, 3.0]);
/// let y = conv2d(x.view(), w.view(), Some(b.view()), &Window::square(3)).unwrap();
/// assert_eq!(y.dim(), (2, 4, 3, 3));
/// assert_eq!(y[[1, 3, 2, 2]], 27.0 + 3.0);
/// ```
pub fn conv2d(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, win: &Window) -> Result<Array4<f32>> {
    conv2d_groups(x, w, b, win, 1)
}

/// Grouped convolution forward: the `c_in` input channels split into `groups` equal parts,
/// part `g` convolved with filters `g·c_out/groups ..`, the outputs side by side. `groups =
/// c_in` is a depthwise convolution (each channel with its own `c_out / c_in` kernels).
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`
/// - `w`: `[c_out, c_in / groups, kh, kw]`
/// - `b`: `[c_out]` (optional)
/// - returns `y`: `[n, c_out, oh, ow]`
///
/// # Errors
/// As [`conv2d`], and `groups` that does not divide both channel counts.
///
/// ```
/// use cnn_core::{conv2d_groups, Window};
/// use ndarray::Array4;
/// // depthwise: 3 channels, 2 kernels each
/// let y = conv2d_groups(Array4::ones((1, 3, 5, 5)).view(), Array4::ones((6, 1, 3, 3)).view(), None, &Window::square(3), 3).unwrap();
/// assert_eq!((y.dim(), y[[0, 5, 1, 1]]), ((1, 6, 3, 3), 9.0));
/// ```
pub fn conv2d_groups(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, win: &Window, groups: usize) -> Result<Array4<f32>> {
    conv2d_activated(x, w, b, win, groups, Activation::Identity)
}

/// [`conv2d_groups`] followed by `activation`, applied as the outputs are stored where the
/// algorithm chosen stores them itself (the implicit, direct and Winograd ones), else in a
/// pass after it: `relu(conv2d_groups(..))` with one pass over the output fewer. The values
/// are exactly those of the convolution, then the activation.
///
/// # Errors
/// As [`conv2d_groups`].
///
/// ```
/// use cnn_core::{conv2d_activated, Activation, Window};
/// use ndarray::{Array1, Array4};
/// let (x, w) = (Array4::<f32>::ones((1, 2, 5, 5)), Array4::<f32>::ones((3, 2, 3, 3)));
/// let b = Array1::from(vec![-20.0, -18.0, 0.0]);
/// let y = conv2d_activated(x.view(), w.view(), Some(b.view()), &Window::square(3), 1, Activation::Relu).unwrap();
/// // 18 + bias, then max(0, ·)
/// assert_eq!((y[[0, 0, 1, 1]], y[[0, 1, 1, 1]], y[[0, 2, 1, 1]]), (0.0, 0.0, 18.0));
/// ```
pub fn conv2d_activated(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, win: &Window, groups: usize, activation: Activation) -> Result<Array4<f32>> {
    let g = conv_geometry(x.shape(), w.shape(), b.map(|b| b.len()), win, groups)?;
    forward(Algorithm::of(x.dim().1, w.dim().0, groups, &g), x, w, b, &g, groups, activation)
}

/// [`conv2d_groups`] by the algorithm named, not the one it would choose.
///
/// # Errors
/// As [`conv2d_groups`], and an algorithm that cannot compute this shape (Winograd with
/// stride 2, say).
///
/// ```
/// use cnn_core::{conv2d_with, Algorithm, Window};
/// use ndarray::Array4;
/// let (x, w) = (Array4::<f32>::ones((1, 2, 5, 5)), Array4::<f32>::ones((3, 2, 3, 3)));
/// let lowered = conv2d_with(Algorithm::Lowered, x.view(), w.view(), None, &Window::square(3), 1).unwrap();
/// let implicit = conv2d_with(Algorithm::Implicit, x.view(), w.view(), None, &Window::square(3), 1).unwrap();
/// assert_eq!(lowered, implicit);
/// let winograd = conv2d_with(Algorithm::Winograd, x.view(), w.view(), None, &Window::square(3), 1).unwrap();
/// assert!(winograd.iter().zip(&lowered).all(|(a, b)| (a - b).abs() < 1e-5));
/// assert!(conv2d_with(Algorithm::Winograd, x.view(), w.view(), None, &Window::square(3).stride(2), 1).is_err());
/// ```
pub fn conv2d_with(algorithm: Algorithm, x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, win: &Window, groups: usize) -> Result<Array4<f32>> {
    let g = conv_geometry(x.shape(), w.shape(), b.map(|b| b.len()), win, groups)?;
    algorithm.check(x.dim().1, groups, &g)?;
    forward(algorithm, x, w, b, &g, groups, Activation::Identity)
}

/// The forward pass by `algorithm` (which can compute it: checked by the caller), then
/// `activation`: in the stores where the algorithm takes an [`Epilogue`], else in a pass.
fn forward(algorithm: Algorithm, x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, g: &Geometry, groups: usize, activation: Activation) -> Result<Array4<f32>> {
    // every algorithm runs in rayon's tasks, and some call OpenBLAS there: one BLAS thread
    threads::init();
    let (n, c_in, _, _) = x.dim();
    let c_out = w.dim().0;
    let out = Epilogue { bias: b, floor: activation.floor() };
    let mut y = match algorithm {
        Algorithm::Implicit => {
            expect_allocatable("output", n * c_out * g.positions())?;
            expect_allocatable("padded sample", implicit::padded_values(g, c_in))?;
            return Ok(implicit::forward(x, w, out, g));
        }
        Algorithm::Direct => {
            expect_allocatable("output", n * c_out * g.positions())?;
            expect_allocatable("padded sample", implicit::padded_values(g, c_in))?;
            return Ok(direct::forward(x, w, out, g));
        }
        Algorithm::Winograd | Algorithm::Winograd4 => {
            expect_allocatable("output", n * c_out * g.positions())?;
            expect_allocatable("Winograd's transformed tiles", winograd::work_values(g, c_in, c_out))?;
            return Ok(winograd::forward(algorithm.winograd_size(), x, w, out, g));
        }
        Algorithm::Lowered => lowered_conv(x, w, b, g)?,
        Algorithm::Depthwise => {
            expect_allocatable("output", n * c_out * g.positions())?;
            depthwise::forward(x, w, b, g)
        }
        Algorithm::Grouped => {
            let (cig, cog) = (c_in / groups, c_out / groups);
            expect_allocatable("output", n * c_out * g.positions())?;
            let mut y = Array4::zeros((n, c_out, g.oh, g.ow));
            for k in 0..groups {
                let (ins, outs) = (k * cig..(k + 1) * cig, k * cog..(k + 1) * cog);
                let b_k = b.map(|b| b.slice_move(s![outs.clone()]));
                let y_k = lowered_conv(x.slice(s![.., ins, .., ..]), w.slice(s![outs.clone(), .., .., ..]), b_k, g)?;
                y.slice_mut(s![.., outs, .., ..]).assign(&y_k);
            }
            y
        }
    };
    if activation != Activation::Identity {
        let floor = out.floor;
        y.as_slice_mut().expect("a new array").par_chunks_mut(1 << 14).for_each(|y| y.iter_mut().for_each(|v| *v = clip(*v, floor)));
    }
    Ok(y)
}

/// im2col and a GEMM per sample (or group of samples): the whole layer as matrix products.
fn lowered_conv(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, g: &Geometry) -> Result<Array4<f32>> {
    let (c_out, c_in, kh, kw) = w.dim();
    let w_mat = w.to_shape((c_out, c_in * kh * kw)).expect("filters reshape to [c_out, c_in*kh*kw]");
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    lowered_forward(x, g, c_out, b, |cols, y| {
        // y [c_out, m] = w_mat [c_out, k] · cols [k, m] (+ the bias already in y); m = samples·oh·ow
        mat_mul(1.0, &w_mat.view(), cols, beta, y);
    })
}

/// Convolution backward: gradients of the input, the filters and the bias, given `dy`.
///
/// The lowering is recomputed from `x` (cnn-core functions keep no state).
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`, the forward input
/// - `w`: `[c_out, c_in, kh, kw]`
/// - `dy`: `[n, c_out, oh, ow]`, the gradient of the output
/// - returns `dx` like `x`, `dw` like `w`, `db`: `[c_out]`
///
/// # Errors
/// As [`conv2d`], and a `dy` whose shape is not the output's.
pub fn conv2d_backward(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, win: &Window) -> Result<Conv2dGrads> {
    conv2d_groups_backward(x, w, dy, win, 1)
}

/// Grouped convolution backward: each group's gradients from its share of `dy`.
///
/// # Shapes
/// As [`conv2d_groups`], with `dy`: `[n, c_out, oh, ow]`; returns `dx` like `x`, `dw` like
/// `w`, `db`: `[c_out]`.
///
/// # Errors
/// As [`conv2d_groups`], and a `dy` whose shape is not the output's.
pub fn conv2d_groups_backward(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, win: &Window, groups: usize) -> Result<Conv2dGrads> {
    let g = backward_geometry(x, w, dy, win, groups)?;
    backward(Algorithm::of(x.dim().1, w.dim().0, groups, &g), x, w, dy, &g, groups)
}

/// The filter and bias gradients of [`conv2d_groups_backward`] without the input gradient:
/// for a model's first layer, whose input needs none (PyTorch skips it the same way for an
/// input that does not require a gradient). One group: as the backward passes compute it
/// alone (see `filter_gradient`: dot products of rows read in place, or for outputs of fewer
/// than 64 positions, or of short rows, a GEMM on channels-last copies with AVX2, the lowering
/// else); several:
/// the whole backward, the input gradient dropped.
///
/// # Shapes
/// As [`conv2d_groups_backward`]; returns `dw` like `w` and `db`: `[c_out]`.
///
/// # Errors
/// As [`conv2d_groups_backward`].
///
/// ```
/// use cnn_core::{conv2d_backward, conv2d_params_backward, Window};
/// use ndarray::Array4;
/// let (x, w, dy) = (Array4::<f32>::ones((2, 1, 5, 5)), Array4::<f32>::ones((4, 1, 3, 3)), Array4::<f32>::ones((2, 4, 3, 3)));
/// let (dw, db) = conv2d_params_backward(x.view(), w.view(), dy.view(), &Window::square(3), 1).unwrap();
/// let all = conv2d_backward(x.view(), w.view(), dy.view(), &Window::square(3)).unwrap();
/// assert_eq!((dw, db), (all.dw, all.db));
/// ```
pub fn conv2d_params_backward(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, win: &Window, groups: usize) -> Result<(Array4<f32>, Array1<f32>)> {
    let g = backward_geometry(x, w, dy, win, groups)?;
    threads::init();
    if groups == 1 {
        return filter_gradient(x, dy, &g);
    }
    let grads = backward(Algorithm::of(x.dim().1, w.dim().0, groups, &g), x, w, dy, &g, groups)?;
    Ok((grads.dw, grads.db))
}

/// [`conv2d_groups_backward`] by the algorithm named, not the one it would choose.
///
/// # Errors
/// As [`conv2d_groups_backward`], and an algorithm that cannot compute this shape.
pub fn conv2d_backward_with(algorithm: Algorithm, x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, win: &Window, groups: usize) -> Result<Conv2dGrads> {
    let g = backward_geometry(x, w, dy, win, groups)?;
    algorithm.check(x.dim().1, groups, &g)?;
    backward(algorithm, x, w, dy, &g, groups)
}

/// The operands of a backward pass checked, `dy` included.
fn backward_geometry(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, win: &Window, groups: usize) -> Result<Geometry> {
    let g = conv_geometry(x.shape(), w.shape(), None, win, groups)?;
    expect_shape("output gradient dy", &[x.dim().0, w.dim().0, g.oh, g.ow], dy.shape())?;
    Ok(g)
}

/// The backward pass by `algorithm` (which can compute it: checked by the caller).
fn backward(algorithm: Algorithm, x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry, groups: usize) -> Result<Conv2dGrads> {
    threads::init();
    let (n, c_in, h, wd) = x.dim();
    let c_out = w.dim().0;
    match algorithm {
        Algorithm::Lowered | Algorithm::Implicit => lowered_backward_conv(x, w, dy, g, algorithm),
        Algorithm::Direct => match implicit::transposed_operands(w, g) {
            // the input gradient as one more direct convolution, where it costs about what
            // the forward does
            Some((turned, g_t)) if direct::suits_transposed(g, c_in) => {
                expect_allocatable("input gradient", x.len())?;
                expect_allocatable("padded output gradient", implicit::padded_values(&g_t, c_out))?;
                let (dw, db) = filter_gradient(x, dy, g)?;
                Ok(Conv2dGrads { dx: direct::forward(dy, turned, Epilogue::bias(None), &g_t), dw, db })
            }
            // otherwise by col2im: the lowering's backward, or the implicit product's if strided
            _ => lowered_backward_conv(x, w, dy, g, if (g.sh, g.sw) == (1, 1) { Algorithm::Lowered } else { Algorithm::Implicit }),
        },
        Algorithm::Winograd | Algorithm::Winograd4 => {
            // the input gradient is the convolution of dy with the filters turned, c_out → c_in
            let (turned, g_t) = implicit::transposed_operands(w, g).expect("winograd applies: padding within the reach");
            expect_allocatable("input gradient", x.len())?;
            expect_allocatable("Winograd's transformed tiles", winograd::work_values(&g_t, c_out, c_in))?;
            expect_allocatable("Winograd's filter gradient", winograd::gradient_values(g, c_in, c_out))?;
            let (dw, db) = winograd::filter_gradient(x, dy, g);
            Ok(Conv2dGrads { dx: winograd::forward(algorithm.winograd_size(), dy, turned, Epilogue::bias(None), &g_t), dw, db })
        }
        Algorithm::Depthwise => {
            expect_allocatable("input gradient", x.len())?;
            let (dx, dw, db) = depthwise::backward(x, w, dy, g);
            Ok(Conv2dGrads { dx, dw, db })
        }
        Algorithm::Grouped => {
            let (cig, cog) = (c_in / groups, c_out / groups);
            expect_allocatable("input gradient", x.len())?;
            let mut grads = Conv2dGrads { dx: Array4::zeros((n, c_in, h, wd)), dw: Array4::zeros(w.raw_dim()), db: Array1::zeros(c_out) };
            for k in 0..groups {
                let (ins, outs) = (k * cig..(k + 1) * cig, k * cog..(k + 1) * cog);
                let part = lowered_backward_conv(x.slice(s![.., ins.clone(), .., ..]), w.slice(s![outs.clone(), .., .., ..]), dy.slice(s![.., outs.clone(), .., ..]), g, Algorithm::Lowered)?;
                grads.dx.slice_mut(s![.., ins, .., ..]).assign(&part.dx);
                grads.dw.slice_mut(s![outs.clone(), .., .., ..]).assign(&part.dw);
                grads.db.slice_mut(s![outs]).assign(&part.db);
            }
            Ok(grads)
        }
    }
}

/// The backward of [`lowered_conv`], and of [`implicit::forward`]: for the implicit one, all
/// three gradients without a lowered matrix ([`implicit::filter_gradient`],
/// [`implicit::input_gradient`]) wherever the padding is within the kernel's reach; otherwise
/// the lowered matrix's filter gradient and col2im.
fn lowered_backward_conv(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry, algorithm: Algorithm) -> Result<Conv2dGrads> {
    let (c_out, c_in, kh, kw) = w.dim();
    if algorithm == Algorithm::Implicit && implicit::transposed_suits(g, c_in, c_out) {
        expect_allocatable("input gradient", x.len())?;
        let (dw, db) = implicit::filter_gradient(x, dy, g);
        return Ok(Conv2dGrads { dx: implicit::input_gradient(dy, w, g), dw, db });
    }
    if algorithm == Algorithm::Implicit && (g.sh, g.sw) != (1, 1) {
        // strided: the filter gradient from the phase planes, the input gradient as stride-1
        // convolutions of dy, one per phase of the input (ResNet-20's stride-2 layers, batch
        // 128, Zen 3, a whole backward: 16 → 32 channels 6.77 → 5.90 ms, 32 → 64 5.50 → 5.02),
        // else by the lowering's adjoint alone (no lowered matrix of x)
        expect_allocatable("padded sample", implicit::padded_values(g, c_in))?;
        let dx = match phase_input_gradient(w, dy, g, x.raw_dim()) {
            Some(dx) => dx?,
            None => col2im_input_gradient(w, dy, g, x.raw_dim())?,
        };
        let (dw, db) = filter_gradient(x, dy, g)?;
        return Ok(Conv2dGrads { dx, dw, db });
    }
    let k = c_in * kh * kw;
    let w_mat = w.to_shape((c_out, k)).expect("filters reshape to [c_out, c_in*kh*kw]");
    let (dx, partials) = lowered_backward(
        x,
        dy,
        g,
        || (Array2::zeros((c_out, k)), Array1::zeros(c_out)),
        |(dw, db), cols, dy, dcols| {
            // dw [c_out, k] += dy [c_out, m] · colsᵀ [m, k]       (m = samples·oh·ow)
            mat_mul(1.0, dy, &cols.t(), 1.0, &mut dw.view_mut());
            // dcols [k, m] = w_matᵀ [k, c_out] · dy [c_out, m]
            mat_mul(1.0, &w_mat.t(), dy, 0.0, dcols);
            *db += &dy.sum_axis(Axis(1));
        },
    )?;
    let (dw, db) = sum_in_batch_order(&partials, (c_out, k));
    let dw = dw.into_shape_with_order(w.raw_dim()).expect("dw has the filters' size");
    Ok(Conv2dGrads { dx, dw, db })
}

/// One axis of a strided convolution's input gradient, split by phase (the input positions
/// `q, q + stride, …`): the phase sees the taps `first, first + stride, …` (`taps` of them)
/// and, as a stride-1 correlation of `dy` with those taps turned around, pads `before` and
/// `after` to give its `len` positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phase {
    first: usize,
    taps: usize,
    before: usize,
    after: usize,
    len: usize,
}

/// The phases of an axis of `len` inputs, `out` outputs, a `k`-tap kernel, `stride` and
/// `pad` before: input `s·u + q` takes tap `ky` from output `u + (q + pad − ky) / s` where the
/// division is exact, so phase `q`'s taps are those `≡ q + pad` (mod `s`), and output `u + c −
/// j` meets its `j`-th. `None` where a phase has no tap (a kernel narrower than the stride)
/// or would need a negative padding.
fn axis_phases(len: usize, out: usize, k: usize, stride: usize, pad: usize) -> Option<Vec<Phase>> {
    (0..stride.min(len))
        .map(|q| {
            let first = (q + pad) % stride;
            let taps = k.checked_sub(first)?.div_ceil(stride);
            let len = (len - q).div_ceil(stride);
            let before = taps.checked_sub(1)?.checked_sub((q + pad - first) / stride)?;
            let after = (len + taps - 1).checked_sub(out + before)?;
            Some(Phase { first, taps, before, after, len })
        })
        .collect()
}

/// The input gradient of a strided convolution (dilation 1) as stride-1 convolutions of `dy`,
/// one per phase of the input (its positions `≡ (qy, qx)` modulo the strides): each phase sees
/// only the taps that land on it, turned around (ResNet-20's stride-2 3x3 layers: 2x2, 2x1,
/// 1x2 and 1x1 filters, 9 taps in all, as in the convolution), each by the algorithm `conv2d`
/// would choose for it, the phases then interleaved into `dx`, a sample at a time. The same
/// products as the lowering's adjoint (`w_matᵀ · dy`, then col2im adding the windows' overlaps),
/// without the lowered gradient or its scatter. `None` where [`axis_phases`] finds no phases.
fn phase_input_gradient(w: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry, x_dim: ndarray::Ix4) -> Option<Result<Array4<f32>>> {
    let rows = axis_phases(g.h, g.oh, g.kh, g.sh, g.pad_top).filter(|_| g.dh == 1)?;
    let cols = axis_phases(g.w, g.ow, g.kw, g.sw, g.pad_left).filter(|_| g.dw == 1)?;
    Some(phase_convolutions(w, dy, g, x_dim, &rows, &cols))
}

/// [`phase_input_gradient`] on the phases found.
fn phase_convolutions(w: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry, x_dim: ndarray::Ix4, rows: &[Phase], cols: &[Phase]) -> Result<Array4<f32>> {
    let (c_out, c_in, _, _) = w.dim();
    expect_allocatable("input gradient", ndarray::Dimension::size(&x_dim))?;
    let mut parts = Vec::with_capacity(rows.len() * cols.len());
    for py in rows {
        for px in cols {
            // the phase's taps, turned around, input and output channels swapped
            let taps = w.slice(s![.., .., py.first..;g.sh as isize, px.first..;g.sw as isize]);
            let turned = implicit::turned(taps);
            debug_assert_eq!(turned.dim(), (c_in, c_out, py.taps, px.taps));
            let win = Window::new(py.taps, px.taps).padding(Padding::Explicit { top: py.before, bottom: py.after, left: px.before, right: px.after });
            let g_q = win.geometry(g.oh, g.ow)?;
            debug_assert_eq!((g_q.oh, g_q.ow), (py.len, px.len));
            parts.push(forward(Algorithm::of(c_out, c_in, 1, &g_q), dy, turned, None, &g_q, 1, Activation::Identity)?);
        }
    }
    let (sh, sw) = (g.sh as isize, g.sw as isize);
    let mut dx = Array4::<f32>::uninit(x_dim);
    Zip::indexed(dx.outer_iter_mut()).par_for_each(|i, mut dx_i| {
        for (k, part) in parts.iter().enumerate() {
            let (qy, qx) = ((k / cols.len()) as isize, (k % cols.len()) as isize);
            part.index_axis(Axis(0), i).assign_to(dx_i.slice_mut(s![.., qy..;sh, qx..;sw]));
        }
    });
    // SAFETY: the phases cover every input position (a phase for each residue below the
    // stride, or each position of a shorter axis), and each wrote all of its positions.
    Ok(unsafe { dx.assume_init() })
}

/// The input gradient alone, by the adjoint of the lowering: `dcols = w_matᵀ · dy` per
/// sample, col2im'd (adding overlapping windows) into `dx` of shape `x_dim`.
fn col2im_input_gradient(w: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry, x_dim: ndarray::Ix4) -> Result<Array4<f32>> {
    let (c_out, c_in, kh, kw) = w.dim();
    let (k, p) = (c_in * kh * kw, g.positions());
    expect_allocatable("input gradient", ndarray::Dimension::size(&x_dim))?;
    expect_allocatable("lowered gradient", k * p)?;
    let w_mat = w.to_shape((c_out, k)).expect("filters reshape to [c_out, c_in*kh*kw]");
    let dy = dy.as_standard_layout();
    let mut dx = threads::par_zeros(x_dim);
    dx.outer_iter_mut().into_par_iter().zip(dy.outer_iter()).for_each_init(
        || Scratch::matrix(k, p),
        |dcols, (dx_i, dy_i)| {
            let dy_i = dy_i.into_shape_with_order((c_out, p)).expect("dy sample is contiguous");
            let mut dcols = dcols.view_mut();
            mat_mul(1.0, &w_mat.t(), &dy_i, 0.0, &mut dcols);
            col2im_sample(dcols, g, dx_i);
        },
    );
    Ok(dx)
}

/// `partial(state, x_task, dy_task)` for the batch cut into tasks of `task` samples, in
/// parallel (each thread with its `state`), the partial filter and bias gradients summed in
/// batch order ([`sum_in_batch_order`]): the scaffold of the filter gradients.
pub(crate) fn filter_gradient_tasks<S>(
    x: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    task: usize,
    (c_out, k): (usize, usize),
    state: impl Fn() -> S + Sync + Send,
    partial: impl Fn(&mut S, ArrayView4<f32>, ArrayView4<f32>) -> (Array2<f32>, Array1<f32>) + Sync + Send,
) -> (Array2<f32>, Array1<f32>) {
    let partials: Vec<(Array2<f32>, Array1<f32>)> = x
        .axis_chunks_iter(Axis(0), task)
        .into_par_iter()
        .zip(dy.axis_chunks_iter(Axis(0), task))
        .map_init(state, |state, (x_task, dy_task)| partial(state, x_task, dy_task))
        .collect();
    sum_in_batch_order(&partials, (c_out, k))
}

/// The tasks' partial filter and bias gradients (`[c_out, k]`, `[c_out]`) summed in batch
/// order: the same sums, bit for bit, for any number of threads.
pub(crate) fn sum_in_batch_order(partials: &[(Array2<f32>, Array1<f32>)], (c_out, k): (usize, usize)) -> (Array2<f32>, Array1<f32>) {
    let (mut dw, mut db) = (Array2::zeros((c_out, k)), Array1::zeros(c_out));
    for (dw_task, db_task) in partials {
        dw += dw_task;
        db += db_task;
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::test_data::filled;

    /// The layers whose filter gradient runs on short rows, as measured: the reference
    /// network's conv2 and a CIFAR-sized 8x8 stage; not with 3 input channels, not ResNet-20's
    /// 14x14 and 28x28 stages.
    #[test]
    fn the_filter_gradients_on_short_rows() {
        let (valid, same) = (Window::square(3), Window::square(3).padding(Padding::Same));
        assert!(short_rows(&valid.geometry(13, 13).unwrap(), 32));
        assert!(short_rows(&same.geometry(8, 8).unwrap(), 64));
        assert!(!short_rows(&valid.geometry(13, 13).unwrap(), 3));
        assert!(!short_rows(&same.geometry(14, 14).unwrap(), 32));
        assert!(!short_rows(&same.geometry(28, 28).unwrap(), 16));
    }

    /// The phases of ResNet-20's stride-2 3x3 layers (28 → 14, SAME: no padding before): even
    /// inputs take taps 0 and 2, odd ones tap 1; a 1x1 stride-2 kernel leaves odd inputs no tap.
    #[test]
    fn the_phases_of_a_strided_axis() {
        let even = Phase { first: 0, taps: 2, before: 1, after: 0, len: 14 };
        let odd = Phase { first: 1, taps: 1, before: 0, after: 0, len: 14 };
        assert_eq!(axis_phases(28, 14, 3, 2, 0), Some(vec![even, odd]));
        // padding 1 before (7 → 4): even inputs take tap 1, odd ones taps 0 and 2
        assert_eq!(axis_phases(7, 4, 3, 2, 1).map(|p| p.iter().map(|p| (p.first, p.taps, p.len)).collect::<Vec<_>>()), Some(vec![(1, 1, 4), (0, 2, 3)]));
        assert_eq!(axis_phases(8, 4, 1, 2, 0), None);
        // 4 taps, stride 3, padding 2 before: input 2's first output would be before dy's first
        assert_eq!(axis_phases(10, 4, 4, 3, 2), None);
    }

    /// The input gradient by phases against the naive loops: ResNet-20's stride-2 layer, odd
    /// sizes with padding before, stride 3 with a 5x4 kernel (three phases a side, of 2 and 1
    /// taps), and a row of one input (one phase).
    #[test]
    fn phase_input_gradient_agrees_with_the_naive_loops() {
        let cases = [([3, 16, 28, 28], 32, Window::square(3).padding(Padding::Same).stride(2)), ([2, 3, 9, 7], 5, Window::square(3).padding(Padding::uniform(1)).stride(2)), ([2, 4, 9, 8], 3, Window::new(5, 4).padding(Padding::Explicit { top: 2, bottom: 2, left: 1, right: 1 }).stride(3)), ([2, 3, 1, 9], 4, Window::new(1, 3).stride(2))];
        for (case, (xs, c_out, win)) in cases.into_iter().enumerate() {
            let g = win.geometry(xs[2], xs[3]).unwrap();
            let (x, w, dy) = (filled(xs, case), filled([c_out, xs[1], win.kh, win.kw], case + 10), filled([xs[0], c_out, g.oh, g.ow], case + 20));
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap().dx;
            let dx = phase_input_gradient(w.view(), dy.view(), &g, x.raw_dim()).expect("every phase has a tap").unwrap();
            let err = dx.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) });
            assert!(err < 1e-4, "case {case}: {err}");
        }
    }

    /// Every algorithm's forward with ReLU is its forward without, then ReLU, value for value:
    /// fused into the stores (implicit, direct, Winograd) or a pass after (the others); NaN
    /// kept. Outputs of random filters and a bias about half negative.
    #[test]
    fn relu_in_the_stores_is_relu_after() {
        let same = Window::square(3).padding(Padding::Same);
        // 20 filters: a part-empty sliver on every kernel; 11x11: cut Winograd tiles
        let cases = [(3, 8, 20, 11, same, 1), (2, 8, 20, 12, same.stride(2), 1), (2, 8, 12, 9, same, 2), (2, 4, 8, 9, same, 4)];
        for (case, &(n, c_in, c_out, side, win, groups)) in cases.iter().enumerate() {
            let mut x = filled([n, c_in, side, side], case);
            x[[1, 0, 4, 5]] = f32::NAN;
            let w = filled([c_out, c_in / groups, 3, 3], 10 + case);
            let b = filled([1, 1, 1, c_out], 20 + case).into_shape_with_order(c_out).unwrap();
            let g = conv_geometry(x.shape(), w.shape(), Some(c_out), &win, groups).unwrap();
            let mut ran = 0;
            for algorithm in Algorithm::ALL.into_iter().filter(|a| a.check(c_in, groups, &g).is_ok()) {
                let plain = forward(algorithm, x.view(), w.view(), Some(b.view()), &g, groups, Activation::Identity).unwrap();
                let relu = forward(algorithm, x.view(), w.view(), Some(b.view()), &g, groups, Activation::Relu).unwrap();
                let (negative, nan) = (plain.iter().filter(|v| **v < 0.0).count(), plain.iter().filter(|v| v.is_nan()).count());
                assert!(negative > plain.len() / 4 && nan > 0, "case {case}: {negative} negative, {nan} NaN of {}", plain.len());
                for (i, (&p, &r)) in plain.iter().zip(&relu).enumerate() {
                    let want = if p < 0.0 { 0.0 } else { p };
                    assert!(r.to_bits() == want.to_bits() || (r.is_nan() && p.is_nan()), "case {case}, {}: value {i}: {r} for {p}", algorithm.name());
                }
                ran += 1;
            }
            assert!(ran >= if groups == 1 { 3 } else { 1 }, "case {case}: {ran} algorithms");
        }
    }
}
