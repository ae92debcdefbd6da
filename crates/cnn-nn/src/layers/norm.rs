//! Normalisation layers: `BatchNorm` (per channel, over the batch) and `LocalResponseNorm`
//! (AlexNet's, across neighbouring channels).

use cnn_core::vector::widest;
use super::activation;
use crate::layer::{own_params, own_params_mut, BuildError, Describe, Init, Layer, Param};
use ndarray::{Array1, Array3, ArrayD, ArrayView2, ArrayView3, ArrayViewD, Axis, IxDyn, Zip};
use rayon::prelude::*;

/// The `[n, c, rest]` view of an `[n, c, ...]` tensor: every channel's values as one row per
/// sample.
fn channels(x: &ArrayD<f32>) -> ArrayView3<'_, f32> {
    channels_of(x.view())
}

/// [`channels`] of a view.
fn channels_of(x: ArrayViewD<'_, f32>) -> ArrayView3<'_, f32> {
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let rest = x.len() / (n * c).max(1);
    x.into_shape_with_order((n, c, rest)).expect("standard layout")
}

/// Batch normalisation over the channel axis (1) of `[n, c]`, `[n, c, l]` or `[n, c, h, w]`,
/// with PyTorch's conventions (momentum 0.1, eps 1e-5).
///
/// ```text
/// training:   μ, σ² = mean and (biased) variance of the channel over the batch and positions
///             x̂ = (x − μ) / sqrt(σ² + ε)      y = γ·x̂ + β
///             running_mean ← (1 − m)·running_mean + m·μ
///             running_var  ← (1 − m)·running_var  + m·σ²·k/(k − 1)   (unbiased, k values)
/// evaluation: x̂ = (x − running_mean) / sqrt(running_var + ε)
/// backward:   dβ = Σ dy    dγ = Σ dy·x̂    dx = γ/sqrt(σ² + ε) · (dy − mean(dy) − x̂·mean(dy·x̂))
/// ```
///
/// `weight` (γ) and `bias` (β) are trainable; `running_mean` and `running_var` are buffers.
///
/// # Shapes
/// input `[n, c, ...]` → output of the same shape; every tensor of the layer `[c]`
pub struct BatchNorm {
    momentum: f32,
    eps: f32,
    params: Vec<Param>,
    running_mean: ArrayD<f32>,
    running_var: ArrayD<f32>,
    /// What the last training forward leaves for the backward.
    cache: Option<Saved>,
}

/// The input of a training forward, its mean and `1/sqrt(σ² + ε)` per channel (x̂ is
/// recomputed in the backward: one tensor fewer to write), and whether a ReLU was applied in
/// the same pass ([`BatchNorm::forward_train_relu`]; its gradient mask is recomputed too,
/// with γ and β as they are at the backward: the forward's, in any training loop, since an
/// optimiser steps after the backward).
struct Saved {
    x: ArrayD<f32>,
    mean: Array1<f32>,
    inv_std: Array1<f32>,
    relu: bool,
}

impl Default for BatchNorm {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchNorm {
    /// Momentum 0.1 and eps 1e-5, as PyTorch; the channel count is inferred.
    pub fn new() -> Self {
        let empty = ArrayD::zeros(IxDyn(&[0]));
        BatchNorm { momentum: 0.1, eps: 1e-5, params: vec![], running_mean: empty.clone(), running_var: empty, cache: None }
    }

    /// The weight of the new batch in the running statistics (Keras' `1 − momentum`).
    pub fn momentum(self, momentum: f32) -> Self {
        BatchNorm { momentum, ..self }
    }

    /// Added to the variance before the square root (Keras uses 1e-3).
    pub fn eps(self, eps: f32) -> Self {
        BatchNorm { eps, ..self }
    }

    /// γ and β as slices (a value of a dynamic-dimensional array costs an index computation:
    /// per value of flat features, where a plane is one value, it showed).
    fn gamma_beta(&self) -> (&[f32], &[f32]) {
        let [gamma, beta] = [0, 1].map(|i| self.params[i].value.as_slice().expect("a parameter is contiguous"));
        (gamma, beta)
    }

    /// Evaluation mode as one multiply-add per value, `y = x·scale + shift`, with per channel
    /// `scale = γ / sqrt(running_var + ε)` and `shift = β − running_mean·scale`.
    pub(crate) fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let (gamma, beta) = self.gamma_beta();
        let scale: Vec<f32> = self.running_var.iter().zip(gamma).map(|(&v, &g)| g / (v + self.eps).sqrt()).collect();
        let shift = self.running_mean.iter().zip(beta).zip(&scale).map(|((&m, &b), &s)| b - m * s).collect();
        (scale, shift)
    }

    /// `y = γ·x̂ + β` with `x̂ = (x − mean)·inv_std`, plane by plane in parallel, then
    /// `relu(y)` if `relu`.
    fn normalise(&self, x: &ArrayD<f32>, mean: &Array1<f32>, inv_std: &Array1<f32>, relu: bool) -> ArrayD<f32> {
        let (gamma, beta) = self.gamma_beta();
        let (c, rest) = (x.shape()[1], x.len() / (x.shape()[0] * x.shape()[1]).max(1));
        let affine = |plane: usize| {
            let ch = plane % c;
            let (m, s, g, b) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            move |x: f32| g * ((x - m) * s) + b
        };
        let x_s = x.as_slice().expect("standard layout");
        let y = if relu {
            super::par_map(x_s, rest, |plane| {
                let f = affine(plane);
                move |&x: &f32| activation::relu(f(x))
            })
        } else {
            super::par_map(x_s, rest, |plane| {
                let f = affine(plane);
                move |&x: &f32| f(x)
            })
        };
        ArrayD::from_shape_vec(x.raw_dim(), y).expect("one value per input value")
    }

    /// The training forward followed by a `ReLU`, in the normalising pass: a chain runs a
    /// `BatchNorm` and the `ReLU` right after it this way (one pass over the activation where
    /// two layers made two, and no mask stored: the backward recomputes where the output was
    /// positive from `x`). The same values, bit for bit, as the two layers one after the other.
    pub(crate) fn forward_train_relu(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.train(x, true)
    }

    /// [`Layer::forward_train`], with a ReLU after it if `relu`.
    fn train(&mut self, x: ArrayD<f32>, relu: bool) -> ArrayD<f32> {
        let x = super::standard(x);
        let planes = channels(&x);
        let (n, _, rest) = planes.dim();
        let k = (n * rest) as f64;
        // the mean and the variance per channel, from the sums of the values and of their
        // squares in one pass, in f64: E[x²] − E[x]² loses f64's 16 digits to the ratio
        // mean² / variance, which would have to pass 10⁸ before f32's 7 digits felt it
        let sums = channel_sums(planes, planes, |_| |v: f32, _| [v as f64, v as f64 * v as f64]);
        let (mean, var): (Vec<f32>, Vec<f32>) = sums
            .iter()
            .map(|&[sum, squares]| {
                let mu = sum / k;
                (mu as f32, (squares / k - mu * mu).max(0.0) as f32)
            })
            .unzip();
        let (mean, var) = (Array1::from(mean), Array1::from(var));
        let m = self.momentum;
        let unbiased = if k > 1.0 { k / (k - 1.0) } else { 1.0 } as f32;
        Zip::from(&mut self.running_mean).and(&mean.view().into_dyn()).for_each(|r, &mu| *r = (1.0 - m) * *r + m * mu);
        Zip::from(&mut self.running_var).and(&var.view().into_dyn()).for_each(|r, &v| *r = (1.0 - m) * *r + m * v * unbiased);
        let inv_std = var.mapv(|v| 1.0 / (v + self.eps).sqrt());
        let y = self.normalise(&x, &mean, &inv_std, relu);
        self.cache = Some(Saved { x, mean, inv_std, relu });
        y
    }
}

/// Running sums per sum: enough independent additions for the compiler to vectorise and for
/// the adder's latency not to be the limit (a single f64 running sum was about a tenth of a
/// ResNet-20 training step; 8 lanes, one AVX-512 register, still waited on the adder).
const LANES: usize = 32;

/// The `S` sums `Σ term(a, b)` over each channel's values (`a` and `b`: `[n, c, rest]`), in
/// f64, in one pass: `LANES` running sums per sum (value `l` of a plane into lane `l mod
/// LANES`, the samples in order), then added. The order depends on the shape only:
/// deterministic for any number of threads. `term_of(ch)` gives channel `ch`'s term.
///
/// Planes of `LANES` values or more: in parallel over the channels, each channel's planes
/// read as rows. Shorter planes (flat features, `[n, c]`: one value each) would make a
/// channel's values a strided column, a cache line per value: there the channels go in
/// parallel blocks, each block reading its part of every sample in memory order — the same
/// sums in the same order, bit for bit.
fn channel_sums<const S: usize, F: Fn(f32, f32) -> [f64; S]>(a: ArrayView3<f32>, b: ArrayView3<f32>, term_of: impl Fn(usize) -> F + Sync) -> Vec<[f64; S]> {
    let (n, c, rest) = a.dim();
    let added = |lanes: [[f64; LANES]; S]| lanes.map(|lanes| lanes.iter().sum::<f64>());
    if rest >= LANES {
        let of_channel = |ch| widest(#[inline(always)] || lane_sums(a.index_axis(Axis(1), ch), b.index_axis(Axis(1), ch), term_of(ch)));
        return (0..c).into_par_iter().map(|ch| added(of_channel(ch))).collect();
    }
    let block = (super::CHUNK / (n * rest).max(1)).clamp(1, c.max(1));
    let blocks: Vec<Vec<[f64; S]>> = (0..c.div_ceil(block))
        .into_par_iter()
        .map(|k| {
            let channels = k * block..((k + 1) * block).min(c);
            let terms: Vec<F> = channels.clone().map(&term_of).collect();
            let mut lanes = vec![[[0.0f64; LANES]; S]; channels.len()];
            for i in 0..n {
                for ((ch, term), lanes) in channels.clone().zip(&terms).zip(&mut lanes) {
                    for l in 0..rest {
                        for (lanes, t) in lanes.iter_mut().zip(term(a[[i, ch, l]], b[[i, ch, l]])) {
                            lanes[l] += t;
                        }
                    }
                }
            }
            lanes.into_iter().map(added).collect()
        })
        .collect();
    blocks.concat()
}

/// The `LANES` running sums of [`channel_sums`].
#[inline(always)]
fn lane_sums<const S: usize>(a: ArrayView2<f32>, b: ArrayView2<f32>, term: impl Fn(f32, f32) -> [f64; S]) -> [[f64; LANES]; S] {
    let mut lanes = [[0.0f64; LANES]; S];
    for (a, b) in a.rows().into_iter().zip(b.rows()) {
        let (a, b) = (a.to_slice().expect("rows of a standard layout"), b.to_slice().expect("rows of a standard layout"));
        let (mut a, mut b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        for (a, b) in (&mut a).zip(&mut b) {
            for l in 0..LANES {
                let t = term(a[l], b[l]);
                for (lanes, t) in lanes.iter_mut().zip(t) {
                    lanes[l] += t;
                }
            }
        }
        for (l, (&a, &b)) in a.remainder().iter().zip(b.remainder()).enumerate() {
            for (lanes, t) in lanes.iter_mut().zip(term(a, b)) {
                lanes[l] += t;
            }
        }
    }
    lanes
}

impl Layer for BatchNorm {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        let Some(&c) = input.first() else {
            return Err(BuildError::Input("BatchNorm needs (channels, ...) per sample".into()));
        };
        if !(self.eps > 0.0 && (0.0..=1.0).contains(&self.momentum)) {
            return Err(BuildError::Setting(format!("BatchNorm needs eps > 0 and momentum in [0, 1], got {} and {}", self.eps, self.momentum)));
        }
        self.params = vec![Param::new("weight", ArrayD::ones(IxDyn(&[c]))), Param::new("bias", ArrayD::zeros(IxDyn(&[c])))];
        self.running_mean = ArrayD::zeros(IxDyn(&[c]));
        self.running_var = ArrayD::ones(IxDyn(&[c]));
        Ok(input.to_vec())
    }

    /// One pass: `y = x·scale + shift` (see [`BatchNorm::affine`]).
    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let (scale, shift) = self.affine();
        let mut y = super::standard(x);
        let (c, rest) = (y.shape()[1], y.len() / (y.shape()[0] * y.shape()[1]).max(1));
        super::par_chunks_update(y.as_slice_mut().expect("standard layout"), rest, #[inline(always)] |plane, y_p| {
            let (s, t) = (scale[plane % c], shift[plane % c]);
            for v in y_p {
                *v = *v * s + t;
            }
        });
        y
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.train(x, false)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        self.backward_view(dy.view())
    }

    /// Reads `dy` in place: `dx` overwrites the cached input, whose last use it is.
    fn backward_view(&mut self, dy: ArrayViewD<f32>) -> ArrayD<f32> {
        let Saved { x, mean, inv_std, relu } = self.cache.take().expect("BatchNorm::backward needs a training forward first");
        let dy = dy.as_standard_layout();
        let (dyp, xp) = (channels_of(dy.view()), channels(&x));
        let (n, c, rest) = dyp.dim();
        let k = (n * rest) as f32;
        let (gamma, beta) = self.gamma_beta();
        // the gradient at the normalised output: dy, or, with a ReLU after it, dy where the
        // ReLU's output was positive (recomputed from x as the forward computed it)
        let through = |ch: usize| {
            let (m, s, g, b) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            move |d: f32, x: f32| if relu { activation::relu_gradient(d, activation::unit_on(activation::relu(g * ((x - m) * s) + b))) } else { d }
        };
        // dβ = Σ dy and dγ = Σ dy·x̂, per channel in f64
        let sums = channel_sums(dyp, xp, |ch| {
            let (m, s, through) = (mean[ch], inv_std[ch], through(ch));
            move |d: f32, x: f32| {
                let d = through(d, x);
                [d as f64, d as f64 * ((x - m) * s) as f64]
            }
        });
        let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = sums.iter().map(|&[sum, sum_h]| (sum as f32, sum_h as f32)).unzip();
        let (dbeta, dgamma) = (Array1::from(dbeta), Array1::from(dgamma));
        // dx overwrites x (each value reads its own x and dy only): no new activation-sized buffer
        let mut dx = x;
        let dy_s = dy.as_slice().expect("standard layout");
        super::par_chunks_update(dx.as_slice_mut().expect("standard layout"), rest, #[inline(always)] |plane, dx_p| {
            let ch = plane % c;
            let scale = gamma[ch] * inv_std[ch];
            let (mean_dy, mean_dyx) = (dbeta[ch] / k, dgamma[ch] / k);
            let (m, s, through) = (mean[ch], inv_std[ch], through(ch));
            let dy_p = &dy_s[plane * rest..][..rest];
            for (x, &d) in dx_p.iter_mut().zip(dy_p) {
                *x = scale * (through(d, *x) - mean_dy - (*x - m) * s * mean_dyx);
            }
        });
        self.params[0].accumulate(&dgamma);
        self.params[1].accumulate(&dbeta);
        dx
    }

    fn params(&self) -> Vec<(String, &Param)> {
        own_params(&self.params)
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        own_params_mut(&mut self.params)
    }

    fn buffers(&self) -> Vec<(String, &ArrayD<f32>)> {
        vec![("running_mean".into(), &self.running_mean), ("running_var".into(), &self.running_var)]
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut ArrayD<f32>)> {
        vec![("running_mean".into(), &mut self.running_mean), ("running_var".into(), &mut self.running_var)]
    }

    fn describe(&self) -> Describe {
        Describe { name: "BatchNorm".into(), ..Describe::default() }
    }
}

/// Local response normalisation across channels (AlexNet's), as PyTorch defines it:
///
/// ```text
/// y_c = x_c / D_c^β,    D_c = k + (α / size) · Σ_{c' = c − ⌊size/2⌋ ..= c + ⌊(size−1)/2⌋} x_c'²
/// dx_j = dy_j / D_j^β − (2αβ / size) · x_j · Σ_{c : j in c's window} dy_c · x_c / D_c^(β+1)
/// ```
///
/// No parameters. AlexNet uses size 5, α 1e-4, β 0.75, k 2.
///
/// # Shapes
/// input `[n, c, ...]` → output of the same shape
pub struct LocalResponseNorm {
    size: usize,
    alpha: f32,
    beta: f32,
    k: f32,
    /// The input and `D` of the last training forward.
    cache: Option<(ArrayD<f32>, ArrayD<f32>)>,
}

impl LocalResponseNorm {
    /// Over `size` neighbouring channels, with PyTorch's defaults α 1e-4, β 0.75, k 1.
    pub fn new(size: usize) -> Self {
        LocalResponseNorm { size, alpha: 1e-4, beta: 0.75, k: 1.0, cache: None }
    }

    /// The constants α, β and k.
    pub fn constants(self, alpha: f32, beta: f32, k: f32) -> Self {
        LocalResponseNorm { alpha, beta, k, ..self }
    }

    /// The channels `lo..=hi` in the window of channel `c` (of `channels`).
    fn window(&self, c: usize, channels: usize) -> std::ops::RangeInclusive<usize> {
        c.saturating_sub(self.size / 2)..=(c + (self.size - 1) / 2).min(channels - 1)
    }

    /// `x / D^β`.
    fn divide(&self, mut x: ArrayD<f32>, d: &ArrayD<f32>) -> ArrayD<f32> {
        let beta = self.beta;
        Zip::from(&mut x).and(d).for_each(|y, &d| *y /= d.powf(beta));
        x
    }

    /// `D` for every value of `x`.
    fn denominators(&self, x: &ArrayD<f32>) -> ArrayD<f32> {
        let planes = channels(x);
        let (n, c, rest) = planes.dim();
        let squares = planes.mapv(|v| v * v);
        let mut d = Array3::<f32>::from_elem((n, c, rest), self.k);
        let scale = self.alpha / self.size as f32;
        for ch in 0..c {
            for other in self.window(ch, c) {
                let sq = squares.index_axis(Axis(1), other);
                Zip::from(d.index_axis_mut(Axis(1), ch)).and(sq).for_each(|d, &s| *d += scale * s);
            }
        }
        d.into_shape_with_order(x.raw_dim()).expect("same size")
    }
}

impl Layer for LocalResponseNorm {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        if input.is_empty() {
            return Err(BuildError::Input("LocalResponseNorm needs (channels, ...) per sample".into()));
        }
        if self.size == 0 || !(self.k.is_finite() && self.alpha.is_finite() && self.beta.is_finite()) {
            return Err(BuildError::Setting(format!("LocalResponseNorm needs size >= 1 and finite constants, got size {}", self.size)));
        }
        Ok(input.to_vec())
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = super::standard(x);
        let d = self.denominators(&x);
        self.divide(x, &d)
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = super::standard(x);
        let d = self.denominators(&x);
        let y = self.divide(x.clone(), &d);
        self.cache = Some((x, d));
        y
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let (x, d) = self.cache.take().expect("LocalResponseNorm::backward needs a training forward first");
        let dy = super::standard(dy);
        let beta = self.beta;
        // t_c = dy_c · x_c / D_c^(β+1): what channel c sends back to the channels of its window
        let mut t = dy.clone();
        Zip::from(&mut t).and(&x).and(&d).for_each(|t, &x, &d| *t = *t * x / d.powf(beta + 1.0));
        let mut dx = dy;
        Zip::from(&mut dx).and(&d).for_each(|dx, &d| *dx /= d.powf(beta));
        let (xs, ts) = (channels(&x), channels(&t));
        let c = xs.dim().1;
        let scale = 2.0 * self.alpha * beta / self.size as f32;
        let mut dxs = dx.view_mut().into_shape_with_order(xs.dim()).expect("standard layout");
        for ch in 0..c {
            for other in self.window(ch, c) {
                // channel `ch` normalised by `other`: other's gradient gets −scale · x_other · t_ch
                Zip::from(dxs.index_axis_mut(Axis(1), other))
                    .and(xs.index_axis(Axis(1), other))
                    .and(ts.index_axis(Axis(1), ch))
                    .for_each(|dx, &x, &t| *dx -= scale * x * t);
            }
        }
        dx
    }

    fn describe(&self) -> Describe {
        Describe { name: format!("LocalResponseNorm({})", self.size), ..Describe::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::ModelRng;
    use ndarray::array;
    use rand::SeedableRng;

    fn built(input: &[usize]) -> BatchNorm {
        let mut bn = BatchNorm::new();
        bn.build(input, &mut Init { rng: &mut ModelRng::seed_from_u64(0) }).unwrap();
        bn
    }

    #[test]
    fn training_normalises_with_the_batch_and_updates_the_running_statistics() {
        // one channel, values 1, 2, 3, 4 over two samples of two positions:
        // mean 2.5, biased variance 1.25, unbiased 1.25·4/3 = 5/3
        let mut bn = built(&[1, 2]);
        let x = array![[[1.0f32, 2.0]], [[3.0, 4.0]]].into_dyn();
        let y = bn.forward_train(x.clone());
        let s = (1.25f32 + 1e-5).sqrt();
        assert_eq!(y, array![[[-1.5 / s, -0.5 / s]], [[0.5 / s, 1.5 / s]]].into_dyn());
        assert!((bn.running_mean[[0]] - 0.25).abs() < 1e-7);
        assert!((bn.running_var[[0]] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
        // evaluation uses the running statistics, and changes nothing
        let e = bn.forward(x);
        let s = (bn.running_var[[0]] + 1e-5).sqrt();
        assert!((e[[0, 0, 0]] - (1.0 - 0.25) / s).abs() < 1e-6);
        assert!((bn.running_mean[[0]] - 0.25).abs() < 1e-7);
    }

    /// The one-pass variance against the two-pass one in f64, on a channel whose mean is 10⁴
    /// standard deviations (mean² / variance = 10⁸), across the 32 lanes and a remainder.
    #[test]
    fn the_variance_of_values_far_from_zero_keeps_its_digits() {
        let mut bn = built(&[1, 301]);
        let x = ArrayD::from_shape_fn(IxDyn(&[3, 1, 301]), |i| 1000.0 + ((i[0] * 301 + i[2]) * 37 % 101) as f32 / 1000.0 - 0.05);
        let k = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / k;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / k;
        bn.momentum = 1.0;
        bn.forward_train(x);
        assert!((bn.running_mean[[0]] as f64 - mean).abs() < 1e-4, "{} vs {mean}", bn.running_mean[[0]]);
        let unbiased = var * k / (k - 1.0);
        assert!((bn.running_var[[0]] as f64 - unbiased).abs() < 1e-5 * unbiased, "{} vs {unbiased}", bn.running_var[[0]]);
    }

    /// Short planes (flat features and small images: blocks of channels in memory order) sum
    /// as a channel's rows do, bit for bit; and long ones too, on either side of `LANES`.
    #[test]
    fn channel_sums_of_short_planes_are_the_rows_sums() {
        for (case, rest) in [1, 5, LANES - 1, LANES, LANES + 7].into_iter().enumerate() {
            let (n, c) = (9, 300);
            let a = Array3::from_shape_fn((n, c, rest), |(i, ch, l)| ((i * 31 + ch * 17 + l * 7) % 23) as f32 / 3.0 - 3.7);
            let b = Array3::from_shape_fn((n, c, rest), |(i, ch, l)| ((i * 13 + ch * 5 + l) % 11) as f32 / 7.0 + 0.1);
            let term_of = |ch: usize| move |a: f32, b: f32| [a as f64 * (1.0 + ch as f64 / 1000.0), a as f64 * b as f64];
            let sums = channel_sums(a.view(), b.view(), term_of);
            assert_eq!(sums.len(), c);
            for (ch, sum) in sums.iter().enumerate() {
                let rows = lane_sums(a.index_axis(Axis(1), ch), b.index_axis(Axis(1), ch), term_of(ch)).map(|lanes| lanes.iter().sum::<f64>());
                assert_eq!(sum.map(f64::to_bits), rows.map(f64::to_bits), "case {case}, channel {ch}");
            }
        }
    }

    /// Flat features (`[n, c]`: a plane per value) over more than one parallel task of the
    /// element-wise loops (19,200 values; the second task starts inside a sample), against the
    /// definitions in f64: training forward, backward (dx and dγ), evaluation.
    #[test]
    fn flat_features_over_several_tasks_follow_the_definitions() {
        let (n, c) = (64, 300);
        assert!(n * c > crate::layers::CHUNK && !crate::layers::CHUNK.is_multiple_of(c));
        let mut bn = built(&[c]);
        bn.params[0].value = ArrayD::from_shape_fn(IxDyn(&[c]), |i| 0.5 + (i[0] % 7) as f32 / 4.0);
        bn.params[1].value = ArrayD::from_shape_fn(IxDyn(&[c]), |i| (i[0] % 5) as f32 - 2.0);
        let x = ArrayD::from_shape_fn(IxDyn(&[n, c]), |i| ((i[0] * 31 + i[1] * 17) % 23) as f32 / 5.0 + i[1] as f32 / 100.0);
        let dy = ArrayD::from_shape_fn(IxDyn(&[n, c]), |i| ((i[0] * 13 + i[1] * 7) % 11) as f32 / 11.0 - 0.5);
        let y = bn.forward_train(x.clone());
        let dx = bn.backward(dy.clone());
        let e = bn.forward(x.clone());
        for ch in 0..c {
            let xs: Vec<f64> = (0..n).map(|i| x[[i, ch]] as f64).collect();
            let ds: Vec<f64> = (0..n).map(|i| dy[[i, ch]] as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (var + 1e-5).sqrt();
            let (g, b) = (bn.params[0].value[[ch]] as f64, bn.params[1].value[[ch]] as f64);
            let h: Vec<f64> = xs.iter().map(|v| (v - mean) * inv).collect();
            let (mean_d, mean_dh) = (ds.iter().sum::<f64>() / n as f64, ds.iter().zip(&h).map(|(d, h)| d * h).sum::<f64>() / n as f64);
            let (scale, shift) = (g / (bn.running_var[[ch]] as f64 + 1e-5).sqrt(), b - bn.running_mean[[ch]] as f64 * g / (bn.running_var[[ch]] as f64 + 1e-5).sqrt());
            for i in 0..n {
                let close = |got: f32, want: f64, what: &str| assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{what} [{i}, {ch}]: {got} against {want}");
                close(y[[i, ch]], g * h[i] + b, "y");
                close(dx[[i, ch]], g * inv * (ds[i] - mean_d - h[i] * mean_dh), "dx");
                close(e[[i, ch]], xs[i] * scale + shift, "evaluation");
            }
            let dgamma: f64 = ds.iter().zip(&h).map(|(d, h)| d * h).sum();
            assert!((bn.params[0].grad[[ch]] as f64 - dgamma).abs() <= 1e-4 * (1.0 + dgamma.abs()), "dγ[{ch}]");
        }
    }

    #[test]
    fn lrn_divides_by_the_window_of_squares() {
        // channels 1, 2, 3 at one position, size 3, α 3, β 1, k 1: D = 1 + (3/3)·Σ window
        // windows: {0,1} → 1+1+4 = 6, {0,1,2} → 1+1+4+9 = 15, {1,2} → 1+4+9 = 14
        let lrn = LocalResponseNorm::new(3).constants(3.0, 1.0, 1.0);
        let y = lrn.forward(array![[1.0f32, 2.0, 3.0]].into_dyn());
        assert_eq!(y, array![[1.0 / 6.0, 2.0 / 15.0, 3.0 / 14.0]].into_dyn());
    }

    #[test]
    fn gamma_and_beta_scale_and_shift_each_channel() {
        let mut bn = built(&[2]);
        bn.params[0].value = array![2.0f32, 1.0].into_dyn();
        bn.params[1].value = array![0.0f32, 5.0].into_dyn();
        let y = bn.forward_train(array![[1.0f32, 10.0], [3.0, 10.0]].into_dyn());
        // channel 0: x̂ = ∓1 (up to eps), times 2; channel 1: constant, x̂ = 0, plus 5
        assert!((y[[0, 0]] + 2.0).abs() < 1e-4 && (y[[1, 0]] - 2.0).abs() < 1e-4, "{y}");
        assert_eq!((y[[0, 1]], y[[1, 1]]), (5.0, 5.0));
    }
}
