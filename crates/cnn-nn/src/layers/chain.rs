//! `Chain`: layers applied one after the other, itself a layer, so that blocks can hold
//! sequences and sequences blocks, to any depth. [`crate::Sequential`] is a `Chain` with an
//! input shape and the training API around it.

use super::fuse;
use crate::layer::{prefixed, BuildError, Describe, Init, Layer, Param};
use ndarray::{ArrayD, ArrayViewD};

/// Layers applied in order; its children are named by their index (`0`, `1`, ...), so a
/// parameter of the third layer of a chain named `main` is `main.2.weight`.
///
/// ```
/// use cnn_nn::layers::{Chain, Conv2d, ReLU};
/// let block = Chain::new().add(Conv2d::new(16, 3)).add(ReLU::new());
/// assert_eq!(block.layers().len(), 2);
/// ```
///
/// # Shapes
/// input: what the first layer takes → output: what the last layer gives
#[derive(Default)]
pub struct Chain {
    layers: Vec<Box<dyn Layer>>,
    /// Per-sample output shape of each layer (after `build`).
    shapes: Vec<Vec<usize>>,
    /// Per-sample input shape (after `build`).
    input: Vec<usize>,
}

impl Chain {
    /// An empty chain (the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer.
    pub fn add(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn push(&mut self, layer: Box<dyn Layer>) {
        self.layers.push(layer);
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The layers, mutably.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }

    /// Per-sample output shape of each layer (empty before `build`).
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// Per-sample input shape of layer `index` (after `build`).
    pub fn input_of(&self, index: usize) -> &[usize] {
        if index == 0 { &self.input } else { &self.shapes[index - 1] }
    }

    /// Builds `layer` for `input`, naming it `index` in errors.
    pub(crate) fn build_child(layer: &mut dyn Layer, index: &str, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        layer.build(input, init).map_err(|e| e.within(index, &layer.describe().name, input))
    }

    /// [`Layer::backward`] through the layers, last first, calling `done(index, layer)` as soon
    /// as each layer's backward has run: its gradients are final then (data-parallel training
    /// starts summing them over the processes while the earlier layers still compute). The
    /// first layer's input gradient only if `input_gradient`: else the first layer runs
    /// [`Layer::backward_params`] and the result is `None` (`dy` itself for an empty chain).
    pub(crate) fn backward_observed(&mut self, dy: ArrayD<f32>, input_gradient: bool, done: &mut dyn FnMut(usize, &dyn Layer)) -> Option<ArrayD<f32>> {
        let inside = self.runs_inside();
        let mut d = Some(dy);
        for i in (0..self.layers.len()).rev() {
            let dy = d.take().expect("each layer gives the one before it its gradient");
            if inside[i] {
                // its gradient is applied by its neighbour (the BatchNorm's backward, or
                // before the max pool's)
                d = Some(dy);
            } else if i == 0 && !input_gradient {
                self.layers[0].backward_params(dy);
            } else {
                d = Some(fuse::backward(&mut self.layers, i, dy));
            }
            done(i, self.layers[i].as_ref());
        }
        d.filter(|_| input_gradient || self.layers.is_empty())
    }

    /// For each layer, whether the training runs it inside a neighbour ([`fuse::runs_inside`]).
    fn runs_inside(&self) -> Vec<bool> {
        (0..self.layers.len()).map(|i| fuse::runs_inside(&self.layers, i)).collect()
    }

    /// Replaces layer `index`, which must give the same output shape from the same input.
    /// Returns the layer replaced.
    pub(crate) fn replace(&mut self, index: usize, mut layer: Box<dyn Layer>, input: &[usize], init: &mut Init) -> Result<Box<dyn Layer>, BuildError> {
        let name = layer.describe().name;
        let expected = self.shapes[index].clone();
        let output = Chain::build_child(layer.as_mut(), &index.to_string(), input, init)?;
        if output != expected {
            let reason = BuildError::Input(format!("gives {output:?}, the next layer needs {expected:?}"));
            return Err(reason.within(&index.to_string(), &name, input));
        }
        Ok(std::mem::replace(&mut self.layers[index], layer))
    }
}

impl Layer for Chain {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let mut shape = input.to_vec();
        self.input = input.to_vec();
        self.shapes.clear();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            shape = Chain::build_child(layer.as_mut(), &i.to_string(), &shape, init)?;
            self.shapes.push(shape.clone());
        }
        Ok(shape)
    }

    /// The layers in order, a convolution with the BatchNorm and ReLU after it fused into one
    /// step (see `fuse.rs`).
    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        fuse::forward(&self.layers, x)
    }

    /// The first step on the view, the rest as [`Layer::forward`].
    fn forward_view(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        match fuse::steps(&self.layers).split_first() {
            Some((first, rest)) => rest.iter().fold(first.forward_view(x), |x, step| step.forward(x)),
            None => super::par_clone(x),
        }
    }

    /// The layers in order, a BatchNorm with the ReLU after it in one pass (see `fuse.rs`).
    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        fuse::forward_train(&mut self.layers, x)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        self.backward_observed(dy, true, &mut |_, _| {}).expect("the input gradient was asked for")
    }

    /// The last layer that computes on the view, the rest as [`Layer::backward`].
    fn backward_view(&mut self, dy: ArrayViewD<f32>) -> ArrayD<f32> {
        let inside = self.runs_inside();
        let Some(last) = inside.iter().rposition(|&skipped| !skipped) else {
            return super::par_clone(dy);
        };
        let d = if last > 0 && fuse::relu_before_pool(&self.layers, last - 1) {
            let d = self.layers[last - 1].backward_view(dy);
            self.layers[last].backward(d)
        } else {
            self.layers[last].backward_view(dy)
        };
        (0..last).rev().fold(d, |d, i| if inside[i] { d } else { fuse::backward(&mut self.layers, i, d) })
    }

    fn backward_params(&mut self, dy: ArrayD<f32>) {
        self.backward_observed(dy, false, &mut |_, _| {});
    }

    fn params(&self) -> Vec<(String, &Param)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| prefixed(&i.to_string(), l.params())).collect()
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        self.layers.iter_mut().enumerate().flat_map(|(i, l)| prefixed(&i.to_string(), l.params_mut())).collect()
    }

    fn buffers(&self) -> Vec<(String, &ArrayD<f32>)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| prefixed(&i.to_string(), l.buffers())).collect()
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut ArrayD<f32>)> {
        self.layers.iter_mut().enumerate().flat_map(|(i, l)| prefixed(&i.to_string(), l.buffers_mut())).collect()
    }

    fn children(&self) -> Vec<(String, &dyn Layer)> {
        self.layers.iter().enumerate().map(|(i, l)| (i.to_string(), l.as_ref())).collect()
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer)> {
        self.layers.iter_mut().enumerate().map(|(i, l)| (i.to_string(), l.as_mut())).collect()
    }

    fn describe(&self) -> Describe {
        Describe { name: "Chain".into(), ..Describe::default() }
    }

    fn macs(&self, _output: &[usize]) -> u64 {
        self.layers.iter().zip(&self.shapes).map(|(l, shape)| l.macs(shape)).sum()
    }

    fn activations(&self, _output: &[usize]) -> usize {
        self.layers.iter().zip(&self.shapes).map(|(l, shape)| l.activations(shape)).sum()
    }
}
