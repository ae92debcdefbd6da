//! `Sequential`: a stack of layers built from an input shape, trained end to end.

use crate::error::{NnError, Result};
use crate::layer::{BuildError, Init, Layer, ModelRng, Param};
use crate::layers::Chain;
use crate::loss::{distillation_loss, softmax_cross_entropy, SoftTargets};
use ndarray::{ArrayD, ArrayView, Axis, Dimension, Ix2};
use rand::SeedableRng;
use std::collections::HashSet;

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
    chain: Chain,
    /// Batch size of the last training forward whose backward has not run yet.
    pending_backward: Option<usize>,
}

/// What [`Sequential::classify`] says about one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// The most probable class.
    pub class: usize,
    /// The probability of every class (softmax of the logits).
    pub probabilities: Vec<f32>,
}

/// Collects layers, then checks the stack and initialises it ([`SequentialBuilder::build`]).
pub struct SequentialBuilder {
    input: Vec<usize>,
    chain: Chain,
    seed: u64,
}

impl SequentialBuilder {
    /// Appends a layer.
    pub fn add(self, layer: impl Layer + 'static) -> Self {
        SequentialBuilder { chain: self.chain.add(layer), ..self }
    }

    /// The seed of the weight initialisation (and of dropout): the same seed, the same model.
    pub fn seed(self, seed: u64) -> Self {
        SequentialBuilder { seed, ..self }
    }

    /// Infers every layer's input shape, rejecting impossible stacks, and initialises the
    /// weights, each layer by its own [`crate::WeightInit`].
    ///
    /// # Errors
    /// [`NnError::Build`] naming the first layer that cannot take its input, and the shapes.
    pub fn build(mut self) -> Result<Sequential> {
        if self.input.is_empty() || self.input.contains(&0) {
            return Err(NnError::Config(format!("model input shape must be non-empty, got {:?}", self.input)));
        }
        cnn_core::threads::init(); // the best BLAS kernels, before any product
        let mut rng = ModelRng::seed_from_u64(self.seed);
        self.chain.build(&self.input, &mut Init { rng: &mut rng }).map_err(build_error)?;
        let model = Sequential { input: self.input, chain: self.chain, pending_backward: None };
        model.check_unique_names()?;
        Ok(model)
    }
}

impl Sequential {
    /// Starts a model taking samples of shape `input` (without the batch axis), e.g. `[1, 28, 28]`.
    pub fn builder(input: &[usize]) -> SequentialBuilder {
        SequentialBuilder { input: input.to_vec(), chain: Chain::new(), seed: 0 }
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input
    }

    /// Per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        self.chain.shapes().last().map_or(&self.input, Vec::as_slice)
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        self.chain.layers()
    }

    /// The layers, mutably (to call them one by one).
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        self.chain.layers_mut()
    }

    /// Replaces layer `index` by `layer`, which must take the same input and give the same
    /// output shape (a low-rank version of a convolution, say). The new layer keeps the
    /// parameters it has; one without parameters yet is initialised with seed 0.
    ///
    /// # Errors
    /// A missing index, a layer that does not fit between its neighbours, or parameter names
    /// that clash; the model is unchanged then.
    pub fn replace_layer(&mut self, index: usize, layer: Box<dyn Layer>) -> Result<()> {
        let count = self.layers().len();
        if index >= count {
            return Err(NnError::Config(format!("no layer {index} to replace: the model has {count} layers")));
        }
        self.replace_at(&index.to_string(), layer)
    }

    /// The layer at `path`, the path of its parameters' names: `3`, or `3.1.main.0` for a
    /// layer inside blocks. `None` when there is none.
    pub fn layer_at(&self, path: &str) -> Option<&dyn Layer> {
        path.split('.').try_fold(&self.chain as &dyn Layer, |node, name| node.children().into_iter().find(|(n, _)| n == name).map(|(_, c)| c))
    }

    /// [`Sequential::replace_layer`] for a layer at any depth, named by its `path` (see
    /// [`Sequential::layer_at`]); it must sit in a chain (a model's or a block's path).
    ///
    /// # Errors
    /// No layer in a chain at `path`, and as [`Sequential::replace_layer`].
    pub fn replace_at(&mut self, path: &str, layer: Box<dyn Layer>) -> Result<()> {
        let parts: Vec<&str> = path.split('.').collect();
        let missing = || NnError::Config(format!("no layer in a chain at path `{path}`"));
        let (chain, index) = chain_slot(&mut self.chain, &parts).ok_or_else(missing)?;
        let input = chain.input_of(index).to_vec();
        let mut rng = ModelRng::seed_from_u64(0);
        let old = chain.replace(index, layer, &input, &mut Init { rng: &mut rng }).map_err(build_error)?;
        if let Err(e) = self.check_unique_names() {
            let (chain, index) = chain_slot(&mut self.chain, &parts).expect("found before");
            chain.layers_mut()[index] = old;
            return Err(e);
        }
        self.pending_backward = None;
        Ok(())
    }

    /// The chain of layers (for walking a model's tree).
    pub(crate) fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Per-sample output shape of each layer.
    pub fn shapes(&self) -> &[Vec<usize>] {
        self.chain.shapes()
    }

    fn check_unique_names(&self) -> Result<()> {
        let mut seen = HashSet::new();
        let params = self.named_params().into_iter().map(|(n, _)| n);
        match params.chain(self.named_buffers().into_iter().map(|(n, _)| n)).find(|name| !seen.insert(name.clone())) {
            Some(name) => Err(NnError::DuplicateName { name }),
            None => Ok(()),
        }
    }

    /// Fails unless `x` is a non-empty batch of samples of the model's input shape.
    fn check_input<D: Dimension>(&self, x: &ArrayView<f32, D>) -> Result<()> {
        if x.ndim() != self.input.len() + 1 || x.shape()[1..] != self.input[..] || x.shape()[0] == 0 {
            let mut expected = vec![0];
            expected.extend(&self.input);
            return Err(NnError::Shape { what: "model input (0 = any batch size)".into(), expected, got: x.shape().to_vec() });
        }
        Ok(())
    }

    /// Inference through every layer (evaluation mode: dropout off). Takes `&self`: one model
    /// can serve many threads.
    ///
    /// # Shapes
    /// `x`: `[n, ...input_shape]` → `[n, ...output_shape]`
    ///
    /// # Errors
    /// An input of the wrong shape.
    pub fn forward(&self, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        self.check_input(&x.view())?;
        Ok(self.chain.forward(x))
    }

    /// Training forward through every layer, caching what [`Sequential::backward`] needs.
    ///
    /// # Shapes
    /// As [`Sequential::forward`].
    ///
    /// # Errors
    /// An input of the wrong shape.
    pub fn forward_train(&mut self, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        self.check_input(&x.view())?;
        self.pending_backward = Some(x.shape()[0]);
        Ok(self.chain.forward_train(x))
    }

    /// Backward pass through every layer, from the gradient of the output; fills the
    /// parameters' gradients and returns the gradient of the input.
    ///
    /// # Shapes
    /// `dy`: `[n, ...output_shape]` → `[n, ...input_shape]`, `n` the batch of the forward.
    ///
    /// # Errors
    /// No [`Sequential::forward_train`] before it, or a `dy` of another shape than its output.
    pub fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let n = self.pending_backward.ok_or_else(|| NnError::Config("backward needs a forward_train first".into()))?;
        let mut expected = vec![n];
        expected.extend(self.output_shape());
        if dy.shape() != expected {
            return Err(NnError::Shape { what: "output gradient dy".into(), expected, got: dy.shape().to_vec() });
        }
        self.pending_backward = None;
        Ok(self.chain.backward(dy))
    }


    /// The output of every layer, in evaluation mode (for looking at feature maps).
    ///
    /// # Errors
    /// An input of the wrong shape.
    pub fn activations(&self, x: ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        self.check_input(&x.view())?;
        let mut outputs = Vec::with_capacity(self.layers().len());
        let mut a = x;
        for layer in self.layers() {
            a = layer.forward(a);
            outputs.push(a.clone());
        }
        Ok(outputs)
    }

    /// A classifier's probabilities, in evaluation mode: the softmax of its output (the
    /// logits: the softmax is not a layer of the trained stack, the loss takes logits).
    ///
    /// # Shapes
    /// `x`: `[n, ...input_shape]` → `[n, classes]`
    ///
    /// # Errors
    /// An input of the wrong shape, a model whose output is not `[classes]` per sample.
    pub fn predict(&self, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        if self.output_shape().len() != 1 {
            return Err(NnError::Config(format!("predict needs a classifier, whose output is [classes]; this one gives {:?}", self.output_shape())));
        }
        let mut p = self.forward(x)?;
        crate::layers::softmax_rows(&mut p);
        Ok(p)
    }

    /// Classifies one sample given without the batch axis (`[c, h, w]` for images): the most
    /// probable class and every class's probability.
    ///
    /// ```
    /// use cnn_nn::layers::{Dense, Flatten};
    /// use cnn_nn::{ndarray::Array3, Sequential};
    /// let model = Sequential::builder(&[1, 2, 2]).add(Flatten::new()).add(Dense::new(3)).build().unwrap();
    /// let c = model.classify(Array3::<f32>::ones((1, 2, 2)).view()).unwrap();
    /// assert_eq!(c.probabilities.len(), 3);
    /// assert!((c.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    /// ```
    ///
    /// # Errors
    /// A sample of another shape than the model's input, a model whose output is not one
    /// score per class, or scores that are not finite (a NaN is never turned into a class).
    pub fn classify<D: Dimension>(&self, sample: ArrayView<f32, D>) -> Result<Classification> {
        if self.output_shape().len() != 1 {
            return Err(NnError::Config(format!("classify needs a model with one score per class, its output is {:?}", self.output_shape())));
        }
        let mut scores = self.forward(sample.insert_axis(Axis(0)).into_dyn().to_owned())?;
        if let Some(&value) = scores.iter().find(|v| !v.is_finite()) {
            return Err(NnError::NonFinite { what: "the model's output for this sample".into(), value, context: ": the input or the weights hold NaN or infinite values".into() });
        }
        crate::layers::softmax_rows(&mut scores);
        let probabilities = scores.into_raw_vec_and_offset().0;
        let class = argmax_rows(ndarray::ArrayView2::from_shape((1, probabilities.len()), &probabilities).expect("one row"))[0];
        Ok(Classification { class, probabilities })
    }

    /// One training step's forward and backward: the fused softmax cross-entropy on the
    /// logits (the model's output), gradients **added** to the parameters' (call
    /// [`Sequential::zero_grad`] first, as [`crate::train::fit`] does). Returns the mean loss
    /// and the number of correct predictions.
    ///
    /// # Errors
    /// An input of the wrong shape, labels that do not match it, a model whose output is not
    /// `[n, classes]`.
    pub fn loss_and_gradients(&mut self, x: ArrayD<f32>, labels: &[usize]) -> Result<(f32, usize)> {
        self.loss_and_gradients_observed(x, labels, None, &mut |_, _| {})
    }

    /// [`Sequential::loss_and_gradients`], with a teacher's `soft` targets when given (the
    /// [`crate::loss::distillation_loss`] instead of the cross-entropy), calling
    /// `done(index, layer)` for every layer, last first, as soon as its gradients are final
    /// (data-parallel training sums them over the processes while the backward pass goes on
    /// through the earlier layers).
    ///
    /// # Errors
    /// As [`Sequential::loss_and_gradients`], and soft targets of another shape or with bad
    /// settings.
    pub fn loss_and_gradients_observed(&mut self, x: ArrayD<f32>, labels: &[usize], soft: Option<&SoftTargets>, done: &mut dyn FnMut(usize, &dyn Layer)) -> Result<(f32, usize)> {
        self.check_input(&x.view())?;
        // the labels against the batch and the classes before any work
        let &[classes] = self.output_shape() else {
            return Err(NnError::Config("the loss needs a model whose output is [n, classes]".into()));
        };
        if labels.len() != x.shape()[0] {
            return Err(NnError::Shape { what: "labels".into(), expected: vec![x.shape()[0]], got: vec![labels.len()] });
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(NnError::Label { label, index, classes });
        }
        if let Some(soft) = soft {
            if soft.logits.dim() != (labels.len(), classes) {
                return Err(NnError::Shape { what: "teacher logits".into(), expected: vec![labels.len(), classes], got: soft.logits.shape().to_vec() });
            }
        }
        let logits = self.chain.forward_train(x).into_dimensionality::<Ix2>().expect("the output shape is [classes]");
        let (loss, dlogits) = match soft {
            None => softmax_cross_entropy(logits.view(), labels)?,
            Some(s) => distillation_loss(logits.view(), s.logits.view(), labels, s.temperature, s.alpha)?,
        };
        let correct = argmax_rows(logits.view()).iter().zip(labels).filter(|(p, l)| p == l).count();
        // the input needs no gradient
        self.chain.backward_observed(dlogits.into_dyn(), false, done);
        self.pending_backward = None;
        Ok((loss, correct))
    }

    /// Sets every gradient to zero (backward passes add to them).
    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.grad.fill(0.0);
        }
    }

    /// Every parameter with its unique path as name (`"{layer index}.{name in the layer}"`,
    /// e.g. `3.weight` or `2.main.0.bias`), in a fixed order.
    pub fn named_params(&self) -> Vec<(String, &Param)> {
        self.chain.params()
    }

    /// Every parameter, mutably, with the names and in the order of [`Sequential::named_params`].
    pub fn named_params_mut(&mut self) -> Vec<(String, &mut Param)> {
        self.chain.params_mut()
    }

    /// Every parameter, mutably, in the order of [`Sequential::named_params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.named_params_mut().into_iter().map(|(_, p)| p).collect()
    }

    /// Every buffer (non-trainable state, such as BatchNorm's running statistics) with its
    /// unique path as name, in a fixed order.
    pub fn named_buffers(&self) -> Vec<(String, &ArrayD<f32>)> {
        self.chain.buffers()
    }

    /// Every buffer, mutably, with the names and in the order of [`Sequential::named_buffers`].
    pub fn named_buffers_mut(&mut self) -> Vec<(String, &mut ArrayD<f32>)> {
        self.chain.buffers_mut()
    }

    /// Total number of trainable values.
    pub fn num_params(&self) -> usize {
        self.named_params().iter().map(|(_, p)| p.value.len()).sum()
    }

    /// Multiply-adds of one sample's forward pass (convolutions and dense layers).
    pub fn macs(&self) -> u64 {
        self.chain.macs(self.output_shape())
    }

    /// Values of every tensor one sample's forward pass produces (each layer's output, inside
    /// blocks too): about what a training step keeps for its backward pass.
    pub fn activation_values(&self) -> usize {
        self.chain.activations(self.output_shape())
    }

    /// Total number of non-trainable values (the buffers).
    pub fn num_buffers(&self) -> usize {
        self.named_buffers().iter().map(|(_, b)| b.len()).sum()
    }
}

/// The chain holding the layer at `path` (split at its dots), and the layer's index in it.
fn chain_slot<'a>(node: &'a mut dyn Layer, path: &[&str]) -> Option<(&'a mut Chain, usize)> {
    match path {
        [index] => {
            let chain = (node as &mut dyn std::any::Any).downcast_mut::<Chain>()?;
            let index = index.parse::<usize>().ok().filter(|&i| i < chain.layers().len())?;
            Some((chain, index))
        }
        [name, rest @ ..] => {
            let child = node.children_mut().into_iter().find(|(n, _)| n == name)?.1;
            chain_slot(child, rest)
        }
        [] => None,
    }
}

/// The model-level error for a layer that refused its input (the chain names its path).
fn build_error(e: BuildError) -> NnError {
    match e {
        BuildError::At { path, layer, input, reason } => NnError::Build { path, layer, input, reason: *reason },
        other => NnError::Build { path: String::new(), layer: "model".into(), input: vec![], reason: other },
    }
}

/// Index of the largest value of each row of a `[n, classes]` array (a NaN counts as the
/// largest, as in PyTorch's `argmax`, so it is never hidden behind a valid-looking class).
pub(crate) fn argmax_rows(x: ndarray::ArrayView2<f32>) -> Vec<usize> {
    x.axis_iter(Axis(0))
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                let b = row[best];
                if !b.is_nan() && (v > b || v.is_nan()) {
                    best = i;
                }
            }
            best
        })
        .collect()
}
