//! Element-wise activations and softmax. No parameters; shapes unchanged.

use crate::layer::{BuildError, Describe, Init, Layer};
use cnn_core::vector::widest;
use rayon::prelude::*;
use ndarray::{ArrayD, Axis, Zip};

/// An element-wise function and its derivative, written in terms of the output `y` (so only
/// the output is cached).
macro_rules! elementwise {
    ($(#[$doc:meta])* $name:ident, $label:literal,
     forward: |$x:ident| $f:expr, backward: |$y:ident| $df:expr) => {
        $(#[$doc])*
        #[derive(Default)]
        pub struct $name {
            y: Option<ArrayD<f32>>,
        }

        impl $name {
            /// The activation.
            pub fn new() -> Self {
                Self::default()
            }
        }

        impl Layer for $name {
            fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
                Ok(input.to_vec())
            }

            fn forward(&self, mut x: ArrayD<f32>) -> ArrayD<f32> {
                x.par_mapv_inplace(|$x| $f);
                x
            }

            fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
                let y = self.forward(x);
                self.y = Some(super::par_clone(y.view()));
                y
            }

            fn backward(&mut self, mut dy: ArrayD<f32>) -> ArrayD<f32> {
                let y = self.y.take().expect(concat!($label, "::backward needs a training forward first"));
                Zip::from(&mut dy).and(&y).par_for_each(|d, &$y| *d *= $df);
                dy
            }

            fn describe(&self) -> Describe {
                Describe { name: $label.into(), is_activation: true, ..Describe::default() }
            }
        }
    };
}

/// `max(0, x)`; the gradient is 1 where `x > 0` (where `y > 0`), else 0. NaN stays NaN
/// (as in PyTorch): `x.max(0.0)` would turn it into 0 and hide a broken input; −0 gives +0.
/// A select, not a branch: on real activations the sign is unpredictable.
#[derive(Default)]
pub struct ReLU {
    /// Where the last training forward's output was positive, the only thing its gradient
    /// needs: a byte per value, where a copy of the output would be four (and a fresh buffer).
    passes: Option<Vec<bool>>,
}

impl ReLU {
    /// The activation.
    pub fn new() -> Self {
        Self::default()
    }

    /// The training forward of `a + b`, in `a`'s buffer: a residual block's sum, this ReLU
    /// and its mask in one pass (see `fuse.rs`).
    pub(crate) fn forward_train_sum(&mut self, a: ArrayD<f32>, b: ArrayD<f32>) -> ArrayD<f32> {
        assert_eq!(a.shape(), b.shape(), "Residual: the paths' outputs differ in shape");
        self.train(a, Some(&super::standard(b)))
    }

    /// `relu(y)`, or `relu(y + add)`, with the mask of where it passes kept for the backward.
    fn train(&mut self, y: ArrayD<f32>, add: Option<&ArrayD<f32>>) -> ArrayD<f32> {
        let mut y = super::standard(y);
        let mut passes = vec![false; y.len()];
        let (y_s, on_s) = (y.as_slice_mut().expect("standard layout"), &mut passes[..]);
        match add.map(|b| b.as_slice().expect("standard layout")) {
            None => super::par_update2(y_s, on_s, |v, on| {
                *v = relu(*v);
                *on = unit_on(*v);
            }),
            Some(b) => y_s.par_chunks_mut(super::CHUNK).zip(b.par_chunks(super::CHUNK)).zip(on_s.par_chunks_mut(super::CHUNK)).for_each(|((y, b), on)| {
                widest(#[inline(always)] || {
                    for ((v, &b), on) in y.iter_mut().zip(b).zip(on) {
                        *v = relu(*v + b);
                        *on = unit_on(*v);
                    }
                })
            }),
        }
        self.passes = Some(passes);
        y
    }
}

/// `max(0, x)`, NaN kept, +0 for −0. `x + 0.0` rather than `x` (the same value but for −0):
/// with `x` itself, `*v = relu(*v)` is "store 0 where v < 0", which the compiler turns into
/// masked stores, slow on AVX2 CPUs such as AMD's Zen 3 (the ReLUs took 6.8% of ResNet-20's
/// inference there, 1.0% with plain stores of a new value in every lane).
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    std::hint::select_unpredictable(x < 0.0, 0.0, x + 0.0)
}

/// Whether a ReLU's output `v` lets the gradient through (positive; not NaN, not 0).
#[inline(always)]
pub(crate) fn unit_on(v: f32) -> bool {
    v > 0.0
}

/// The gradient `d` through a ReLU: itself where the unit passed, else 0 — a product, not a
/// select: a NaN gradient stays NaN where the unit was off.
#[inline(always)]
pub(crate) fn relu_gradient(d: f32, on: bool) -> f32 {
    d * if on { 1.0 } else { 0.0 }
}

impl Layer for ReLU {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        Ok(input.to_vec())
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let mut y = super::standard(x);
        super::par_update(y.as_slice_mut().expect("standard layout"), |v| *v = relu(*v));
        y
    }

    /// The output and where it passes, in one pass.
    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.train(x, None)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let mut passes = self.passes.take().expect("ReLU::backward needs a training forward first");
        let mut dy = super::standard(dy);
        let d = dy.as_slice_mut().expect("standard layout");
        assert_eq!(d.len(), passes.len(), "ReLU::backward: dy must have the shape of the forward's output");
        super::par_update2(d, &mut passes, |d, on| *d = relu_gradient(*d, *on));
        dy
    }

    fn describe(&self) -> Describe {
        Describe { name: "ReLU".into(), is_activation: true, ..Describe::default() }
    }
}

elementwise!(
    /// `1 / (1 + e^-x)`; the gradient is `y (1 - y)`.
    Sigmoid, "Sigmoid",
    forward: |x| 1.0 / (1.0 + (-x).exp()),
    backward: |y| y * (1.0 - y)
);

elementwise!(
    /// `tanh x`; the gradient is `1 - y²`.
    Tanh, "Tanh",
    forward: |x| x.tanh(),
    backward: |y| 1.0 - y * y
);

/// `x` for `x > 0`, else `slope · x`.
pub struct LeakyReLU {
    slope: f32,
    x: Option<ArrayD<f32>>,
}

impl LeakyReLU {
    /// With the given negative slope (0.01 is usual).
    pub fn new(slope: f32) -> Self {
        LeakyReLU { slope, x: None }
    }
}

impl Layer for LeakyReLU {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        if !self.slope.is_finite() {
            return Err(BuildError::Setting(format!("LeakyReLU slope must be finite, got {}", self.slope)));
        }
        Ok(input.to_vec())
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let slope = self.slope;
        x.mapv(|v| if v > 0.0 { v } else { slope * v })
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let y = self.forward(x.view().to_owned());
        self.x = Some(x);
        y
    }

    fn backward(&mut self, mut dy: ArrayD<f32>) -> ArrayD<f32> {
        let x = self.x.take().expect("LeakyReLU::backward needs a training forward first");
        let slope = self.slope;
        Zip::from(&mut dy).and(&x).for_each(|d, &v| *d *= if v > 0.0 { 1.0 } else { slope });
        dy
    }

    fn describe(&self) -> Describe {
        Describe { name: format!("LeakyReLU({})", self.slope), is_activation: true, ..Describe::default() }
    }
}

/// Softmax over the last axis: `y_i = e^{x_i - max x} / Σ_j e^{x_j - max x}`.
///
/// As the last layer of a classifier it turns logits into probabilities for
/// [`crate::Sequential::predict`]; training skips it and uses the fused, numerically stable
/// [`crate::loss::softmax_cross_entropy`] on the logits instead.
#[derive(Default)]
pub struct Softmax {
    y: Option<ArrayD<f32>>,
}

impl Softmax {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Softmax along the last axis, in place, shifted by the maximum (a NaN anywhere in a row
/// makes the whole row NaN).
pub(crate) fn softmax_rows(x: &mut ArrayD<f32>) {
    let last = Axis(x.ndim() - 1);
    for mut row in x.lanes_mut(last) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
}

impl Layer for Softmax {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        Ok(input.to_vec())
    }

    fn forward(&self, mut x: ArrayD<f32>) -> ArrayD<f32> {
        softmax_rows(&mut x);
        x
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let y = self.forward(x);
        self.y = Some(y.clone());
        y
    }

    /// `dx = y ⊙ (dy − Σ dy ⊙ y)` along the last axis.
    fn backward(&mut self, mut dy: ArrayD<f32>) -> ArrayD<f32> {
        let y = self.y.take().expect("Softmax::backward needs a training forward first");
        let last = Axis(dy.ndim() - 1);
        for (mut d, y) in dy.lanes_mut(last).into_iter().zip(y.lanes(last)) {
            let dot = d.dot(&y);
            Zip::from(&mut d).and(&y).for_each(|d, &y| *d = y * (*d - dot));
        }
        dy
    }

    fn describe(&self) -> Describe {
        Describe { name: "Softmax".into(), is_activation: true, ..Describe::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn relu_passes_the_gradient_where_its_output_was_positive_and_keeps_nan() {
        let mut relu = ReLU::new();
        let y = relu.forward_train(array![[-1.0f32, 2.0, 0.0, f32::NAN]].into_dyn());
        assert_eq!(y.slice(ndarray::s![0, ..3]), ndarray::aview1(&[0.0, 2.0, 0.0]));
        assert!(y[[0, 3]].is_nan(), "NaN in, NaN out");
        let dx = relu.backward(array![[5.0f32, 6.0, 7.0, 8.0]].into_dyn());
        assert_eq!(dx, array![[0.0f32, 6.0, 0.0, 0.0]].into_dyn());
        // a broken gradient stays broken where the unit was off
        relu.forward_train(array![[-1.0f32]].into_dyn());
        assert!(relu.backward(array![[f32::NAN]].into_dyn())[[0, 0]].is_nan());
    }

    /// Over several of the element-wise loops' chunks (and a part of one), value by value
    /// as defined (−0 to +0, bit for bit): the chunks' loops are compiled for the CPU's
    /// widest vectors.
    #[test]
    fn relu_over_many_chunks_is_its_definition() {
        let len = 3 * crate::layers::CHUNK + 5;
        let x = ArrayD::from_shape_fn(vec![len], |i| match i[0] % 7 { 0 => f32::NAN, 1 => -0.0, k => (k as f32 - 3.5) * i[0] as f32 });
        let dy = ArrayD::from_shape_fn(vec![len], |i| 1.0 + i[0] as f32);
        let mut relu = ReLU::new();
        let (y, eval) = (relu.forward_train(x.clone()), relu.forward(x.clone()));
        let dx = relu.backward(dy.clone());
        for i in 0..len {
            let want = if x[i] <= 0.0 { 0.0 } else { x[i] };
            assert!(y[i].to_bits() == want.to_bits() && eval[i].to_bits() == want.to_bits(), "y[{i}] = {} for x = {}", y[i], x[i]);
            assert_eq!(dx[i], if want > 0.0 { dy[i] } else { 0.0 }, "dx[{i}]");
        }
    }
}
