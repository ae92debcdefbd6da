//! What a convolution's operands must satisfy, and what its backward returns: shared by the
//! fast path ([`crate::conv2d`]) and the naive reference ([`crate::reference`]), which must not
//! depend on each other.

use crate::error::{checked_size, expect_nonempty, expect_shape, CnnError, Result};
use crate::window::{Geometry, Window};
use ndarray::{Array1, Array4};

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
/// With `groups`, the input's channels split into `groups` equal parts, each convolved with
/// its share of the filters: the filters are `[c_out, c_in / groups, kh, kw]` and `c_out`
/// divides by `groups` too. The window's kernel size must be the filters' `(kh, kw)`; the
/// output and the lowered matrix of one sample (`c_in·kh·kw x oh·ow`) must have sizes that do
/// not overflow.
pub(crate) fn conv_geometry(x: &[usize], w: &[usize], b: Option<usize>, win: &Window, groups: usize) -> Result<Geometry> {
    expect_nonempty("input", x)?;
    expect_nonempty("filters", w)?;
    if groups == 0 || x[1] % groups != 0 || w[0] % groups != 0 {
        let reason = format!("{groups} groups must divide the {} input channels and the {} filters", x[1], w[0]);
        return Err(CnnError::Invalid { what: "groups", reason });
    }
    if groups == 1 && x[1] != w[1] {
        return Err(CnnError::ChannelMismatch { input: x.to_vec(), filters: w.to_vec() });
    }
    if x[1] != w[1] * groups {
        let reason = format!("input {x:?} has {} channels, filters {w:?} take {} in each of {groups} groups", x[1], w[1]);
        return Err(CnnError::Invalid { what: "groups", reason });
    }
    expect_shape("filter kernel (kh, kw) vs window", &[win.kh, win.kw], &w[2..])?;
    if let Some(len) = b {
        expect_shape("bias", &[w[0]], &[len])?;
    }
    let g = win.geometry(x[2], x[3])?;
    checked_size("lowered matrix of one sample", &[w[1], w[2], w[3], g.oh, g.ow])?;
    checked_size("output", &[x[0], w[0], g.oh, g.ow])?;
    Ok(g)
}
