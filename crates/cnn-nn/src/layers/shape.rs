//! Layers that reshape or regularise: `Flatten`, `Dropout`.

use crate::layer::{BuildError, Describe, Init, Layer, ModelRng};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};

/// Flattens each sample to one vector: `[n, c, h, w]` → `[n, c·h·w]` (no copy when contiguous).
#[derive(Default)]
pub struct Flatten {
    shape: Option<Vec<usize>>,
}

impl Flatten {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Flatten {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        Ok(vec![input.iter().product()])
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let shape = x.shape().to_vec();
        let flat = super::standard(x);
        flat.into_shape_with_order(IxDyn(&[shape[0], shape[1..].iter().product()])).expect("contiguous")
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.shape = Some(x.shape().to_vec());
        self.forward(x)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let shape = self.shape.take().expect("Flatten::backward needs a training forward first");
        let dy = super::standard(dy);
        dy.into_shape_with_order(IxDyn(&shape)).expect("same size")
    }

    fn describe(&self) -> Describe {
        Describe { name: "Flatten".into(), ..Describe::default() }
    }
}

/// Inverted dropout: in training, zeroes each value with probability `p` and scales the rest
/// by `1 / (1 - p)`; in evaluation, the identity. Its RNG is seeded from the model's.
pub struct Dropout {
    p: f32,
    rng: ModelRng,
    mask: Option<ArrayD<f32>>,
}

impl Dropout {
    /// Drops with probability `p` (in `[0, 1)`).
    pub fn new(p: f32) -> Self {
        Dropout { p, rng: ModelRng::seed_from_u64(0), mask: None }
    }
}

impl Layer for Dropout {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(BuildError::Setting(format!("dropout probability must be in [0, 1), got {}", self.p)));
        }
        self.rng = ModelRng::seed_from_u64(init.rng.gen());
        Ok(input.to_vec())
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        x
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        if self.p == 0.0 {
            self.mask = None;
            return x;
        }
        let keep = 1.0 - self.p;
        let mask = ArrayD::from_shape_simple_fn(x.raw_dim(), || {
            if self.rng.gen::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        });
        let y = x * &mask;
        self.mask = Some(mask);
        y
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        match self.mask.take() {
            Some(mask) => dy * mask,
            None => dy,
        }
    }

    fn describe(&self) -> Describe {
        Describe { name: format!("Dropout({})", self.p), ..Describe::default() }
    }
}
