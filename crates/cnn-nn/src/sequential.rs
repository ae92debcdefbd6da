//! `Sequential`: a stack of layers built from an input shape, trained end to end.

use crate::error::{NnError, Result};
use crate::layer::{Init, Layer, Param};
use crate::loss::softmax_cross_entropy;
use ndarray::{ArrayD, Axis, Ix2};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A model: layers applied one after the other.
///
/// ```
/// use cnn_nn::layers::{Conv2d, Dense, Flatten, MaxPool2d, ReLU};
/// use cnn_nn::Sequential;
/// let model = Sequential::builder(&[1, 8, 8])
///     .add(Conv2d::new(4, 3))
///     .add(ReLU::new())
///     .add(MaxPool2d::new(2))
///     .add(Flatten::new())
///     .add(Dense::new(10))
///     .seed(7)
///     .build()
///     .unwrap();
/// assert_eq!(model.output_shape(), &[10]);
/// ```
pub struct Sequential {
    input: Vec<usize>,
    layers: Vec<Box<dyn Layer>>,
    /// Per-sample output shape of each layer.
    shapes: Vec<Vec<usize>>,
}

/// Collects layers, then checks the stack and initialises it ([`SequentialBuilder::build`]).
pub struct SequentialBuilder {
    input: Vec<usize>,
    layers: Vec<Box<dyn Layer>>,
    seed: u64,
}

impl SequentialBuilder {
    /// Appends a layer.
    pub fn add(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// The seed of the weight initialisation (and of dropout): the same seed, the same model.
    pub fn seed(self, seed: u64) -> Self {
        SequentialBuilder { seed, ..self }
    }

    /// Infers every layer's input shape, rejecting impossible stacks, and initialises the
    /// weights: He before a ReLU, Glorot otherwise.
    ///
    /// # Errors
    /// [`NnError::Build`] naming the first layer that cannot take its input, and the shapes.
    pub fn build(mut self) -> Result<Sequential> {
        if self.input.is_empty() || self.input.contains(&0) {
            return Err(NnError::Config(format!("model input shape must be non-empty, got {:?}", self.input)));
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut shape = self.input.clone();
        let mut shapes = vec![];
        let relu_next: Vec<bool> = (0..self.layers.len())
            .map(|i| self.layers.get(i + 1).is_some_and(|next| next.relu_family()))
            .collect();
        for (index, layer) in self.layers.iter_mut().enumerate() {
            let mut init = Init { rng: &mut rng, relu_follows: relu_next[index] };
            shape = layer.build(&shape, &mut init).map_err(|reason| NnError::Build {
                index,
                layer: layer.describe().name,
                input: shape.clone(),
                reason,
            })?;
            shapes.push(shape.clone());
        }
        Ok(Sequential { input: self.input, layers: self.layers, shapes })
    }
}

impl Sequential {
    /// Starts a model taking samples of shape `input` (without the batch axis), e.g. `[1, 28, 28]`.
    pub fn builder(input: &[usize]) -> SequentialBuilder {
        SequentialBuilder { input: input.to_vec(), layers: vec![], seed: 0 }
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input
    }

    /// Per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        self.shapes.last().map_or(&self.input, Vec::as_slice)
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The layers, mutably (to call them one by one).
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }

    /// Replaces layer `index` by `layer`, which must take the same input and give the same
    /// output shape (a low-rank version of a convolution, say). The new layer keeps the
    /// parameters it has; one without parameters yet is initialised with seed 0.
    ///
    /// # Errors
    /// A missing index, or a layer that does not fit between its neighbours.
    pub fn replace_layer(&mut self, index: usize, mut layer: Box<dyn Layer>) -> Result<()> {
        let name = layer.describe().name;
        let input = if index == 0 { self.input.clone() } else { self.shapes[index - 1].clone() };
        let expected = self.shapes.get(index).cloned().ok_or_else(|| NnError::Config(format!("no layer {index} to replace")))?;
        let mut rng = StdRng::seed_from_u64(0);
        let relu_follows = self.layers.get(index + 1).is_some_and(|l| l.relu_family());
        let output = layer
            .build(&input, &mut Init { rng: &mut rng, relu_follows })
            .map_err(|reason| NnError::Build { index, layer: name.clone(), input: input.clone(), reason })?;
        if output != expected {
            return Err(NnError::Build { index, layer: name, input, reason: format!("gives {output:?}, the next layer needs {expected:?}") });
        }
        self.layers[index] = layer;
        Ok(())
    }

    /// Per-sample output shape of each layer.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    fn check_input(&self, x: &ArrayD<f32>) -> Result<()> {
        if x.ndim() != self.input.len() + 1 || x.shape()[1..] != self.input[..] || x.shape()[0] == 0 {
            let mut expected = vec![0];
            expected.extend(&self.input);
            return Err(NnError::Shape { what: "model input (0 = any batch size)".into(), expected, got: x.shape().to_vec() });
        }
        Ok(())
    }

    /// Layers that produce the logits: all but a final [`crate::layers::Softmax`].
    fn logit_layers(&self) -> usize {
        match self.layers.last() {
            Some(last) if (last.as_ref() as &dyn std::any::Any).is::<crate::layers::Softmax>() => self.layers.len() - 1,
            _ => self.layers.len(),
        }
    }

    /// Forward pass through every layer.
    ///
    /// # Shapes
    /// `x`: `[n, ...input_shape]` → `[n, ...output_shape]`
    ///
    /// # Errors
    /// An input of the wrong shape.
    pub fn forward(&mut self, x: ArrayD<f32>, train: bool) -> Result<ArrayD<f32>> {
        self.check_input(&x)?;
        Ok(self.layers.iter_mut().fold(x, |x, layer| layer.forward(x, train)))
    }

    /// Backward pass through every layer, from the gradient of the output; fills the
    /// parameters' gradients and returns the gradient of the input.
    ///
    /// # Panics
    /// Without a training-mode [`Sequential::forward`] before it.
    pub fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        self.layers.iter_mut().rev().fold(dy, |d, layer| layer.backward(d))
    }

    /// The logits (the output before a final softmax) in evaluation mode.
    ///
    /// # Errors
    /// An input of the wrong shape.
    pub fn logits(&mut self, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        self.check_input(&x)?;
        let k = self.logit_layers();
        Ok(self.layers[..k].iter_mut().fold(x, |x, layer| layer.forward(x, false)))
    }

    /// The output of every layer, in evaluation mode (for looking at feature maps).
    ///
    /// # Errors
    /// An input of the wrong shape.
    pub fn activations(&mut self, x: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        self.check_input(&x)?;
        let mut outputs = Vec::with_capacity(self.layers.len());
        let mut a = x;
        for layer in &mut self.layers {
            a = layer.forward(a, false);
            outputs.push(a.clone());
        }
        Ok(outputs)
    }

    /// The model's output in evaluation mode (probabilities, when it ends with Softmax).
    ///
    /// # Errors
    /// An input of the wrong shape.
    pub fn predict(&mut self, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        self.forward(x, false)
    }

    /// One training step's forward and backward: the fused softmax cross-entropy on the
    /// logits, gradients left in the parameters. Returns the mean loss and the number of
    /// correct predictions.
    ///
    /// # Errors
    /// An input of the wrong shape, labels that do not match it.
    pub fn loss_and_gradients(&mut self, x: ArrayD<f32>, labels: &[u8]) -> Result<(f32, usize)> {
        self.check_input(&x)?;
        let k = self.logit_layers();
        let logits = self.layers[..k].iter_mut().fold(x, |x, layer| layer.forward(x, true));
        let logits = logits
            .into_dimensionality::<Ix2>()
            .map_err(|_| NnError::Config("the loss needs a model whose output is [n, classes]".into()))?;
        let (loss, dlogits) = softmax_cross_entropy(logits.view(), labels)?;
        let correct = argmax_rows(logits.view()).iter().zip(labels).filter(|(p, &l)| **p == l as usize).count();
        self.layers[..k].iter_mut().rev().fold(dlogits.into_dyn(), |d, layer| layer.backward(d));
        Ok((loss, correct))
    }

    /// Every parameter with its name `"{layer index}.{weight|bias}"`, in a fixed order.
    pub fn named_params(&self) -> Vec<(String, &Param)> {
        let mut named = vec![];
        for (i, layer) in self.layers.iter().enumerate() {
            named.extend(layer.params().into_iter().map(|p| (format!("{i}.{}", p.name), p)));
        }
        named
    }

    /// Every parameter, mutably, in the order of [`Sequential::named_params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.layers.iter_mut().flat_map(|l| l.params_mut()).collect()
    }

    /// Total number of trainable values.
    pub fn num_params(&self) -> usize {
        self.named_params().iter().map(|(_, p)| p.value.len()).sum()
    }
}

/// Index of the largest value of each row of a `[n, classes]` array.
pub fn argmax_rows(x: ndarray::ArrayView2<f32>) -> Vec<usize> {
    x.axis_iter(Axis(0))
        .map(|row| row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0)
        .collect()
}
