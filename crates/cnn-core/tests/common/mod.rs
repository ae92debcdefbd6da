//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ndarray::{Array, Dimension, ShapeBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A tensor of uniform values in [-1, 1) from a fixed seed.
pub fn random<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim>
where
    Sh::Dim: Dimension,
{
    let mut rng = StdRng::seed_from_u64(seed);
    Array::from_shape_simple_fn(shape, || rng.gen_range(-1.0..1.0))
}

/// Largest absolute difference, relative to the largest absolute value of `expected` (at least 1).
pub fn rel_err<D: Dimension>(got: &Array<f32, D>, expected: &Array<f32, D>) -> f32 {
    assert_eq!(got.shape(), expected.shape(), "shapes differ");
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(expected).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}
