//! Pooling layers: no parameters, the channel count unchanged.

use crate::layer::{BuildError, Describe, Init, Layer};
use cnn_core::{avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward, pool_geometry, Window};
use ndarray::{Array4, ArrayD, Axis, Ix4};

fn pool_build(window: &Window, input: &[usize], what: &str) -> Result<Vec<usize>, BuildError> {
    let [c, h, w] = input else {
        return Err(BuildError::Input(format!("{what} needs (channels, height, width) per sample")));
    };
    let g = pool_geometry(&[1, *c, *h, *w], window)?;
    Ok(vec![*c, g.oh, g.ow])
}

/// Max pooling: the largest value of each window; the backward routes the gradient to it.
///
/// # Shapes
/// input `[n, c, h, w]` → output `[n, c, oh, ow]`
pub struct MaxPool2d {
    window: Window,
    cache: Option<(Array4<u32>, [usize; 4])>,
}

impl MaxPool2d {
    /// A `k x k` window with stride `k` (non-overlapping), VALID.
    pub fn new(k: usize) -> Self {
        MaxPool2d { window: Window::square(k).stride(k), cache: None }
    }

    /// Any window (for example overlapping 3x3 with stride 2).
    pub fn with_window(window: Window) -> Self {
        MaxPool2d { window, cache: None }
    }

    fn run(&self, x: &ArrayD<f32>) -> cnn_core::MaxPool {
        let x = x.view().into_dimensionality::<Ix4>().expect("MaxPool2d input is [n, c, h, w]");
        max_pool2d(x, &self.window).expect("MaxPool2d: shapes were checked at build")
    }
}

impl Layer for MaxPool2d {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        pool_build(&self.window, input, "MaxPool2d")
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.run(&x).y.into_dyn()
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let pool = self.run(&x);
        let [n, c, h, w] = x.shape() else { unreachable!("run checked the rank") };
        self.cache = Some((pool.argmax, [*n, *c, *h, *w]));
        pool.y.into_dyn()
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let (argmax, shape) = self.cache.take().expect("MaxPool2d::backward needs a training forward first");
        let dy = dy.into_dimensionality::<Ix4>().expect("MaxPool2d dy is 4-D");
        max_pool2d_backward(dy.view(), argmax.view(), shape, &self.window).expect("MaxPool2d: shapes match").into_dyn()
    }

    fn describe(&self) -> Describe {
        Describe { name: format!("MaxPool({})", self.window), ..Describe::default() }
    }
}

/// Average pooling: the mean of each window (padding not counted).
///
/// # Shapes
/// input `[n, c, h, w]` → output `[n, c, oh, ow]`
pub struct AvgPool2d {
    window: Window,
    shape: Option<[usize; 4]>,
}

impl AvgPool2d {
    /// A `k x k` window with stride `k`, VALID.
    pub fn new(k: usize) -> Self {
        AvgPool2d { window: Window::square(k).stride(k), shape: None }
    }

    /// Any window.
    pub fn with_window(window: Window) -> Self {
        AvgPool2d { window, shape: None }
    }
}

impl Layer for AvgPool2d {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        pool_build(&self.window, input, "AvgPool2d")
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = x.into_dimensionality::<Ix4>().expect("AvgPool2d input is [n, c, h, w]");
        avg_pool2d(x.view(), &self.window).expect("AvgPool2d: shapes were checked at build").into_dyn()
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.shape = Some(x.shape().try_into().expect("AvgPool2d input is [n, c, h, w]"));
        self.forward(x)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let shape = self.shape.take().expect("AvgPool2d::backward needs a training forward first");
        let dy = dy.into_dimensionality::<Ix4>().expect("AvgPool2d dy is 4-D");
        avg_pool2d_backward(dy.view(), shape, &self.window).expect("AvgPool2d: shapes match").into_dyn()
    }

    fn describe(&self) -> Describe {
        Describe { name: format!("AvgPool({})", self.window), ..Describe::default() }
    }
}

/// Global average pooling: each channel's mean, `[n, c, h, w]` → `[n, c]`.
pub struct GlobalAvgPool2d {
    shape: Option<[usize; 4]>,
}

impl GlobalAvgPool2d {
    /// The layer.
    pub fn new() -> Self {
        GlobalAvgPool2d { shape: None }
    }
}

impl Default for GlobalAvgPool2d {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer for GlobalAvgPool2d {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        match input {
            [c, h, w] if h * w > 0 => Ok(vec![*c]),
            _ => Err(BuildError::Input("GlobalAvgPool2d needs (channels, height, width) per sample, none of them 0".into())),
        }
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.shape = Some(x.shape().try_into().expect("GlobalAvgPool2d input is [n, c, h, w]"));
        self.forward(x)
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = super::standard(x).into_dimensionality::<Ix4>().expect("GlobalAvgPool2d input is [n, c, h, w]");
        let (n, c, h, w) = x.dim();
        let planes = x.into_shape_with_order((n, c, h * w)).expect("contiguous");
        planes.mean_axis(Axis(2)).expect("planes are not empty").into_dyn()
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let [n, c, h, w] = self.shape.take().expect("GlobalAvgPool2d::backward needs a training forward first");
        let share = dy.into_shape_with_order((n, c, 1, 1)).expect("dy is [n, c]") / (h * w) as f32;
        share.broadcast((n, c, h, w)).expect("broadcast over the plane").to_owned().into_dyn()
    }

    fn describe(&self) -> Describe {
        Describe { name: "GlobalAvgPool".into(), ..Describe::default() }
    }
}
