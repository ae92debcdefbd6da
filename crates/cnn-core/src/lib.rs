//! # cnn-core: the compute core of a readable, fast CNN library
//!
//! Convolution the way the lecture explains it and the way BLAS likes it:
//!
//! - [`Window`] / [`Geometry`]: kernel, stride, dilation and VALID / SAME / explicit padding;
//!   the one place where output sizes are computed, shared by convolution, pooling and im2col.
//! - [`im2col`] / [`col2im`]: every receptive field becomes a column of a matrix, so a whole
//!   convolution layer is **one matrix product**; col2im is its adjoint and adds overlaps.
//! - [`conv2d`] / [`conv2d_backward`]: forward and backward by im2col and BLAS GEMMs, in
//!   parallel over the batch; [`conv2d_groups`] for grouped and depthwise convolutions (the
//!   latter by direct loops); [`conv1d`] / [`conv1d_backward`] through the same code.
//!   [`Algorithm`] names how: the lowering, the implicit product (the lowered matrix read in
//!   place, never written), the direct convolution (its transpose: vectors along the
//!   filters), Winograd; `conv2d` chooses from the shape.
//! - [`max_pool2d`], [`avg_pool2d`] and their backward passes.
//! - [`lowrank`]: truncated-SVD factorisation of a filter bank, and convolution with the
//!   two thin factors.
//! - [`reference`](mod@reference): the naive nested loops everything is checked against.
//! - [`threads`]: why rayon owns the cores and BLAS runs single-threaded, on the best kernels.
//! - [`vector`]: plain loops compiled for the widest vector instructions the CPU has.
//!
//! Conventions: `f32`; activations NCHW `[n, c, h, w]`; filters `[c_out, c_in, kh, kw]` (one
//! filter is a stack of `c_in` kernels; `c_out` filters give `c_out` output channels); bias
//! `[c_out]`; 1-D signals `[n, c, l]` with filters `[c_out, c_in, k]`.
#![warn(missing_docs)]

// Links OpenBLAS (the system library) as ndarray's BLAS backend.
extern crate blas_src;

mod conv;
mod conv1d;
mod depthwise;
mod direct;
mod error;
pub mod gemm;
mod im2col;
mod implicit;
mod operands;
pub mod lowrank;
mod pool;
pub mod reference;
pub mod threads;
pub mod vector;
mod window;
mod winograd;


pub use conv::{conv2d, conv2d_activated, conv2d_backward, conv2d_backward_with, conv2d_groups, conv2d_groups_backward, conv2d_params_backward, conv2d_with, Activation, Algorithm};
pub use conv1d::{conv1d, conv1d_backward, output_len as conv1d_output_len, Conv1dGrads};
pub use error::{CnnError, Result};
pub use im2col::{col2im, im2col};
pub use operands::Conv2dGrads;
pub use pool::{avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward, pool_geometry, MaxPool};
pub use window::{Geometry, Padding, Window};

/// Test data shared by the unit tests of the convolution modules.
#[cfg(test)]
mod test_data {
    use ndarray::{Array, Array4};

    /// Values in [-1, 1] from a linear congruential sequence: the same for a seed on every
    /// machine, no dependency on a random-number crate.
    pub(crate) fn filled(shape: [usize; 4], seed: usize) -> Array4<f32> {
        let mut i = seed;
        Array::from_shape_simple_fn(shape, || {
            i = (i * 1103515245 + 12345) % 2147483648;
            (i % 2001) as f32 / 1000.0 - 1.0
        })
    }
}
