//! The layers: each file holds a family, each layer a forward/backward pair.

mod activation;
mod block;
mod chain;
mod conv;
mod dense;
mod fuse;
mod lowrank;
mod norm;
mod pool;
mod separable;
mod shape;

pub(crate) use activation::softmax_rows;
use cnn_core::vector::widest;
use ndarray::{ArrayD, ArrayViewD};
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
    a.par_chunks_mut(CHUNK).for_each(|a| {
        widest(#[inline(always)] || {
            for v in a {
                f(v);
            }
        })
    });
}

/// `f(a_i, b_i)` for every pair of values of two slices of one length, as [`par_update`].
pub(crate) fn par_update2<A: Send, B: Send>(a: &mut [A], b: &mut [B], f: impl Fn(&mut A, &mut B) + Sync) {
    assert_eq!(a.len(), b.len(), "element-wise operands of different lengths");
    a.par_chunks_mut(CHUNK).zip(b.par_chunks_mut(CHUNK)).for_each(|(a, b)| {
        widest(#[inline(always)] || {
            for (a, b) in a.iter_mut().zip(b) {
                f(a, b);
            }
        })
    });
}

/// Chunks of `chunk` values per parallel task: as many as make about [`CHUNK`] values, one at
/// least. A BatchNorm's chunk is a plane (one sample's channel), which for flat features
/// (`[n, c]`) is a single value: a task per plane would be all overhead (with one, a
/// BatchNorm of `[128, 512]`, 65,536 values, took 0.24 ms in evaluation; now 0.08–0.14).
fn chunks_per_task(chunk: usize) -> usize {
    (CHUNK / chunk.max(1)).max(1)
}

/// `f(j, a_j)` for the chunks `a_j` of `chunk` values of `a` (the last one may be shorter), in
/// parallel tasks of whole chunks ([`chunks_per_task`]), each task's loop compiled for the
/// widest vector instructions of the CPU.
pub(crate) fn par_chunks_update<A: Send>(a: &mut [A], chunk: usize, f: impl Fn(usize, &mut [A]) + Sync) {
    let (chunk, per_task) = (chunk.max(1), chunks_per_task(chunk));
    a.par_chunks_mut(chunk * per_task).enumerate().for_each(|(task, a)| {
        widest(#[inline(always)] || {
            for (k, a) in a.chunks_mut(chunk).enumerate() {
                f(task * per_task + k, a);
            }
        });
    });
}

/// `y_i = f(x_i)` into a new vector, chunk by chunk of `chunk` values, in parallel tasks of
/// whole chunks, each task's loop compiled for the widest vector instructions of the CPU:
/// `per_chunk(j)` gives the function of chunk `j` (one BatchNorm plane's constants, say). The
/// new values are written straight into fresh memory, never zeroed first (zeroing a
/// multi-megabyte activation on one core was a few percent of a ResNet-20 step).
pub(crate) fn par_map<A: Sync, T: Send, G: Fn(&A) -> T>(x: &[A], chunk: usize, per_chunk: impl Fn(usize) -> G + Sync) -> Vec<T> {
    let (chunk, per_task) = (chunk.max(1), chunks_per_task(chunk));
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()].par_chunks_mut(chunk * per_task).zip(x.par_chunks(chunk * per_task)).enumerate().for_each(|(task, (y, x))| {
        widest(#[inline(always)] || {
            for (k, (y, x)) in y.chunks_mut(chunk).zip(x.chunks(chunk)).enumerate() {
                let f = per_chunk(task * per_task + k);
                for (y, x) in y.iter_mut().zip(x) {
                    y.write(f(x));
                }
            }
        });
    });
    // SAFETY: the chunks of `y` cover its first x.len() values, and each chunk was zipped with
    // the chunk of `x` of the same length: every value was written above.
    unsafe { y.set_len(x.len()) };
    y
}

/// A copy made by all of rayon's threads (activations are megabytes).
pub(crate) fn par_clone(x: ArrayViewD<f32>) -> ArrayD<f32> {
    match x.as_slice() {
        Some(src) => ArrayD::from_shape_vec(x.raw_dim(), par_map(src, CHUNK, |_| |&v: &f32| v)).expect("same size"),
        None => x.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value written, by its own chunk's function, for a length that is not a whole
    /// number of chunks; and a copy over several chunks is the tensor.
    #[test]
    fn par_map_writes_every_value_with_its_chunks_function() {
        let x: Vec<f32> = (0..2 * CHUNK + 5).map(|i| i as f32).collect();
        let y = par_map(&x, CHUNK, |chunk| move |&v: &f32| -v - 1e6 * chunk as f32);
        assert_eq!(y.len(), x.len());
        for (i, (&x, &y)) in x.iter().zip(&y).enumerate() {
            assert_eq!(y, -x - 1e6 * (i / CHUNK) as f32, "value {i}");
        }
        let t = ArrayD::from_shape_fn(vec![3, CHUNK + 7], |i| (i[0] * 31 + i[1]) as f32 * 0.5);
        assert_eq!(par_clone(t.view()), t);
        assert!(par_map(&[] as &[f32], CHUNK, |_| |&v: &f32| v).is_empty());
    }
}
