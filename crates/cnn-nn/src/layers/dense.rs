//! `Dense`: a fully connected layer, `y = x · Wᵀ + b`.

use crate::layer::{own_params, own_params_mut, BuildError, Describe, Init, Layer, Param, WeightInit};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayD, Axis, Ix2};

/// Fully connected layer: every output is a weighted sum of every input, plus a bias.
///
/// # Shapes
/// - input `[n, in]` → output `[n, units]`
/// - weight `[units, in]` (PyTorch's layout), bias `[units]`
///
/// ```text
/// y  = x · Wᵀ + b      [n, units]
/// dW = dyᵀ · x         [units, in]
/// db = Σ_n dy          [units]
/// dx = dy · W          [n, in]
/// ```
pub struct Dense {
    units: usize,
    init: WeightInit,
    params: Vec<Param>,
    x: Option<Array2<f32>>,
}

impl Dense {
    /// A layer with `units` outputs; the input size is inferred.
    pub fn new(units: usize) -> Self {
        Dense { units, init: WeightInit::default(), params: vec![], x: None }
    }

    /// How the weights are drawn (He uniform unless set; Glorot for a last layer).
    pub fn init(self, init: WeightInit) -> Self {
        Dense { init, ..self }
    }

    fn weight(&self) -> ndarray::ArrayView2<'_, f32> {
        self.params[0].value.view().into_dimensionality::<Ix2>().expect("weight is 2-D")
    }

    fn run(&self, x: ndarray::ArrayView2<f32>) -> Array2<f32> {
        let b = self.params[1].value.view().into_dimensionality::<ndarray::Ix1>().expect("bias is 1-D");
        // y [n, units] = b (broadcast) + x [n, in] · Wᵀ [in, units]
        let mut y = b.broadcast((x.nrows(), self.units)).expect("bias broadcasts").to_owned();
        cnn_core::threads::init(); // the best BLAS kernels before the first product
        general_mat_mul(1.0, &x, &self.weight().t(), 1.0, &mut y);
        y
    }
}

impl Layer for Dense {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let [fan_in] = input else {
            return Err(BuildError::Input("Dense needs a flat input per sample; add Flatten before it".into()));
        };
        if self.units == 0 {
            return Err(BuildError::Setting("Dense needs at least one unit".into()));
        }
        let weight = init.weights(&[self.units, *fan_in], self.init)?;
        self.params = vec![Param::new("weight", weight), Param::new("bias", ArrayD::zeros(vec![self.units]))];
        Ok(vec![self.units])
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.run(x.view().into_dimensionality().expect("Dense input is [n, in]")).into_dyn()
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = x.into_dimensionality::<Ix2>().expect("Dense input is [n, in]");
        let y = self.run(x.view());
        self.x = Some(x);
        y.into_dyn()
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let x = self.x.take().expect("Dense::backward needs a training forward first");
        let dy = dy.into_dimensionality::<Ix2>().expect("Dense dy is [n, units]");
        self.params[0].accumulate(&dy.t().dot(&x)); // [units, in]
        self.params[1].accumulate(&dy.sum_axis(Axis(0)));
        dy.dot(&self.weight()).into_dyn() // [n, in]
    }

    fn params(&self) -> Vec<(String, &Param)> {
        own_params(&self.params)
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        own_params_mut(&mut self.params)
    }

    fn describe(&self) -> Describe {
        Describe { name: "Dense".into(), ..Describe::default() }
    }
}
