//! Errors of cnn-nn: building a model, feeding it, reading data, saving and loading.

use std::path::PathBuf;

/// What went wrong, with the layer, the file or the tensor named.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A layer cannot take the shape the previous one produces.
    #[error("layer {index} ({layer}) cannot take input of shape {input:?}: {reason}")]
    Build {
        /// Position of the layer in the model.
        index: usize,
        /// The layer's name.
        layer: String,
        /// The per-sample input shape it was given.
        input: Vec<usize>,
        /// Why it does not fit.
        reason: String,
    },
    /// An input or target handed to a model has the wrong shape.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The shape that was needed (`0` where any size goes).
        expected: Vec<usize>,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A label outside `0..classes`.
    #[error("label {label} at index {index} is outside 0..{classes}")]
    Label {
        /// The label.
        label: usize,
        /// Where it is in the batch or data set.
        index: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A compute-core error.
    #[error(transparent)]
    Core(#[from] cnn_core::CnnError),
    /// A malformed data file.
    #[error("{}: {reason}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the offset where it applies.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint that does not fit the model.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// Which tensor does not fit, and how.
        reason: String,
    },
    /// Training diverged.
    #[error("training diverged: loss is {loss} at epoch {epoch}, batch {batch}; try a smaller learning rate")]
    Diverged {
        /// The non-finite loss.
        loss: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Batch within the epoch (0-based).
        batch: usize,
    },
    /// A bad option value.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// `Result` with [`NnError`].
pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NnError::Io { path: path.into(), source }
    }
}
