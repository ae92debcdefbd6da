//! 2-D convolution by im2col: the whole layer is one matrix product per sample.
//!
//! ```text
//! w_mat: [c_out, c_in*kh*kw]   one row per filter: its c_in kernels, flattened
//! cols:  [c_in*kh*kw, oh*ow]   one column per receptive field (im2col)
//! y = w_mat · cols + b         [c_out, oh*ow] = the sample's output, already NCHW
//! ```
//!
//! The batch is split over rayon, one sample per task, each with its own lowered matrix and a
//! single-threaded GEMM (see [`crate::threads`]). On this 2-core machine that beat one big
//! multi-threaded GEMM over the whole batch's lowered matrix: a sample's matrix stays in cache
//! between the lowering and the product (the benches measure both).
//!
//! Backward, with the same lowering:
//! ```text
//! dw    = Σ_samples dy · colsᵀ     [c_out, c_in*kh*kw]
//! dcols = w_matᵀ · dy              [c_in*kh*kw, oh*ow]
//! dx    = col2im(dcols)            a pixel shared by several windows receives the sum of their gradients
//! db    = Σ_samples, positions dy
//! ```

use crate::error::{expect_nonempty, expect_shape, CnnError, Result};
use crate::im2col::{col2im_sample, im2col_sample};
use crate::threads;
use crate::window::{Geometry, Window};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

/// Samples per backward task. Fixed (not derived from the thread count) so that the partial
/// weight gradients are summed in the same order whatever `RAYON_NUM_THREADS` is.
const BACKWARD_GROUP: usize = 4;

/// Gradients of a convolution with respect to its input, filters and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dGrads {
    /// Gradient of the input, `[n, c_in, h, w]`.
    pub dx: Array4<f32>,
    /// Gradient of the filters, `[c_out, c_in, kh, kw]`.
    pub dw: Array4<f32>,
    /// Gradient of the bias, `[c_out]`.
    pub db: Array1<f32>,
}

/// Checks a convolution's operands and places its window on the input.
///
/// The window's kernel size must be the filters' `(kh, kw)`.
pub(crate) fn conv_geometry(x: &[usize], w: &[usize], b: Option<usize>, win: &Window) -> Result<Geometry> {
    expect_nonempty("input", x)?;
    expect_nonempty("filters", w)?;
    if x[1] != w[1] {
        return Err(CnnError::ChannelMismatch { input: x.to_vec(), filters: w.to_vec() });
    }
    expect_shape("filter kernel (kh, kw) vs window", &[win.kh, win.kw], &w[2..])?;
    if let Some(len) = b {
        expect_shape("bias", &[w[0]], &[len])?;
    }
    win.geometry(x[2], x[3])
}

/// Runs `product(cols, y_i)` for every sample in parallel: `cols` is the sample's lowered
/// input (`[c_in*kh*kw, oh*ow]`) and `y_i` its output (`[c_out, oh*ow]`), already filled with
/// the bias (or zeros). The scaffold shared by the full-rank and low-rank convolutions.
pub(crate) fn lowered_forward(
    x: ArrayView4<f32>,
    g: &Geometry,
    c_out: usize,
    b: Option<ArrayView1<f32>>,
    product: impl Fn(&Array2<f32>, &mut ArrayViewMut2<f32>) + Sync,
) -> Array4<f32> {
    let (n, c_in, _, _) = x.dim();
    let (k, p) = (c_in * g.kh * g.kw, g.positions());
    threads::init();
    let mut y = Array4::zeros((n, c_out, g.oh, g.ow));
    y.axis_iter_mut(Axis(0)).into_par_iter().zip(x.axis_iter(Axis(0))).for_each_init(
        || Array2::zeros((k, p)),
        |cols, (y_i, x_i)| {
            im2col_sample(x_i, g, cols.view_mut());
            let mut y_i = y_i.into_shape_with_order((c_out, p)).expect("y sample is contiguous");
            if let Some(b) = b {
                Zip::from(y_i.rows_mut()).and(&b).for_each(|mut row, &bias| row.fill(bias));
            }
            product(cols, &mut y_i);
        },
    );
    y
}

/// Runs `step(partial, cols, dy_i, dcols)` for every sample, in parallel over fixed groups of
/// [`BACKWARD_GROUP`] samples, then col2im's `dcols` into the sample's `dx`. Returns `dx` and
/// the groups' partial results **in batch order**, so that summing them is deterministic
/// whatever the number of threads.
pub(crate) fn lowered_backward<T: Send>(
    x: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    g: &Geometry,
    init: impl Fn() -> T + Sync,
    step: impl Fn(&mut T, &Array2<f32>, ArrayView2<f32>, &mut Array2<f32>) + Sync,
) -> (Array4<f32>, Vec<T>) {
    let (n, c_in, h, w) = x.dim();
    let c_out = dy.dim().1;
    let (k, p) = (c_in * g.kh * g.kw, g.positions());
    let dy = dy.as_standard_layout();
    threads::init();
    let mut dx = threads::par_zeros(ndarray::Dim([n, c_in, h, w]));
    let partials = dx
        .axis_chunks_iter_mut(Axis(0), BACKWARD_GROUP)
        .into_par_iter()
        .zip(x.axis_chunks_iter(Axis(0), BACKWARD_GROUP))
        .zip(dy.axis_chunks_iter(Axis(0), BACKWARD_GROUP))
        .map(|((mut dx_group, x_group), dy_group)| {
            let mut partial = init();
            let mut cols = Array2::zeros((k, p));
            let mut dcols = Array2::zeros((k, p));
            for ((dx_i, x_i), dy_i) in dx_group.outer_iter_mut().zip(x_group.outer_iter()).zip(dy_group.outer_iter()) {
                let dy_i = dy_i.into_shape_with_order((c_out, p)).expect("dy sample is contiguous");
                im2col_sample(x_i, g, cols.view_mut());
                step(&mut partial, &cols, dy_i, &mut dcols);
                col2im_sample(dcols.view(), g, dx_i);
            }
            partial
        })
        .collect();
    (dx, partials)
}

/// Convolution forward: `y = w ⊛ x + b`, by im2col and one GEMM per sample.
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
    let g = conv_geometry(x.shape(), w.shape(), b.map(|b| b.len()), win)?;
    let (c_out, c_in, kh, kw) = w.dim();
    let w_mat = w.to_shape((c_out, c_in * kh * kw)).expect("filters reshape to [c_out, c_in*kh*kw]");
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    Ok(lowered_forward(x, &g, c_out, b, |cols, y_i| {
        // y_i [c_out, oh*ow] = w_mat [c_out, k] · cols [k, oh*ow] (+ the bias already in y_i)
        general_mat_mul(1.0, &w_mat, cols, beta, y_i);
    }))
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
    let g = conv_geometry(x.shape(), w.shape(), None, win)?;
    let (c_out, c_in, kh, kw) = w.dim();
    expect_shape("output gradient dy", &[x.dim().0, c_out, g.oh, g.ow], dy.shape())?;
    let k = c_in * kh * kw;
    let w_mat = w.to_shape((c_out, k)).expect("filters reshape to [c_out, c_in*kh*kw]");

    let (dx, partials) = lowered_backward(
        x,
        dy,
        &g,
        || (Array2::zeros((c_out, k)), Array1::zeros(c_out)),
        |(dw, db), cols, dy_i, dcols| {
            // dw [c_out, k] += dy_i [c_out, oh*ow] · colsᵀ [oh*ow, k]
            general_mat_mul(1.0, &dy_i, &cols.t(), 1.0, dw);
            // dcols [k, oh*ow] = w_matᵀ [k, c_out] · dy_i [c_out, oh*ow]
            general_mat_mul(1.0, &w_mat.t(), &dy_i, 0.0, dcols);
            *db += &dy_i.sum_axis(Axis(1));
        },
    );
    // Sum the groups' partial gradients in batch order: deterministic for any thread count.
    let mut dw = Array2::zeros((c_out, k));
    let mut db = Array1::zeros(c_out);
    for (dw_group, db_group) in &partials {
        dw += dw_group;
        db += db_group;
    }
    let dw = dw.into_shape_with_order(w.raw_dim()).expect("dw has the filters' size");
    Ok(Conv2dGrads { dx, dw, db })
}
