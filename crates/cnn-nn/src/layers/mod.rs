//! The layers: each file holds a family, each layer a forward/backward pair.

mod activation;
mod conv;
mod dense;
mod lowrank;
mod pool;
mod shape;

/// A window as the summary writes it: `f=3,s=1`, or `f=3x5,s=1x2` when not square.
pub(crate) fn window_label(w: &cnn_core::Window) -> String {
    if (w.kh, w.sh) == (w.kw, w.sw) {
        format!("f={},s={}", w.kh, w.sh)
    } else {
        format!("f={}x{},s={}x{}", w.kh, w.kw, w.sh, w.sw)
    }
}

pub(crate) use activation::softmax_rows;
pub use activation::{LeakyReLU, ReLU, Sigmoid, Softmax, Tanh};
pub use conv::{Conv1d, Conv2d};
pub use dense::Dense;
pub use lowrank::LowRankConv2d;
pub use pool::{AvgPool2d, GlobalAvgPool2d, MaxPool2d};
pub use shape::{Dropout, Flatten};
