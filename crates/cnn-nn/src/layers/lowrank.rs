//! `LowRankConv2d`: a convolution whose lowered filter matrix is stored as two thin factors.

use super::Conv2d;
use crate::layer::{own_params, own_params_mut, BuildError, Describe, Init, Layer, Param, WeightInit};
use cnn_core::lowrank::{lowrank_conv2d, lowrank_conv2d_backward, LowRankFilters};
use cnn_core::Window;
use ndarray::{Array4, ArrayD, ArrayView4, Ix1, Ix2, Ix4};

/// A convolution factorised as `W ≈ mix · basis`: `rank` thin `kh x kw` filters (`basis`)
/// followed by a 1x1 convolution to `filters` channels (`mix`), computed as two GEMMs on one
/// lowering (see [`cnn_core::lowrank`]). Made from a trained [`Conv2d`] by
/// [`crate::compress::factorise`], or from scratch, and fine-tuned like any layer.
///
/// # Shapes
/// - input `[n, c_in, h, w]` → output `[n, filters, oh, ow]`
/// - `mix` `[filters, rank]`, `basis` `[rank, c_in, kh, kw]`, `bias` `[filters]`
pub struct LowRankConv2d {
    filters: usize,
    rank: usize,
    window: Window,
    params: Vec<Param>,
    x: Option<Array4<f32>>,
}

impl LowRankConv2d {
    /// An untrained low-rank convolution (weights drawn at `build`).
    pub fn new(filters: usize, rank: usize, window: Window) -> Self {
        LowRankConv2d { filters, rank, window, params: vec![], x: None }
    }

    /// The factorisation of `conv`'s filters, keeping its window and bias.
    pub fn from_factors(conv: &Conv2d, factors: LowRankFilters) -> Self {
        let filters = factors.mix.nrows();
        let rank = factors.rank();
        let mut params = vec![Param::new("mix", factors.mix.into_dyn()), Param::new("basis", factors.basis.into_dyn())];
        if let Some(bias) = conv.bias() {
            params.push(Param::new("bias", bias.clone()));
        }
        LowRankConv2d { filters, rank, window: *conv.window(), params, x: None }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The window.
    pub fn window(&self) -> &Window {
        &self.window
    }

    fn factors(&self) -> (ndarray::ArrayView2<'_, f32>, ndarray::ArrayView4<'_, f32>) {
        let mix = self.params[0].value.view().into_dimensionality::<Ix2>().expect("mix is 2-D");
        let basis = self.params[1].value.view().into_dimensionality::<Ix4>().expect("basis is 4-D");
        (mix, basis)
    }

    fn run(&self, x: ArrayView4<f32>) -> Array4<f32> {
        let (mix, basis) = self.factors();
        let b = self.params.get(2).map(|b| b.value.view().into_dimensionality::<Ix1>().expect("bias is 1-D"));
        lowrank_conv2d(x, mix, basis, b, &self.window).expect("LowRankConv2d: shapes were checked at build")
    }
}

impl Layer for LowRankConv2d {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let [c_in, h, w] = input else {
            return Err(BuildError::Input("LowRankConv2d needs (channels, height, width) per sample".into()));
        };
        if self.filters == 0 || self.rank == 0 {
            return Err(BuildError::Setting("LowRankConv2d needs at least one filter and a rank of at least 1".into()));
        }
        let g = self.window.geometry(*h, *w)?;
        let (kh, kw) = (self.window.kh, self.window.kw);
        let basis_shape = [self.rank, *c_in, kh, kw];
        if self.params.is_empty() {
            // basis: a plain conv with `rank` filters; mix: a 1x1 conv, followed by the activation
            // the thin filters feed the mix linearly: Glorot; the mix is followed by the activation
            let basis = init.weights(&basis_shape, WeightInit::GlorotUniform)?;
            let mix = init.weights(&[self.filters, self.rank], WeightInit::HeUniform)?;
            self.params = vec![Param::new("mix", mix), Param::new("basis", basis), Param::new("bias", ArrayD::zeros(vec![self.filters]))];
        } else if self.params[1].value.shape() != basis_shape {
            return Err(BuildError::Input(format!("basis {:?} does not fit the input: expected {basis_shape:?}", self.params[1].value.shape())));
        }
        Ok(vec![self.filters, g.oh, g.ow])
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.run(x.view().into_dimensionality().expect("LowRankConv2d input is [n, c, h, w]")).into_dyn()
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = x.into_dimensionality::<Ix4>().expect("LowRankConv2d input is [n, c, h, w]");
        let y = self.run(x.view());
        self.x = Some(x);
        y.into_dyn()
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let x = self.x.take().expect("LowRankConv2d::backward needs a training forward first");
        let dy = dy.into_dimensionality::<Ix4>().expect("LowRankConv2d dy is 4-D");
        let (mix, basis) = self.factors();
        let g = lowrank_conv2d_backward(x.view(), mix, basis, dy.view(), &self.window).expect("LowRankConv2d: shapes were checked at build");
        self.params[0].accumulate(&g.dmix);
        self.params[1].accumulate(&g.dbasis);
        if let Some(bias) = self.params.get_mut(2) {
            bias.accumulate(&g.db);
        }
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
            name: format!("LowRankConv2d({w},r={})", self.rank),
            filters: Some(self.filters),
            padding: Some(w.padding.to_string()),
            is_activation: false,
        }
    }
}
