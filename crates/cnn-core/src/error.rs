//! The one error type of cnn-core: every check on user input ends here, with the shapes in the message.

use ndarray::IntoDimension;

/// What was wrong with the tensors or the window handed to a cnn-core function.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CnnError {
    /// A stride of zero would never move the window.
    #[error("stride must be at least 1, got {sh}x{sw}")]
    ZeroStride {
        /// Vertical stride.
        sh: usize,
        /// Horizontal stride.
        sw: usize,
    },
    /// A kernel with a zero side covers no pixel.
    #[error("kernel must be at least 1x1, got {kh}x{kw}")]
    ZeroKernel {
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
    },
    /// The window does not fit inside the (padded) input even once.
    #[error("kernel {kh}x{kw} is larger than the padded input {padded_h}x{padded_w} (input {h}x{w})")]
    KernelTooLarge {
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Input height with padding.
        padded_h: usize,
        /// Input width with padding.
        padded_w: usize,
    },
    /// A tensor has a zero-sized axis where data is needed (an empty batch, no channels, an empty image).
    #[error("{what} is empty: shape {shape:?}")]
    Empty {
        /// Which tensor.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The input's channel count is not the one the filters were made for.
    #[error("channel mismatch: input {input:?} has {} channels but filters {filters:?} expect {}", input[1], filters[1])]
    ChannelMismatch {
        /// Input shape (N, C, ...).
        input: Vec<usize>,
        /// Filter shape (FN, C, ...).
        filters: Vec<usize>,
    },
    /// Two tensors that must agree in shape do not.
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Which tensor.
        what: &'static str,
        /// The shape that was needed.
        expected: Vec<usize>,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// Pooling padding so wide that a window could hold only padding.
    #[error("pooling padding {pad:?} (top, bottom, left, right) must be smaller than the window {kh}x{kw}")]
    PoolPaddingTooLarge {
        /// Padding per side: top, bottom, left, right.
        pad: [usize; 4],
        /// Window height.
        kh: usize,
        /// Window width.
        kw: usize,
    },
    /// A max-pool argmax index points outside the input plane.
    #[error("argmax index {index} is outside the {h}x{w} input plane")]
    BadArgmax {
        /// The offending index.
        index: u32,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
    },
    /// Sizes so large that they overflow, or a buffer larger than the memory that can be had.
    #[error("{what} is too large: {detail}")]
    TooLarge {
        /// Which tensor or size.
        what: &'static str,
        /// The numbers involved.
        detail: String,
    },
    /// A tensor holds NaN or an infinity where finite values are needed.
    #[error("{what} holds a non-finite value ({value}) at index {index:?}")]
    NonFinite {
        /// Which tensor.
        what: &'static str,
        /// The first offending value.
        value: f32,
        /// Where it is.
        index: Vec<usize>,
    },
    /// A parameter outside its valid range (a rank policy, say).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which parameter.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A linear-algebra routine (LAPACK) failed.
    #[error("linear algebra failed: {0}")]
    Linalg(String),
}

/// `Result` with [`CnnError`].
pub type Result<T> = std::result::Result<T, CnnError>;

/// Fails with [`CnnError::ShapeMismatch`] unless `got == expected`.
pub(crate) fn expect_shape(what: &'static str, expected: &[usize], got: &[usize]) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(CnnError::ShapeMismatch { what, expected: expected.to_vec(), got: got.to_vec() })
    }
}

/// Fails with [`CnnError::Empty`] if any axis of `shape` is zero.
pub(crate) fn expect_nonempty(what: &'static str, shape: &[usize]) -> Result<()> {
    if shape.contains(&0) {
        Err(CnnError::Empty { what, shape: shape.to_vec() })
    } else {
        Ok(())
    }
}

/// Fails with [`CnnError::NonFinite`] at the first NaN or infinity of `x`.
pub(crate) fn expect_finite<D: ndarray::Dimension>(what: &'static str, x: &ndarray::ArrayView<f32, D>) -> Result<()> {
    match x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        Some((index, &value)) => Err(CnnError::NonFinite { what, value, index: index.into_dimension().slice().to_vec() }),
        None => Ok(()),
    }
}

/// The product of `sizes`, or [`CnnError::TooLarge`] if it overflows.
pub(crate) fn checked_size(what: &'static str, sizes: &[usize]) -> Result<usize> {
    sizes
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| CnnError::TooLarge { what, detail: format!("{sizes:?} overflows") })
}

/// Fails with [`CnnError::TooLarge`] when `len` values of `f32` cannot be allocated: asked
/// before the work starts, instead of the abort of a failed allocation in the middle of it.
/// Only buffers of a gibibyte or more are probed (reserved and released); smaller ones are
/// as likely to fail as any other allocation, and probing them would cost every call.
pub(crate) fn expect_allocatable(what: &'static str, len: usize) -> Result<()> {
    const PROBE_FROM: usize = (1 << 30) / std::mem::size_of::<f32>();
    if len < PROBE_FROM {
        return Ok(());
    }
    Vec::<f32>::new().try_reserve_exact(len).map_err(|_| CnnError::TooLarge {
        what,
        detail: format!("{len} values ({} MiB) cannot be allocated", len.saturating_mul(4) >> 20),
    })
}
