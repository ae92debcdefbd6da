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
use cnn_core::vector::widest;
use ndarray::ArrayD;
use rayon::prelude::*;

/// `x` in standard (row-major) layout, copied only when it is not already: the layers that
/// walk raw slices take their input through it.
pub(crate) fn standard(x: ArrayD<f32>) -> ArrayD<f32> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}

/// Values per task of the element-wise loops: 64 KiB of `f32`, enough to pay for rayon's
/// scheduling, few enough that one activation of a batch keeps both cores busy.
pub(crate) const CHUNK: usize = 1 << 14;

/// `f(v)` for every value, in parallel chunks, each chunk's loop compiled for the widest
/// vector instructions of the CPU ([`cnn_core::vector::widest`]).
pub(crate) fn par_update<A: Send>(a: &mut [A], f: impl Fn(&mut A) + Sync) {
    a.par_chunks_mut(CHUNK).for_each(|a| widest(|| a.iter_mut().for_each(&f)));
}

/// `f(a_i, b_i)` for every pair of values of two slices of one length, as [`par_update`].
pub(crate) fn par_update2<A: Send, B: Send>(a: &mut [A], b: &mut [B], f: impl Fn(&mut A, &mut B) + Sync) {
    assert_eq!(a.len(), b.len(), "element-wise operands of different lengths");
    a.par_chunks_mut(CHUNK).zip(b.par_chunks_mut(CHUNK)).for_each(|(a, b)| widest(|| a.iter_mut().zip(b).for_each(|(a, b)| f(a, b))));
}

/// A copy made by all of rayon's threads (activations are megabytes).
pub(crate) fn par_clone(x: &ArrayD<f32>) -> ArrayD<f32> {
    match x.as_slice() {
        Some(src) => {
            let mut data = Vec::with_capacity(src.len());
            data.par_extend(src.par_iter().copied());
            ArrayD::from_shape_vec(x.raw_dim(), data).expect("same size")
        }
        None => x.clone(),
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
