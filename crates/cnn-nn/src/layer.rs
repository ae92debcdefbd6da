//! The layer abstraction: forward, backward, parameters, and what the summary shows.

use ndarray::ArrayD;
use rand::rngs::StdRng;
use rand::Rng;

/// Initialisation context handed to [`Layer::build`]: the model's seeded RNG, and whether a
/// ReLU follows (He initialisation) or not (Glorot).
pub struct Init<'a> {
    /// The model's RNG: the same seed gives the same weights.
    pub rng: &'a mut StdRng,
    /// A ReLU-family activation follows this layer.
    pub relu_follows: bool,
}

impl Init<'_> {
    /// Weights drawn uniformly: He, `U(±sqrt(6 / fan_in))`, before a ReLU; Glorot,
    /// `U(±sqrt(6 / (fan_in + fan_out)))`, otherwise. Both keep activations' variance steady.
    pub fn weights(&mut self, shape: &[usize], fan_in: usize, fan_out: usize) -> ArrayD<f32> {
        let limit = if self.relu_follows {
            (6.0 / fan_in as f32).sqrt()
        } else {
            (6.0 / (fan_in + fan_out) as f32).sqrt()
        };
        ArrayD::from_shape_simple_fn(shape, || self.rng.gen_range(-limit..limit))
    }
}

/// A trainable tensor and its gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Name within the layer: `weight` or `bias`.
    pub name: &'static str,
    /// Current value.
    pub value: ArrayD<f32>,
    /// Gradient of the loss, filled by `backward` (summed over the batch).
    pub grad: ArrayD<f32>,
}

impl Param {
    /// A parameter with a zero gradient.
    pub fn new(name: &'static str, value: ArrayD<f32>) -> Self {
        let grad = ArrayD::zeros(value.raw_dim());
        Param { name, value, grad }
    }
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
/// [`Layer::forward`] / [`Layer::backward`]. A layer caches in `forward` what its `backward`
/// needs; `backward` takes the gradient of the output, stores the parameters' gradients and
/// returns the gradient of the input.
pub trait Layer: std::any::Any + Send {
    /// Checks the per-sample input shape, creates the parameters (from `init`) and returns the
    /// per-sample output shape. The error says why the shape does not fit.
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, String>;

    /// Forward pass on a batch. `train` switches train-only behaviour (dropout) and caching.
    ///
    /// # Panics
    /// On a shape other than the one given to `build` (the model checks inputs first).
    fn forward(&mut self, x: ArrayD<f32>, train: bool) -> ArrayD<f32>;

    /// Backward pass: gradient of the input from the gradient of the output.
    ///
    /// # Panics
    /// If called without a training-mode `forward` first.
    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32>;

    /// The trainable parameters, in a fixed order.
    fn params(&self) -> Vec<&Param> {
        vec![]
    }

    /// The trainable parameters, mutably, in the same order.
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![]
    }

    /// What the summary shows for this layer.
    fn describe(&self) -> Describe;

    /// A ReLU-family activation: the layer before it gets He initialisation.
    fn relu_family(&self) -> bool {
        false
    }

}
