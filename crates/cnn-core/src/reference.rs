//! The naive reference: convolution as plain nested loops, forward and backward.
//!
//! Ground truth for the tests and the baseline for the benchmarks: simple and obviously right,
//! never fast. Padding is handled by skipping taps that land outside the image.

use crate::operands::{conv_geometry, Conv2dGrads};
use crate::error::{expect_shape, Result};
use crate::window::{Geometry, Window};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};

/// The input pixel under tap `(ky, kx)` of the window at output `(oy, ox)`, if inside the image.
fn tap(g: &Geometry, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let iy = (oy * g.sh + ky * g.dh).checked_sub(g.pad_top)?;
    let ix = (ox * g.sw + kx * g.dw).checked_sub(g.pad_left)?;
    (iy < g.h && ix < g.w).then_some((iy, ix))
}

/// Naive convolution forward: `y[i, f, oy, ox] = b[f] + Σ_{c, ky, kx} w[f, c, ky, kx] · x[i, c, oy·sh + ky − pt, ox·sw + kx − pl]`.
///
/// # Shapes
/// As [`crate::conv2d`].
///
/// # Errors
/// As [`crate::conv2d`].
pub fn conv2d(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, win: &Window) -> Result<Array4<f32>> {
    conv2d_groups(x, w, b, win, 1)
}

/// Naive grouped convolution forward: filter `f` of group `f / (c_out / groups)` reads the
/// input channels `group · c_in_g + c` for `c` in `0..c_in_g` (`c_in_g = w.dim().1`); taps
/// dilated by `(dh, dw)`.
///
/// # Shapes
/// As [`crate::conv2d_groups`].
///
/// # Errors
/// As [`crate::conv2d_groups`].
pub fn conv2d_groups(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, win: &Window, groups: usize) -> Result<Array4<f32>> {
    let g = conv_geometry(x.shape(), w.shape(), b.map(|b| b.len()), win, groups)?;
    let n = x.dim().0;
    let (c_out, c_in) = (w.dim().0, w.dim().1);
    let first_channel = |f: usize| f / (c_out / groups) * c_in;
    let mut y = Array4::zeros((n, c_out, g.oh, g.ow));
    for i in 0..n {
        for f in 0..c_out {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut sum = b.map_or(0.0, |b| b[f]);
                    for c in 0..c_in {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some((iy, ix)) = tap(&g, oy, ox, ky, kx) {
                                    sum += w[[f, c, ky, kx]] * x[[i, first_channel(f) + c, iy, ix]];
                                }
                            }
                        }
                    }
                    y[[i, f, oy, ox]] = sum;
                }
            }
        }
    }
    Ok(y)
}

/// Naive convolution backward: the same loops, each multiply-add sending its gradient back
/// to both factors.
///
/// # Shapes
/// As [`crate::conv2d_backward`].
///
/// # Errors
/// As [`crate::conv2d_backward`].
pub fn conv2d_backward(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, win: &Window) -> Result<Conv2dGrads> {
    conv2d_groups_backward(x, w, dy, win, 1)
}

/// Naive grouped convolution backward: the loops of [`conv2d_groups`], each multiply-add
/// sending its gradient back to both factors.
///
/// # Shapes
/// As [`crate::conv2d_groups_backward`].
///
/// # Errors
/// As [`crate::conv2d_groups_backward`].
pub fn conv2d_groups_backward(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, win: &Window, groups: usize) -> Result<Conv2dGrads> {
    let g = conv_geometry(x.shape(), w.shape(), None, win, groups)?;
    let n = x.dim().0;
    let (c_out, c_in) = (w.dim().0, w.dim().1);
    let first_channel = |f: usize| f / (c_out / groups) * c_in;
    expect_shape("output gradient dy", &[n, c_out, g.oh, g.ow], dy.shape())?;
    let mut dx = Array4::zeros(x.raw_dim());
    let mut dw = Array4::zeros(w.raw_dim());
    let mut db = Array1::zeros(c_out);
    for i in 0..n {
        for f in 0..c_out {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let d = dy[[i, f, oy, ox]];
                    db[f] += d;
                    for c in 0..c_in {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some((iy, ix)) = tap(&g, oy, ox, ky, kx) {
                                    let ci = first_channel(f) + c;
                                    dw[[f, c, ky, kx]] += d * x[[i, ci, iy, ix]];
                                    dx[[i, ci, iy, ix]] += d * w[[f, c, ky, kx]];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Conv2dGrads { dx, dw, db })
}
