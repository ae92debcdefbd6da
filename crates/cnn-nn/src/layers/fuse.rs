//! Fusion: layers that follow one another computed in one pass.
//!
//! **Inference.** In evaluation mode a convolution and the `BatchNorm` after it are one
//! convolution: BatchNorm's `y = x·scale + shift` per channel folds into the filters (`w·scale`)
//! and the bias (`b·scale + shift`); and a `ReLU` after them is applied as the convolution
//! stores its outputs ([`cnn_core::Activation`]): one pass over the output where the three
//! layers made three. PyTorch's `fuse_conv_bn_eval` and oneDNN's post-ops do the same.
//!
//! A [`Chain`](super::Chain) runs its inference through [`forward`]; a residual block applies
//! a ReLU right after its sum in the sum's pass ([`leading_relu`]). A fused result is the
//! unfused one within f32 rounding: the folded filters are rounded once more.
//!
//! **Training** normalises with each batch's own statistics, so nothing folds into the
//! filters; but a `ReLU` right after a `BatchNorm` is applied in the BatchNorm's normalising
//! pass, and its gradient mask recomputed in the BatchNorm's backward from the input it keeps
//! ([`relu_in_norm`]): one pass and no mask where the two layers made two passes and stored a
//! byte per value. A residual block's sum and the ReLU after it are one pass too
//! ([`leading_relu_mut`]). The results are the layers', bit for bit.
//!
//! A `ReLU` right before a `MaxPool2d` trains **after** it ([`relu_before_pool`]): the two
//! commute, `max(relu(a), relu(b)) = relu(max(a, b))`, so the ReLU and its gradient run on
//! the pooled values (a quarter of them for a 2x2 pool) instead of the whole image. Where a
//! window's largest value is positive the pool keeps the same value and routes the gradient
//! to the same place either way; where it is not, the ReLU's gradient is zero over the whole
//! window either way. The results are the layers' value for value: only the sign of a zero
//! gradient, and which pixel of such a window carries a NaN gradient, can differ.

use super::{BatchNorm, Conv2d, MaxPool2d, ReLU};
use crate::layer::Layer;
use cnn_core::Activation;
use ndarray::{ArrayD, ArrayViewD};
use std::any::Any;

/// One step of a chain's inference: a layer on its own, or a convolution with the BatchNorm
/// and the ReLU after it.
pub(crate) enum Step<'a> {
    Layer(&'a dyn Layer),
    Conv { conv: &'a Conv2d, norm: Option<&'a BatchNorm>, activation: Activation },
}

/// `layer` as a `T`, if it is one.
fn as_layer<T: Layer>(layer: &dyn Layer) -> Option<&T> {
    (layer as &dyn Any).downcast_ref::<T>()
}

/// Inference through `layers` (see [`steps`]).
pub(crate) fn forward(layers: &[Box<dyn Layer>], x: ArrayD<f32>) -> ArrayD<f32> {
    steps(layers).iter().fold(x, |x, step| step.forward(x))
}

/// The training forward through `layers`, each `BatchNorm` with the `ReLU` right after it in
/// one pass ([`relu_in_norm`]), each `ReLU` right before a `MaxPool2d` after the pool
/// ([`relu_before_pool`]).
pub(crate) fn forward_train(layers: &mut [Box<dyn Layer>], mut x: ArrayD<f32>) -> ArrayD<f32> {
    for i in 0..layers.len() {
        if runs_inside(layers, i) {
            continue;
        }
        x = if relu_in_norm(layers, i + 1) {
            let norm = (layers[i].as_mut() as &mut dyn Any).downcast_mut::<BatchNorm>().expect("a ReLU in a norm follows a BatchNorm");
            norm.forward_train_relu(x)
        } else if i > 0 && relu_before_pool(layers, i - 1) {
            let (before, pool) = layers.split_at_mut(i);
            before[i - 1].forward_train(pool[0].forward_train(x))
        } else {
            layers[i].forward_train(x)
        };
    }
    x
}

/// The backward of layer `i` in a chain's training, for a layer that does not run inside
/// another ([`runs_inside`]): a `MaxPool2d` with a `ReLU` before it takes the ReLU's gradient
/// first, as its forward ran the ReLU last.
pub(crate) fn backward(layers: &mut [Box<dyn Layer>], i: usize, dy: ArrayD<f32>) -> ArrayD<f32> {
    let dy = if i > 0 && relu_before_pool(layers, i - 1) { layers[i - 1].backward(dy) } else { dy };
    layers[i].backward(dy)
}

/// Whether the training runs layer `i` inside a neighbour: a `ReLU` in the `BatchNorm` before
/// it ([`relu_in_norm`]) or after the `MaxPool2d` after it ([`relu_before_pool`]). A chain
/// skips such a layer both ways.
pub(crate) fn runs_inside(layers: &[Box<dyn Layer>], i: usize) -> bool {
    relu_in_norm(layers, i) || relu_before_pool(layers, i)
}

/// Whether layer `i` is a `ReLU` right after a `BatchNorm`: in training the BatchNorm applies
/// it ([`BatchNorm::forward_train_relu`]) and takes its gradient mask into its backward, and a
/// chain skips it both ways.
pub(crate) fn relu_in_norm(layers: &[Box<dyn Layer>], i: usize) -> bool {
    i > 0 && i < layers.len() && as_layer::<ReLU>(layers[i].as_ref()).is_some() && as_layer::<BatchNorm>(layers[i - 1].as_ref()).is_some()
}

/// Whether layer `i` is a `ReLU` right before a `MaxPool2d` (and not in a `BatchNorm`): in
/// training it runs after the pool, on the pooled values, and its gradient before the pool's.
pub(crate) fn relu_before_pool(layers: &[Box<dyn Layer>], i: usize) -> bool {
    i + 1 < layers.len() && !relu_in_norm(layers, i) && as_layer::<ReLU>(layers[i].as_ref()).is_some() && as_layer::<MaxPool2d>(layers[i + 1].as_ref()).is_some()
}

/// The `ReLU` that `layers` start with, if they do, and the layers after it (for a residual
/// block's training: the ReLU after the sum in the sum's pass) — unless a max pool follows
/// it: the chain's backward takes that ReLU's gradient before the pool's
/// ([`relu_before_pool`]), so its forward must run it after the pool.
pub(crate) fn leading_relu_mut(layers: &mut [Box<dyn Layer>]) -> Option<(&mut ReLU, &mut [Box<dyn Layer>])> {
    if relu_before_pool(layers, 0) {
        return None;
    }
    let (first, rest) = layers.split_first_mut()?;
    Some(((first.as_mut() as &mut dyn Any).downcast_mut::<ReLU>()?, rest))
}

/// Whether `layers` start with a `ReLU`, and the layers after it.
pub(crate) fn leading_relu(layers: &[Box<dyn Layer>]) -> (bool, &[Box<dyn Layer>]) {
    match layers.split_first() {
        Some((first, rest)) if as_layer::<ReLU>(first.as_ref()).is_some() => (true, rest),
        _ => (false, layers),
    }
}

/// The steps of `layers`, in order: each `Conv2d` with the `BatchNorm` right after it, if
/// there is one, and a `ReLU` after those, if there is one, as a single step.
pub(crate) fn steps(layers: &[Box<dyn Layer>]) -> Vec<Step<'_>> {
    let mut steps = vec![];
    let mut rest = layers;
    while let Some((first, tail)) = rest.split_first() {
        let Some(conv) = as_layer::<Conv2d>(first.as_ref()) else {
            steps.push(Step::Layer(first.as_ref()));
            rest = tail;
            continue;
        };
        let norm = tail.first().and_then(|l| as_layer::<BatchNorm>(l.as_ref()));
        let tail = &tail[usize::from(norm.is_some())..];
        let relu = tail.first().is_some_and(|l| as_layer::<ReLU>(l.as_ref()).is_some());
        rest = &tail[usize::from(relu)..];
        let activation = if relu { Activation::Relu } else { Activation::Identity };
        steps.push(Step::Conv { conv, norm, activation });
    }
    steps
}

impl Step<'_> {
    /// The step's inference on `x`.
    pub(crate) fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        match self {
            Step::Layer(layer) => layer.forward(x),
            Step::Conv { .. } => self.forward_view(x.view()),
        }
    }

    /// The step's inference on a view of `x` (see [`Layer::forward_view`]).
    pub(crate) fn forward_view(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        match *self {
            Step::Layer(layer) => layer.forward_view(x),
            Step::Conv { conv, norm, activation } => conv.forward_fused(x, norm.map(BatchNorm::affine).as_ref(), activation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Init, ModelRng};
    use crate::layers::Chain;
    use ndarray::Dimension;
    use rand::SeedableRng;

    fn same_bits(a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()), "{what}, value {i}: {x} against {y}");
        }
    }

    /// A BatchNorm of three channels with γ and β that make about half of its outputs negative.
    fn norm() -> BatchNorm {
        let mut bn = BatchNorm::new();
        bn.build(&[3], &mut Init { rng: &mut ModelRng::seed_from_u64(0) }).unwrap();
        let mut params = bn.params_mut();
        params[0].1.value = ndarray::arr1(&[1.5f32, -0.5, 2.0]).into_dyn();
        params[1].1.value = ndarray::arr1(&[0.25f32, 0.0, -1.0]).into_dyn();
        bn
    }

    /// Chains with a ReLU after a BatchNorm (last, and inside) train as the layers one by one,
    /// bit for bit, on images and on flat features: outputs, input gradients (by `backward`
    /// and by `backward_view`), the BatchNorms' parameter gradients; NaN kept.
    #[test]
    fn a_relu_in_a_batchnorm_trains_as_the_two_layers() {
        let images = ArrayD::from_shape_fn(vec![2, 3, 4, 5], |i| ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 11) as f32 - 5.0);
        let features = ArrayD::from_shape_fn(vec![40, 3], |i| ((i[0] * 7 + i[1] * 5) % 11) as f32 - 5.0);
        for (case, (mut x, with_norm_after)) in [(images.clone(), false), (images, true), (features, false)].into_iter().enumerate() {
            // a broken input: its channel is NaN throughout, and stays NaN through the ReLU;
            // NaN gradients (one in channel 0) reach dx where the unit was on or off
            let last = x.raw_dim()[0] - 1;
            x.index_axis_mut(ndarray::Axis(0), last).index_axis_mut(ndarray::Axis(0), 1).iter_mut().for_each(|v| *v = f32::NAN);
            let mut dy = ArrayD::from_shape_fn(x.raw_dim(), |i| ((i[0] + i[1] * 2 + i.slice().iter().skip(2).sum::<usize>() * 3) % 7) as f32 / 7.0 - 0.4);
            dy.iter_mut().step_by(3 * 7).for_each(|v| *v = f32::NAN);
            for by_view in [false, true] {
                let mut chain = Chain::new().add(norm()).add(ReLU::new());
                let (mut alone_norm, mut alone_relu, mut alone_after) = (norm(), ReLU::new(), norm());
                if with_norm_after {
                    chain = chain.add(norm());
                }
                assert!(relu_in_norm(chain.layers(), 1) && !relu_in_norm(chain.layers(), 0) && !relu_in_norm(chain.layers(), 2));
                let y = chain.forward_train(x.clone());
                let mut want = alone_relu.forward_train(alone_norm.forward_train(x.clone()));
                if with_norm_after {
                    want = alone_after.forward_train(want);
                }
                same_bits(&y, &want, &format!("case {case}: output"));
                let negative = alone_norm.forward(x.clone()).iter().filter(|&&v| v < 0.0).count();
                assert!(negative > x.len() / 4 && negative < x.len() * 3 / 4, "case {case}: {negative} of {} negative", x.len());
                assert!(y.index_axis(ndarray::Axis(1), 1).iter().all(|v| v.is_nan()), "case {case}: NaN kept");
                let dx = if by_view { chain.backward_view(dy.view()) } else { chain.backward(dy.clone()) };
                let mut d = dy.clone();
                if with_norm_after {
                    d = alone_after.backward(d);
                }
                let want = alone_norm.backward(alone_relu.backward(d));
                same_bits(&dx, &want, &format!("case {case}, view {by_view}: input gradient"));
                assert!(dx.index_axis(ndarray::Axis(1), 0).iter().all(|v| v.is_nan()), "case {case}: the NaN gradient reaches dx");
                let grads: Vec<ArrayD<f32>> = chain.params().iter().map(|(_, p)| p.grad.clone()).collect();
                let alone: Vec<ArrayD<f32>> = [&alone_norm, &alone_after].iter().take(1 + usize::from(with_norm_after)).flat_map(|l| l.params().into_iter().map(|(_, p)| p.grad.clone())).collect();
                assert_eq!(grads.len(), alone.len());
                for (g, a) in grads.iter().zip(&alone) {
                    same_bits(g, a, &format!("case {case}: a BatchNorm's gradient"));
                }
            }
        }
    }

    /// Chains with a ReLU before a max pool (2x2, and overlapping 3x3 with stride 1; alone, or
    /// with a Dense after them) train as the layers one by one: the output bit for bit, NaN
    /// kept; the input gradient value for value, by `backward` and by `backward_view`, and a
    /// NaN gradient lands in its window; a BatchNorm before the ReLU keeps it instead.
    #[test]
    fn a_relu_before_a_max_pool_trains_as_the_two_layers() {
        use crate::layers::{Dense, Flatten, MaxPool2d};
        use cnn_core::Window;
        let build = |layer: &mut dyn Layer, input: &[usize]| layer.build(input, &mut Init { rng: &mut ModelRng::seed_from_u64(0) }).unwrap();
        // about half negative, whole windows negative (rows 2-4 of channel 0), one NaN
        let mut x = ArrayD::from_shape_fn(vec![2, 3, 6, 6], |i| ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 11) as f32 - 5.0);
        x.slice_mut(ndarray::s![.., 0, 2..5, ..]).iter_mut().for_each(|v| *v = -1.0 - *v * *v);
        x[[1, 2, 4, 1]] = f32::NAN;
        for (case, window) in [Window::square(2).stride(2), Window::square(3)].into_iter().enumerate() {
            let side = if case == 0 { 3 } else { 4 };
            for (dense, by_view, nan_gradient) in [(false, false, false), (false, true, false), (true, false, false), (false, false, true), (false, true, true)] {
                let mut chain = Chain::new().add(ReLU::new()).add(MaxPool2d::with_window(window));
                let (mut relu, mut pool) = (ReLU::new(), MaxPool2d::with_window(window));
                let mut head = None;
                if dense {
                    chain = chain.add(Flatten::new()).add(Dense::new(5));
                    let mut alone = Dense::new(5);
                    build(&mut alone, &[3 * side * side]);
                    head = Some(alone);
                }
                build(&mut chain, &[3, 6, 6]);
                assert!(relu_before_pool(chain.layers(), 0) && !relu_before_pool(chain.layers(), 1) && runs_inside(chain.layers(), 0));
                let what = format!("case {case}, dense {dense}, view {by_view}, NaN gradient {nan_gradient}");
                let y = chain.forward_train(x.clone());
                let mut want = pool.forward_train(relu.forward_train(x.clone()));
                if let Some(alone) = head.as_mut() {
                    want = alone.forward_train(want.into_shape_with_order((2, 3 * side * side)).unwrap().into_dyn());
                } else {
                    assert!(y.iter().any(|v| v.is_nan()) && y.iter().filter(|&&v| v == 0.0).count() >= 3, "{what}: NaN kept, windows cut to 0");
                }
                same_bits(&y, &want, &format!("{what}: output"));
                let mut dy = ArrayD::from_shape_fn(y.raw_dim(), |i| (i.slice().iter().sum::<usize>() % 7) as f32 / 7.0 - 0.4);
                // an all-negative window of sample 0, channel 0: rows 2..4 and columns 2..4 of
                // the 2x2 pool's output (1, 1), rows 2..5 and columns 1..4 of the 3x3's (2, 1)
                let (rows, cols) = if case == 0 { (2..4, 2..4) } else { (2..5, 1..4) };
                if nan_gradient {
                    dy[[0, 0, rows.start / (2 - case), 1]] = f32::NAN;
                }
                let dx = if by_view { chain.backward_view(dy.view()) } else { chain.backward(dy.clone()) };
                let mut d = dy.clone();
                if let Some(alone) = head.as_mut() {
                    d = alone.backward(d).into_shape_with_order((2, 3, side, side)).unwrap().into_dyn();
                    let grads: Vec<ArrayD<f32>> = chain.params().iter().map(|(_, p)| p.grad.clone()).collect();
                    let alone: Vec<ArrayD<f32>> = alone.params().iter().map(|(_, p)| p.grad.clone()).collect();
                    assert_eq!(grads.len(), alone.len());
                    grads.iter().zip(&alone).for_each(|(g, a)| same_bits(g, a, &format!("{what}: the Dense layer's gradient")));
                }
                let want = relu.backward(pool.backward(d));
                assert_eq!(dx.shape(), want.shape());
                let in_window = |i: &[usize]| nan_gradient && i[0] == 0 && i[1] == 0 && rows.contains(&i[2]) && cols.contains(&i[3]);
                for ((i, a), b) in dx.indexed_iter().zip(&want) {
                    if !in_window(i.slice()) {
                        assert!(a == b, "{what}, value {i:?}: {a} against {b}");
                    }
                }
                for d in [&dx, &want] {
                    let nans: Vec<_> = d.indexed_iter().filter(|(_, v)| v.is_nan()).map(|(i, _)| i).collect();
                    assert!(nans.len() == usize::from(nan_gradient) && nans.iter().all(|i| in_window(i.slice())), "{what}: NaN gradients at {nans:?}");
                }
            }
        }
        // a ReLU in a BatchNorm stays there, even before a pool
        let chain = Chain::new().add(norm()).add(ReLU::new()).add(MaxPool2d::new(2));
        assert!(relu_in_norm(chain.layers(), 1) && !relu_before_pool(chain.layers(), 1) && runs_inside(chain.layers(), 1) && !runs_inside(chain.layers(), 2));
    }
}
