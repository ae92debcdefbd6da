//! Errors of cnn-nn: building a model, feeding it, reading data, saving and loading.

use std::path::PathBuf;

/// What went wrong, with the layer, the file or the tensor named.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A layer cannot take the shape the previous one produces.
    #[error("layer {path} ({layer}) cannot take input of shape {input:?}: {reason}")]
    Build {
        /// Where the layer is: its index in the model, then its path inside blocks (`3.main.0`).
        path: String,
        /// The layer's name.
        layer: String,
        /// The per-sample input shape it was given.
        input: Vec<usize>,
        /// Why it does not fit.
        #[source]
        reason: crate::layer::BuildError,
    },
    /// Two parameters of a model have the same name (a composite layer that names two
    /// children alike): checkpoints could not tell them apart.
    #[error("two parameters are named `{name}`: every parameter needs a unique name (give a composite layer's children distinct names)")]
    DuplicateName {
        /// The name used twice.
        name: String,
    },
    /// A NaN or an infinity where numbers are needed: in a parameter, a data sample, a loss.
    #[error("{what} is not finite ({value}){context}")]
    NonFinite {
        /// Which tensor or value (`parameter \`3.weight\``, `training sample 17`, ...).
        what: String,
        /// The first offending value.
        value: f32,
        /// What it means and what to do, starting with `: ` (or empty).
        context: String,
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
    /// Training diverged: the loss became non-finite, or grew far beyond where it started
    /// (the rule is [`crate::train::Divergence`]'s).
    #[error("training diverged at epoch {epoch}, batch {batch}: {reason}; try a smaller learning rate")]
    Diverged {
        /// The loss of the batch that stopped training.
        loss: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Batch within the epoch (0-based).
        batch: usize,
        /// Which rule it broke, with the numbers.
        reason: String,
    },
    /// A bad option value.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Data-parallel training failed as a team: another rank failed, or the ranks' weights
    /// parted (see [`crate::distributed`]).
    #[error("data-parallel training: {0}")]
    Team(String),
}

/// `Result` with [`NnError`].
pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NnError::Io { path: path.into(), source }
    }
}
