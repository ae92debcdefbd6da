//! `SeparableConv2d`: a depthwise `k x k` convolution, then a pointwise 1x1 one (Keras'
//! `SeparableConv2D`, the building block of Xception).

use super::Conv2d;
use crate::layer::{prefixed, BuildError, Describe, Init, Layer, Param};
use crate::Padding;
use ndarray::ArrayD;

/// Depthwise-separable convolution: each input channel filtered on its own (`k x k`,
/// `multiplier` kernels per channel, no bias), then mixed by `filters` 1x1 filters (with a bias
/// unless [`SeparableConv2d::no_bias`]). Per position it costs `c_in·m·k² + c_in·m·filters`
/// multiply-adds instead of a full convolution's `c_in·k²·filters`.
///
/// ```
/// use cnn_nn::layers::SeparableConv2d;
/// use cnn_nn::{Padding, Sequential};
/// let model = Sequential::builder(&[32, 8, 8]).add(SeparableConv2d::new(64, 3).padding(Padding::Same).no_bias()).build().unwrap();
/// assert_eq!(model.num_params(), 32 * 9 + 32 * 64); // Keras: 2,336
/// ```
///
/// # Shapes
/// - input `[n, c_in, h, w]` → output `[n, filters, oh, ow]`
/// - `depthwise.weight` `[c_in·m, 1, k, k]`, `pointwise.weight` `[filters, c_in·m, 1, 1]`, `pointwise.bias` `[filters]`
pub struct SeparableConv2d {
    depthwise: Conv2d,
    pointwise: Conv2d,
}

impl SeparableConv2d {
    /// `filters` outputs from `k x k` depthwise kernels (one per channel), stride 1, VALID,
    /// with bias.
    pub fn new(filters: usize, k: usize) -> Self {
        SeparableConv2d::with_multiplier(filters, k, 1)
    }

    /// As [`SeparableConv2d::new`] with `multiplier` depthwise kernels per input channel.
    pub fn with_multiplier(filters: usize, k: usize, multiplier: usize) -> Self {
        SeparableConv2d { depthwise: Conv2d::depthwise(k, multiplier), pointwise: Conv2d::new(filters, 1) }
    }

    /// The stride of the depthwise step.
    pub fn stride(self, s: usize) -> Self {
        SeparableConv2d { depthwise: self.depthwise.stride(s), ..self }
    }

    /// The padding of the depthwise step.
    pub fn padding(self, padding: Padding) -> Self {
        SeparableConv2d { depthwise: self.depthwise.padding(padding), ..self }
    }

    /// Without the pointwise bias (Xception's layers, followed by BatchNorm).
    pub fn no_bias(self) -> Self {
        SeparableConv2d { pointwise: self.pointwise.no_bias(), ..self }
    }
}

impl Layer for SeparableConv2d {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let mid = self.depthwise.build(input, init).map_err(|e| e.within("depthwise", "Conv2d", input))?;
        self.pointwise.build(&mid, init).map_err(|e| e.within("pointwise", "Conv2d", &mid))
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.pointwise.forward(self.depthwise.forward(x))
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let mid = self.depthwise.forward_train(x);
        self.pointwise.forward_train(mid)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let dmid = self.pointwise.backward(dy);
        self.depthwise.backward(dmid)
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut p = prefixed("depthwise", self.depthwise.params());
        p.extend(prefixed("pointwise", self.pointwise.params()));
        p
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut p = prefixed("depthwise", self.depthwise.params_mut());
        p.extend(prefixed("pointwise", self.pointwise.params_mut()));
        p
    }

    fn describe(&self) -> Describe {
        let window = self.depthwise.window();
        Describe { name: format!("SeparableConv2d({window})"), filters: self.pointwise.describe().filters, padding: Some(window.padding.to_string()), is_activation: false }
    }
}
