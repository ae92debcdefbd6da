//! Inference fusion. In evaluation mode a convolution and the `BatchNorm` after it are one
//! convolution: BatchNorm's `y = x·scale + shift` per channel folds into the filters (`w·scale`)
//! and the bias (`b·scale + shift`); and a `ReLU` after them is applied as the convolution
//! stores its outputs ([`cnn_core::Activation`]): one pass over the output where the three
//! layers made three. PyTorch's `fuse_conv_bn_eval` and oneDNN's post-ops do the same.
//!
//! A [`Chain`](super::Chain) runs its inference through [`forward`]; a residual block applies
//! a ReLU right after its sum in the sum's pass ([`leading_relu`]). Training is untouched (it
//! normalises with each batch's own statistics). A fused result is the unfused one within f32
//! rounding: the folded filters are rounded once more.

use super::{BatchNorm, Conv2d, ReLU};
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
