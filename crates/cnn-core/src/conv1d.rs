//! 1-D convolution through the same machinery as 2-D.
//!
//! A 1-D signal `[n, c, l]` is an image one pixel high: `[n, c, 1, l]`, and a 1-D filter
//! `[c_out, c, k]` is a `1 x k` kernel. The only differences from 2-D are that there is one
//! spatial axis to stride and pad; the lowering, the GEMM and col2im are the very same code.

use crate::conv::{conv2d, conv2d_backward};
use crate::error::{CnnError, Result};
use crate::window::{Padding, Window};
use ndarray::{Array1, Array3, ArrayView1, ArrayView3, Axis};

/// Padding of the one spatial axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding1d {
    /// No padding.
    #[default]
    Valid,
    /// TensorFlow's SAME rule (see [`Padding::Same`]).
    Same,
    /// Explicit padding at the start and the end.
    Explicit {
        /// Values added before the signal.
        left: usize,
        /// Values added after the signal.
        right: usize,
    },
}

/// A 1-D sliding window: kernel length, stride and padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window1d {
    /// Kernel length.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding rule.
    pub padding: Padding1d,
}

impl Window1d {
    /// A window of length `k`, stride 1, no padding.
    pub fn new(k: usize) -> Self {
        Window1d { k, stride: 1, padding: Padding1d::Valid }
    }

    /// The stride.
    pub fn stride(self, stride: usize) -> Self {
        Window1d { stride, ..self }
    }

    /// The padding rule.
    pub fn padding(self, padding: Padding1d) -> Self {
        Window1d { padding, ..self }
    }

    /// The same window as a 2-D one, one row high.
    pub fn to_2d(&self) -> Window {
        let padding = match self.padding {
            Padding1d::Valid => Padding::Valid,
            // On an axis of length 1 with a kernel of 1, SAME adds nothing: only the width is padded.
            Padding1d::Same => Padding::Same,
            Padding1d::Explicit { left, right } => Padding::Explicit { top: 0, bottom: 0, left, right },
        };
        Window::new(1, self.k).strides(1, self.stride).padding(padding)
    }

    /// Output length for an input of length `l`.
    ///
    /// # Errors
    /// As [`Window::geometry`].
    pub fn output_len(&self, l: usize) -> Result<usize> {
        Ok(self.to_2d().geometry(1, l)?.ow)
    }
}

/// Gradients of a 1-D convolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv1dGrads {
    /// Gradient of the input, `[n, c_in, l]`.
    pub dx: Array3<f32>,
    /// Gradient of the filters, `[c_out, c_in, k]`.
    pub dw: Array3<f32>,
    /// Gradient of the bias, `[c_out]`.
    pub db: Array1<f32>,
}

/// Shape checks that only make sense in 1-D (the rest is [`conv2d`]'s).
fn check_rank3(x: &ArrayView3<f32>, w: &ArrayView3<f32>) -> Result<()> {
    if x.dim().1 != w.dim().1 {
        return Err(CnnError::ChannelMismatch { input: x.shape().to_vec(), filters: w.shape().to_vec() });
    }
    Ok(())
}

/// 1-D convolution forward.
///
/// # Shapes
/// - `x`: `[n, c_in, l]`
/// - `w`: `[c_out, c_in, k]`
/// - `b`: `[c_out]` (optional)
/// - returns: `[n, c_out, ol]`
///
/// # Errors
/// As [`conv2d`].
pub fn conv1d(x: ArrayView3<f32>, w: ArrayView3<f32>, b: Option<ArrayView1<f32>>, win: &Window1d) -> Result<Array3<f32>> {
    check_rank3(&x, &w)?;
    let y = conv2d(x.insert_axis(Axis(2)), w.insert_axis(Axis(2)), b, &win.to_2d())?;
    Ok(y.remove_axis(Axis(2)))
}

/// 1-D convolution backward.
///
/// # Shapes
/// - `x`: `[n, c_in, l]`, `w`: `[c_out, c_in, k]`, `dy`: `[n, c_out, ol]`
/// - returns `dx` like `x`, `dw` like `w`, `db`: `[c_out]`
///
/// # Errors
/// As [`conv2d_backward`].
pub fn conv1d_backward(x: ArrayView3<f32>, w: ArrayView3<f32>, dy: ArrayView3<f32>, win: &Window1d) -> Result<Conv1dGrads> {
    check_rank3(&x, &w)?;
    let g = conv2d_backward(x.insert_axis(Axis(2)), w.insert_axis(Axis(2)), dy.insert_axis(Axis(2)), &win.to_2d())?;
    Ok(Conv1dGrads { dx: g.dx.remove_axis(Axis(2)), dw: g.dw.remove_axis(Axis(2)), db: g.db })
}
