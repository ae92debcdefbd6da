//! 1-D convolution through the same machinery as 2-D.
//!
//! A 1-D signal `[n, c, l]` is an image one pixel high: `[n, c, 1, l]`, and a 1-D filter
//! `[c_out, c, k]` is a `1 x k` kernel. So a 1-D window is simply a [`Window`] one row high
//! ([`Window::row`]), with its stride and padding along the row; the lowering, the GEMM and
//! col2im are the very same code.

use crate::conv::{conv2d, conv2d_backward};
use crate::error::{CnnError, Result};
use crate::window::Window;
use ndarray::{Array1, Array3, ArrayView1, ArrayView3, Axis};

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

/// The output length of a 1-D window on a signal of length `l`.
///
/// # Errors
/// A window that is not one row high (a kernel height, vertical stride or padding that would
/// add rows), and the errors of [`Window::geometry`].
pub fn output_len(win: &Window, l: usize) -> Result<usize> {
    let g = win.geometry(1, l)?;
    if win.kh != 1 || win.sh != 1 || g.oh != 1 {
        let reason = format!("a 1-D window must be one row high, without vertical stride or padding: {win:?}");
        return Err(CnnError::Invalid { what: "1-D window", reason });
    }
    Ok(g.ow)
}

/// Shape checks that only make sense in 1-D (the rest is [`conv2d`]'s).
fn check_rank3(x: &ArrayView3<f32>, w: &ArrayView3<f32>, win: &Window) -> Result<()> {
    if x.dim().1 != w.dim().1 {
        return Err(CnnError::ChannelMismatch { input: x.shape().to_vec(), filters: w.shape().to_vec() });
    }
    output_len(win, x.dim().2).map(|_| ())
}

/// 1-D convolution forward.
///
/// # Shapes
/// - `x`: `[n, c_in, l]`
/// - `w`: `[c_out, c_in, k]`, with a window `Window::row(k)`
/// - `b`: `[c_out]` (optional)
/// - returns: `[n, c_out, ol]`
///
/// # Errors
/// As [`conv2d`], and a window that is not one row high.
///
/// ```
/// use cnn_core::{conv1d, Padding, Window};
/// use ndarray::Array3;
/// let x = Array3::<f32>::ones((1, 2, 10));
/// let w = Array3::<f32>::ones((4, 2, 3));
/// let y = conv1d(x.view(), w.view(), None, &Window::row(3).strides(1, 2).padding(Padding::Same)).unwrap();
/// assert_eq!(y.dim(), (1, 4, 5));
/// ```
pub fn conv1d(x: ArrayView3<f32>, w: ArrayView3<f32>, b: Option<ArrayView1<f32>>, win: &Window) -> Result<Array3<f32>> {
    check_rank3(&x, &w, win)?;
    let y = conv2d(x.insert_axis(Axis(2)), w.insert_axis(Axis(2)), b, win)?;
    Ok(y.remove_axis(Axis(2)))
}

/// 1-D convolution backward.
///
/// # Shapes
/// - `x`: `[n, c_in, l]`, `w`: `[c_out, c_in, k]`, `dy`: `[n, c_out, ol]`
/// - returns `dx` like `x`, `dw` like `w`, `db`: `[c_out]`
///
/// # Errors
/// As [`conv2d_backward`], and a window that is not one row high.
pub fn conv1d_backward(x: ArrayView3<f32>, w: ArrayView3<f32>, dy: ArrayView3<f32>, win: &Window) -> Result<Conv1dGrads> {
    check_rank3(&x, &w, win)?;
    let g = conv2d_backward(x.insert_axis(Axis(2)), w.insert_axis(Axis(2)), dy.insert_axis(Axis(2)), win)?;
    Ok(Conv1dGrads { dx: g.dx.remove_axis(Axis(2)), dw: g.dw.remove_axis(Axis(2)), db: g.db })
}
