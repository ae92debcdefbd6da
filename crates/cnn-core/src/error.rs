//! The one error type of cnn-core: every check on user input ends here, with the shapes in the message.

/// What was wrong with the tensors or the window handed to a cnn-core function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
