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
