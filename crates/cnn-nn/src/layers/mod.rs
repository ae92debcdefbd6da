//! The layers: each file holds a family, each layer a forward/backward pair.

mod activation;
mod block;
mod chain;
mod conv;
mod dense;
mod lowrank;
mod norm;
mod pool;
mod separable;
mod shape;

pub(crate) use activation::softmax_rows;

/// `x` in standard (row-major) layout, copied only when it is not already: the layers that
/// walk raw slices take their input through it.
pub(crate) fn standard(x: ndarray::ArrayD<f32>) -> ndarray::ArrayD<f32> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}
pub use activation::{LeakyReLU, ReLU, Sigmoid, Softmax, Tanh};
pub use block::{Concat, Residual, SubsampleZeroPad};
pub use chain::Chain;
pub use conv::{Conv1d, Conv2d};
pub use dense::Dense;
pub use lowrank::LowRankConv2d;
pub use norm::{BatchNorm, LocalResponseNorm};
pub use pool::{AvgPool2d, GlobalAvgPool2d, MaxPool2d};
pub use separable::SeparableConv2d;
pub use shape::{Dropout, Flatten};
