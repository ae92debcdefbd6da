//! The layer abstraction: forward, backward, named parameters, and what the summary shows.

use cnn_core::CnnError;
use ndarray::{ArrayD, ArrayViewD};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The random generator of weight initialisation and dropout: ChaCha8, whose stream is
/// specified (unlike `rand`'s `StdRng`), so "same seed, same model" survives dependency updates.
pub type ModelRng = ChaCha8Rng;

/// Why a layer cannot take the input shape it is given (see [`Layer::build`]).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The per-sample input does not have the axes the layer needs.
    #[error("{0}")]
    Input(String),
    /// A setting of the layer is impossible (no filters, a probability of 1, ...).
    #[error("{0}")]
    Setting(String),
    /// The compute core refused the geometry (kernel larger than the input, sizes that overflow, ...).
    #[error(transparent)]
    Core(#[from] CnnError),
    /// A layer inside a chain or a block refused its input: `path` leads to it (`3.main.0`).
    #[error("layer {path} ({layer}) cannot take input of shape {input:?}: {reason}")]
    At {
        /// The dotted path from the container to the layer.
        path: String,
        /// The layer's name.
        layer: String,
        /// The per-sample input shape it was given.
        input: Vec<usize>,
        /// Why.
        reason: Box<BuildError>,
    },
}

impl BuildError {
    /// This error seen from the container that holds the failing layer under `name`: the
    /// path grows by `name`, or starts there (with the layer's name and input) if the error
    /// came from the layer itself.
    pub fn within(self, name: &str, layer: &str, input: &[usize]) -> BuildError {
        match self {
            BuildError::At { path, layer, input, reason } => BuildError::At { path: format!("{name}.{path}"), layer, input, reason },
            other => BuildError::At { path: name.to_string(), layer: layer.to_string(), input: input.to_vec(), reason: Box::new(other) },
        }
    }
}

/// How a layer's weights are drawn. Each layer carries its own (chosen explicitly, never
/// guessed from its neighbours): He for the layers a ReLU follows, Glorot for the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightInit {
    /// He (Kaiming) uniform, `U(±sqrt(6 / fan_in))`: keeps the variance through a ReLU.
    #[default]
    HeUniform,
    /// Glorot (Xavier) uniform, `U(±sqrt(6 / (fan_in + fan_out)))`: for layers without a ReLU
    /// after them (a classifier's last layer, say).
    GlorotUniform,
}

/// Initialisation context handed to [`Layer::build`]: the model's seeded RNG.
pub struct Init<'a> {
    /// The model's RNG: the same seed gives the same weights.
    pub rng: &'a mut ModelRng,
}

impl Init<'_> {
    /// Weights of `shape` (`[out, in, kernel...]`, PyTorch's layout) drawn uniformly by
    /// `scheme`, with `fan_in = in · Π kernel` and `fan_out = out · Π kernel`.
    ///
    /// # Errors
    /// A shape of fewer than two axes, or whose size overflows or cannot be allocated.
    pub fn weights(&mut self, shape: &[usize], scheme: WeightInit) -> Result<ArrayD<f32>, BuildError> {
        let [out, inp, kernel @ ..] = shape else {
            return Err(BuildError::Setting(format!("a weight needs [out, in, ...] axes, got {shape:?}")));
        };
        let too_large = || CnnError::TooLarge { what: "weight", detail: format!("shape {shape:?} cannot be allocated") };
        let len = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(too_large)?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| too_large())?;
        // no overflow: each factor divides `len`
        let receptive: usize = kernel.iter().product();
        let (fan_in, fan_out) = ((inp * receptive) as f64, (out * receptive) as f64);
        let limit = match scheme {
            WeightInit::HeUniform => (6.0 / fan_in).sqrt(),
            WeightInit::GlorotUniform => (6.0 / (fan_in + fan_out)).sqrt(),
        } as f32;
        data.extend((0..len).map(|_| self.rng.gen_range(-limit..limit)));
        Ok(ArrayD::from_shape_vec(shape, data).expect("the data has the shape's size"))
    }
}

/// A trainable tensor and its gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Name within its layer: `weight`, `bias`, `mix`, ...
    pub name: String,
    /// Current value.
    pub value: ArrayD<f32>,
    /// Gradient of the loss, filled by `backward` (summed over the batch).
    pub grad: ArrayD<f32>,
}

impl Param {
    /// A parameter with a zero gradient.
    pub fn new(name: impl Into<String>, value: ArrayD<f32>) -> Self {
        let grad = ArrayD::zeros(value.raw_dim());
        Param { name: name.into(), value, grad }
    }

    /// Adds `g` to the gradient: backward passes accumulate (a parameter used twice, or
    /// gradients summed over micro-batches) until [`crate::Sequential::zero_grad`].
    ///
    /// # Panics
    /// If `g` does not have the parameter's shape (a bug in the layer).
    pub fn accumulate<D: ndarray::Dimension>(&mut self, g: &ndarray::Array<f32, D>) {
        assert_eq!(self.grad.shape(), g.shape(), "gradient of `{}` has the wrong shape", self.name);
        self.grad += &g.view().into_dyn();
    }
}

/// Names a child layer's parameters (or buffers) after the child: `weight` of child `block.0`
/// becomes `block.0.weight`. Composite layers build their [`Layer::params`] with it.
pub fn prefixed<P>(child: &str, params: Vec<(String, P)>) -> Vec<(String, P)> {
    params.into_iter().map(|(name, p)| (format!("{child}.{name}"), p)).collect()
}

/// What a layer's row of [`crate::Sequential::summary`] shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Describe {
    /// `Conv2d(f=3,s=1)`, `MaxPool(f=2,s=2)`, `Dense`, ...
    pub name: String,
    /// Number of filters, for convolutions.
    pub filters: Option<usize>,
    /// Padding rule, for convolutions.
    pub padding: Option<String>,
    /// An element-wise activation: shown on the row of the layer before it rather than as a row.
    pub is_activation: bool,
}

/// One layer of a [`crate::Sequential`] model.
///
/// Shapes are per sample (no batch axis) in [`Layer::build`] and with the batch axis first in
/// the passes. Inference ([`Layer::forward`]) reads the layer only, so one model serves many
/// threads; training ([`Layer::forward_train`]) caches what [`Layer::backward`] needs, and
/// `backward` takes the gradient of the output, stores the parameters' gradients and returns
/// the gradient of the input.
///
/// A layer made of other layers (a residual block, say) lists its children's parameters
/// under the child's name with [`prefixed`], so every name in a model is a unique path
/// (`2.block.0.weight`).
pub trait Layer: std::any::Any + Send + Sync {
    /// Checks the per-sample input shape, creates the parameters (from `init`) and returns the
    /// per-sample output shape.
    ///
    /// # Errors
    /// Why the shape does not fit, or the settings are impossible.
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError>;

    /// Inference on a batch (evaluation mode: dropout off, nothing cached).
    ///
    /// # Panics
    /// On a shape other than the one given to `build` (the model checks inputs first).
    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32>;

    /// [`Layer::forward`] on a view, for a caller that still needs the input afterwards (a
    /// residual block adds it to the main path's output, the branches of a `Concat` all read
    /// it): a layer that only reads its input, as a convolution does, overrides this and
    /// copies nothing; by default the input is copied (by all threads) and given to `forward`.
    ///
    /// # Panics
    /// As [`Layer::forward`].
    fn forward_view(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        self.forward(crate::layers::par_clone(x))
    }

    /// Training forward on a batch: train-only behaviour (dropout) on, and what the backward
    /// pass needs cached.
    ///
    /// # Panics
    /// As [`Layer::forward`].
    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32>;

    /// Backward pass: gradient of the input from the gradient of the output.
    ///
    /// # Panics
    /// If called without a [`Layer::forward_train`] first.
    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32>;

    /// [`Layer::backward`] on a view, for a caller that still needs `dy` afterwards (a residual
    /// block gives it to both paths): a layer that only reads `dy`, as BatchNorm does,
    /// overrides this and copies nothing; by default `dy` is copied (by all threads) and given
    /// to `backward`.
    ///
    /// # Panics
    /// As [`Layer::backward`].
    fn backward_view(&mut self, dy: ArrayViewD<f32>) -> ArrayD<f32> {
        self.backward(crate::layers::par_clone(dy))
    }

    /// [`Layer::backward`] for a layer whose input's gradient nobody reads (a model's first
    /// layer): the parameters' gradients only. By default the input gradient is computed and
    /// dropped; a convolution skips it (half the backward of ResNet-20's stem), a chain passes
    /// the request on to its first layer.
    ///
    /// # Panics
    /// As [`Layer::backward`].
    fn backward_params(&mut self, dy: ArrayD<f32>) {
        self.backward(dy);
    }

    /// The trainable parameters with their names in this layer, in a fixed order.
    fn params(&self) -> Vec<(String, &Param)> {
        vec![]
    }

    /// The trainable parameters, mutably, in the same order and with the same names.
    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        vec![]
    }

    /// The non-trainable state (BatchNorm's running statistics) with names in this layer:
    /// saved with checkpoints, counted apart from the parameters, never touched by optimisers.
    fn buffers(&self) -> Vec<(String, &ArrayD<f32>)> {
        vec![]
    }

    /// The buffers, mutably, in the same order and with the same names.
    fn buffers_mut(&mut self) -> Vec<(String, &mut ArrayD<f32>)> {
        vec![]
    }

    /// The layers this one is made of, with their names (a block's path, a branch's index),
    /// for the summary. Leaves have none.
    fn children(&self) -> Vec<(String, &dyn Layer)> {
        vec![]
    }

    /// The children, mutably, with the same names (to replace a layer inside a block, as
    /// [`crate::compress`] does).
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer)> {
        vec![]
    }

    /// What the summary shows for this layer.
    fn describe(&self) -> Describe;

    /// Multiply-adds of one sample's forward pass, given this layer's per-sample `output`
    /// shape: by default every weight (a parameter other than a bias) used once per output
    /// position, which is exact for convolutions (grouped, depthwise, low-rank) and dense
    /// layers. Containers sum their children's.
    fn macs(&self, output: &[usize]) -> u64 {
        let positions: usize = output.iter().skip(1).product();
        let weights: usize = self.params().iter().filter(|(name, _)| !name.ends_with("bias")).map(|(_, p)| p.value.len()).sum();
        (weights * positions) as u64
    }

    /// Values of every tensor one sample's forward pass produces, given this layer's
    /// `output` shape: its output, and its children's for a container.
    fn activations(&self, output: &[usize]) -> usize {
        output.iter().product()
    }
}

/// A leaf layer's own parameters, named as they are: the usual body of [`Layer::params`].
pub fn own_params(params: &[Param]) -> Vec<(String, &Param)> {
    params.iter().map(|p| (p.name.clone(), p)).collect()
}

/// A leaf layer's own parameters, mutably: the usual body of [`Layer::params_mut`].
pub fn own_params_mut(params: &mut [Param]) -> Vec<(String, &mut Param)> {
    params.iter_mut().map(|p| (p.name.clone(), p)).collect()
}
