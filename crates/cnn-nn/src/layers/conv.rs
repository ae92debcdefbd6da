//! Convolution layers: `Conv2d` and `Conv1d`, calling cnn-core's im2col kernels.

use crate::layer::{own_params, own_params_mut, BuildError, Describe, Init, Layer, Param, WeightInit};
use cnn_core::{conv1d, conv1d_backward, conv1d_output_len, conv2d_activated, conv2d_groups_backward, conv2d_params_backward, Activation, Padding, Window};
use ndarray::{Array1, Array3, Array4, ArrayD, ArrayView3, ArrayView4, ArrayViewD, CowArray, Ix1, Ix3, Ix4};

/// How a convolution's input channels are split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Groups {
    /// This many groups of channels, each with its share of the filters (1: a full convolution).
    Count(usize),
    /// One group per input channel, `multiplier` filters each: a depthwise convolution.
    Depthwise { multiplier: usize },
}

/// 2-D convolution: `filters` filters of `kh x kw` kernels over all input channels (or over
/// their group's, for a grouped or depthwise convolution), plus bias.
///
/// ```
/// use cnn_nn::layers::Conv2d;
/// use cnn_nn::Padding;
/// let conv = Conv2d::new(32, 3).stride(1).padding(Padding::Valid);
/// let alexnet_conv2 = Conv2d::new(256, 5).padding(Padding::uniform(2)).groups(2);
/// let depthwise = Conv2d::depthwise(3, 1).padding(Padding::Same);
/// ```
///
/// # Shapes
/// - input `[n, c_in, h, w]` → output `[n, filters, oh, ow]`
/// - weight `[filters, c_in / groups, kh, kw]`, bias `[filters]`
pub struct Conv2d {
    filters: usize,
    window: Window,
    groups: Groups,
    /// The number of groups, once built (a depthwise layer learns it from its input).
    group_count: usize,
    use_bias: bool,
    init: WeightInit,
    params: Vec<Param>,
    x: Option<ndarray::Array4<f32>>,
}

impl Conv2d {
    /// `filters` square `k x k` filters, stride 1, VALID, with bias. Input channels are inferred.
    pub fn new(filters: usize, k: usize) -> Self {
        Conv2d { filters, window: Window::square(k), groups: Groups::Count(1), group_count: 1, use_bias: true, init: WeightInit::default(), params: vec![], x: None }
    }

    /// A (full) convolution with the given filters `[filters, c_in, kh, kw]`, optional bias
    /// `[filters]` and window: trained weights put into a model (the spatial low-rank
    /// factors of [`crate::compress`], say). It keeps them when built for an input of `c_in`
    /// channels; building it for another input (or with a bias of another length) is an
    /// error, not a silent re-initialisation.
    pub fn from_weights(weight: Array4<f32>, bias: Option<ndarray::Array1<f32>>, window: Window) -> Self {
        let (filters, _, kh, kw) = weight.dim();
        let mut params = vec![Param::new("weight", weight.into_dyn())];
        let use_bias = bias.is_some();
        params.extend(bias.map(|b| Param::new("bias", b.into_dyn())));
        Conv2d { filters, window: Window { kh, kw, ..window }, use_bias, params, ..Conv2d::new(filters, kh) }
    }

    /// A depthwise `k x k` convolution: each input channel with its own `multiplier` kernels,
    /// `c_in · multiplier` output channels, no bias (as Keras' `DepthwiseConv2D` in Xception;
    /// add one with [`Conv2d::with_bias`]).
    pub fn depthwise(k: usize, multiplier: usize) -> Self {
        Conv2d { groups: Groups::Depthwise { multiplier }, use_bias: false, ..Conv2d::new(0, k) }
    }

    /// Split the channels into `groups` groups (AlexNet's two towers: 2).
    pub fn groups(self, groups: usize) -> Self {
        Conv2d { groups: Groups::Count(groups), ..self }
    }

    /// The same dilation on both axes.
    pub fn dilation(self, d: usize) -> Self {
        Conv2d { window: self.window.dilation(d), ..self }
    }

    /// With a bias term (the default, but for [`Conv2d::depthwise`]).
    pub fn with_bias(self) -> Self {
        Conv2d { use_bias: true, ..self }
    }

    /// Every filter sees every input channel (one group): what low-rank factorisation needs.
    pub fn is_full(&self) -> bool {
        self.groups == Groups::Count(1)
    }

    /// The number of groups for `c_in` input channels, and the number of filters.
    fn groups_for(&self, c_in: usize) -> (usize, usize) {
        match self.groups {
            Groups::Count(g) => (g, self.filters),
            Groups::Depthwise { multiplier } => (c_in, c_in * multiplier),
        }
    }

    /// A non-square kernel.
    pub fn kernel(self, kh: usize, kw: usize) -> Self {
        Conv2d { window: Window { kh, kw, ..self.window }, ..self }
    }

    /// The same stride on both axes.
    pub fn stride(self, s: usize) -> Self {
        Conv2d { window: self.window.stride(s), ..self }
    }

    /// Vertical and horizontal strides.
    pub fn strides(self, sh: usize, sw: usize) -> Self {
        Conv2d { window: self.window.strides(sh, sw), ..self }
    }

    /// The padding rule.
    pub fn padding(self, padding: Padding) -> Self {
        Conv2d { window: self.window.padding(padding), ..self }
    }

    /// Without a bias term.
    pub fn no_bias(self) -> Self {
        Conv2d { use_bias: false, ..self }
    }

    /// How the filters are drawn (He uniform unless set).
    pub fn init(self, init: WeightInit) -> Self {
        Conv2d { init, ..self }
    }

    /// The window (kernel, stride, padding).
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// The filters, `[filters, c_in, kh, kw]` (after `build`).
    pub fn weight(&self) -> Option<&ArrayD<f32>> {
        self.params.first().map(|p| &p.value)
    }

    /// The bias, `[filters]`, if the layer has one (after `build`).
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.params.get(1).map(|p| &p.value)
    }

    /// Adds a backward pass's gradients to the parameters'.
    fn accumulate(&mut self, dw: &Array4<f32>, db: &Array1<f32>) {
        self.params[0].accumulate(dw);
        if let Some(bias) = self.params.get_mut(1) {
            bias.accumulate(db);
        }
    }

    /// The convolution of `x`, with a BatchNorm's `(scale, shift)` per output channel folded in
    /// if given (filter `f` times `scale[f]`, bias `b[f]·scale[f] + shift[f]`) and `activation`
    /// applied as the outputs are stored: `activation(norm(conv(x)))` in one pass (`fuse.rs`).
    fn run(&self, x: ArrayView4<f32>, norm: Option<&(Vec<f32>, Vec<f32>)>, activation: Activation) -> Array4<f32> {
        let w = self.params[0].value.view().into_dimensionality::<Ix4>().expect("weight is 4-D");
        let b = self.params.get(1).map(|b| b.value.view().into_dimensionality::<Ix1>().expect("bias is 1-D"));
        let (w, b) = match norm {
            Some((scale, shift)) => {
                let mut folded = w.to_owned();
                folded.outer_iter_mut().zip(scale).for_each(|(mut filter, &s)| filter *= s);
                let bias = Array1::from_shape_fn(scale.len(), |f| b.map_or(0.0, |b| b[f]) * scale[f] + shift[f]);
                (CowArray::from(folded), Some(CowArray::from(bias)))
            }
            None => (CowArray::from(w), b.map(CowArray::from)),
        };
        let y = conv2d_activated(x, w.view(), b.as_ref().map(|b| b.view()), &self.window, self.group_count, activation);
        y.expect("Conv2d: shapes were checked at build")
    }

    /// Inference with what follows the convolution fused in (see [`Conv2d::run`]).
    pub(crate) fn forward_fused(&self, x: ArrayViewD<f32>, norm: Option<&(Vec<f32>, Vec<f32>)>, activation: Activation) -> ArrayD<f32> {
        self.run(x.into_dimensionality().expect("Conv2d input is [n, c, h, w]"), norm, activation).into_dyn()
    }

    /// The cached input of the training forward and `dy`, for a backward pass.
    fn backward_operands(&mut self, dy: ArrayD<f32>) -> (Array4<f32>, Array4<f32>) {
        let x = self.x.take().expect("Conv2d::backward needs a training forward first");
        (x, dy.into_dimensionality().expect("Conv2d dy is [n, c, oh, ow]"))
    }
}

impl Layer for Conv2d {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let [c_in, h, w] = input else {
            return Err(BuildError::Input("Conv2d needs (channels, height, width) per sample".into()));
        };
        let (groups, filters) = self.groups_for(*c_in);
        if filters == 0 {
            return Err(BuildError::Setting("Conv2d needs at least one filter".into()));
        }
        if groups == 0 || c_in % groups != 0 || filters % groups != 0 {
            return Err(BuildError::Setting(format!("{groups} groups must divide the {c_in} input channels and the {filters} filters")));
        }
        let g = self.window.geometry(*h, *w)?;
        let (kh, kw) = (self.window.kh, self.window.kw);
        let shape = [filters, c_in / groups, kh, kw];
        self.filters = filters;
        self.group_count = groups;
        // weights it already has (given by `from_weights`) are kept, and must fit
        if let Some(weight) = self.params.first() {
            let bias_fits = self.params.get(1).is_none_or(|b| b.value.shape() == [filters]);
            if weight.value.shape() != shape || !bias_fits {
                let bias = self.params.get(1).map(|b| b.value.shape().to_vec());
                return Err(BuildError::Input(format!("its filters {:?} (bias {bias:?}) do not fit: this input needs filters {shape:?} and a bias of {filters}", weight.value.shape())));
            }
            return Ok(vec![filters, g.oh, g.ow]);
        }
        self.params = vec![Param::new("weight", init.weights(&shape, self.init)?)];
        if self.use_bias {
            self.params.push(Param::new("bias", ArrayD::zeros(vec![filters])));
        }
        Ok(vec![filters, g.oh, g.ow])
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.forward_view(x.view())
    }

    fn forward_view(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        self.forward_fused(x, None, Activation::Identity)
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = x.into_dimensionality::<Ix4>().expect("Conv2d input is [n, c, h, w]");
        let y = self.run(x.view(), None, Activation::Identity);
        self.x = Some(x);
        y.into_dyn()
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let (x, dy) = self.backward_operands(dy);
        let w = self.params[0].value.view().into_dimensionality::<Ix4>().expect("weight is 4-D");
        let g = conv2d_groups_backward(x.view(), w, dy.view(), &self.window, self.group_count).expect("Conv2d: shapes were checked at build");
        self.accumulate(&g.dw, &g.db);
        g.dx.into_dyn()
    }

    fn backward_params(&mut self, dy: ArrayD<f32>) {
        let (x, dy) = self.backward_operands(dy);
        let w = self.params[0].value.view().into_dimensionality::<Ix4>().expect("weight is 4-D");
        let (dw, db) = conv2d_params_backward(x.view(), w, dy.view(), &self.window, self.group_count).expect("Conv2d: shapes were checked at build");
        self.accumulate(&dw, &db);
    }

    fn params(&self) -> Vec<(String, &Param)> {
        own_params(&self.params)
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        own_params_mut(&mut self.params)
    }

    fn describe(&self) -> Describe {
        let w = &self.window;
        let kind = match self.groups {
            Groups::Count(1) => String::new(),
            Groups::Count(g) => format!(",g={g}"),
            Groups::Depthwise { multiplier } => format!(",depthwise x{multiplier}"),
        };
        Describe { name: format!("Conv2d({w}{kind})"), filters: Some(self.filters), padding: Some(w.padding.to_string()), is_activation: false }
    }
}

/// 1-D convolution over `[n, c, l]` signals, through the same im2col machinery as 2-D: the
/// signal is an image one row high and the window a [`Window::row`].
///
/// # Shapes
/// - input `[n, c_in, l]` → output `[n, filters, ol]`
/// - weight `[filters, c_in, k]`, bias `[filters]`
pub struct Conv1d {
    filters: usize,
    window: Window,
    init: WeightInit,
    params: Vec<Param>,
    x: Option<ndarray::Array3<f32>>,
}

impl Conv1d {
    /// `filters` filters of length `k`, stride 1, VALID, with bias.
    pub fn new(filters: usize, k: usize) -> Self {
        Conv1d { filters, window: Window::row(k), init: WeightInit::default(), params: vec![], x: None }
    }

    /// The stride along the signal.
    pub fn stride(self, s: usize) -> Self {
        Conv1d { window: self.window.strides(1, s), ..self }
    }

    /// The padding rule: [`Padding::Valid`], [`Padding::Same`] or [`Padding::row`] (padding
    /// that would add rows is refused at build).
    pub fn padding(self, padding: Padding) -> Self {
        Conv1d { window: self.window.padding(padding), ..self }
    }

    /// How the filters are drawn (He uniform unless set).
    pub fn init(self, init: WeightInit) -> Self {
        Conv1d { init, ..self }
    }

    fn run(&self, x: ArrayView3<f32>) -> Array3<f32> {
        let w = self.params[0].value.view().into_dimensionality::<Ix3>().expect("weight is 3-D");
        let b = self.params[1].value.view().into_dimensionality().expect("bias is 1-D");
        conv1d(x, w, Some(b), &self.window).expect("Conv1d: shapes were checked at build")
    }
}

impl Layer for Conv1d {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let [c_in, l] = input else {
            return Err(BuildError::Input("Conv1d needs (channels, length) per sample".into()));
        };
        if self.filters == 0 {
            return Err(BuildError::Setting("Conv1d needs at least one filter".into()));
        }
        let ol = conv1d_output_len(&self.window, *l)?;
        let k = self.window.kw;
        let weight = init.weights(&[self.filters, *c_in, k], self.init)?;
        self.params = vec![Param::new("weight", weight), Param::new("bias", ArrayD::zeros(vec![self.filters]))];
        Ok(vec![self.filters, ol])
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.forward_view(x.view())
    }

    fn forward_view(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        self.run(x.into_dimensionality().expect("Conv1d input is [n, c, l]")).into_dyn()
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = x.into_dimensionality::<Ix3>().expect("Conv1d input is [n, c, l]");
        let y = self.run(x.view());
        self.x = Some(x);
        y.into_dyn()
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let x = self.x.take().expect("Conv1d::backward needs a training forward first");
        let w = self.params[0].value.view().into_dimensionality::<Ix3>().expect("weight is 3-D");
        let dy = dy.into_dimensionality::<Ix3>().expect("Conv1d dy is [n, c, ol]");
        let g = conv1d_backward(x.view(), w, dy.view(), &self.window).expect("Conv1d: shapes were checked at build");
        self.params[0].accumulate(&g.dw);
        self.params[1].accumulate(&g.db);
        g.dx.into_dyn()
    }

    fn params(&self) -> Vec<(String, &Param)> {
        own_params(&self.params)
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        own_params_mut(&mut self.params)
    }

    fn describe(&self) -> Describe {
        let w = &self.window;
        Describe {
            name: format!("Conv1d(f={},s={})", w.kw, w.sw),
            filters: Some(self.filters),
            padding: Some(w.padding.to_string()),
            is_activation: false,
        }
    }
}
