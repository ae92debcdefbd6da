//! Blocks that are more than a chain: a residual block (two paths summed) and parallel
//! branches concatenated along the channels (an inception module). Both hold [`Chain`]s, which
//! may hold blocks again, to any depth.
//!
//! A tensor read by two paths receives the sum of their gradients: that is the whole backward
//! of a skip connection, `dx = dmain + dshortcut`.

use super::{fuse, Chain};
use crate::layer::{prefixed, BuildError, Describe, Init, Layer, Param};
use ndarray::{concatenate, s, Array4, ArrayD, Axis, Ix4, Slice};

/// A residual block: `y = post(main(x) + shortcut(x))`, as in the paper,
/// `y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
///
/// The shortcut is the identity unless given: [`SubsampleZeroPad`] for the CIFAR ResNets'
/// parameter-free "option A", or a chain (a 1x1 convolution and BatchNorm: "option B").
///
/// ```
/// use cnn_nn::layers::{BatchNorm, Chain, Conv2d, ReLU, Residual};
/// use cnn_nn::{Padding, Sequential};
/// let conv_bn = |c| Chain::new().add(Conv2d::new(c, 3).padding(Padding::Same).no_bias()).add(BatchNorm::new());
/// let block = Residual::new(conv_bn(16).add(ReLU::new()).add(conv_bn(16))).then(ReLU::new());
/// let model = Sequential::builder(&[16, 8, 8]).add(block).build().unwrap();
/// assert_eq!(model.output_shape(), &[16, 8, 8]);
/// ```
///
/// # Shapes
/// input `[n, ...]` → output: the main path's, which the shortcut's must equal
pub struct Residual {
    main: Chain,
    shortcut: Chain,
    post: Chain,
}

impl Residual {
    /// `main(x) + x`.
    pub fn new(main: Chain) -> Self {
        Residual { main, shortcut: Chain::new(), post: Chain::new() }
    }

    /// The shortcut path (the identity when not set).
    pub fn shortcut(self, shortcut: Chain) -> Self {
        Residual { shortcut, ..self }
    }

    /// A layer applied after the sum (the ReLU of a ResNet block).
    pub fn then(self, layer: impl Layer + 'static) -> Self {
        Residual { post: self.post.add(layer), ..self }
    }

    /// The three paths with their names; the empty ones (identity) are left out.
    fn paths(&self) -> Vec<(&'static str, &Chain)> {
        let all = [("main", &self.main), ("shortcut", &self.shortcut), ("post", &self.post)];
        all.into_iter().filter(|(name, c)| *name == "main" || !c.layers().is_empty()).collect()
    }

    fn paths_mut(&mut self) -> Vec<(&'static str, &mut Chain)> {
        let all = [("main", &mut self.main), ("shortcut", &mut self.shortcut), ("post", &mut self.post)];
        all.into_iter().filter(|(name, c)| *name == "main" || !c.layers().is_empty()).collect()
    }
}

/// The two paths' outputs added, in the first one's buffer (`build` made their shapes equal),
/// then ReLU'd if `relu`, in the same pass.
fn sum(a: ArrayD<f32>, b: ArrayD<f32>, relu: bool) -> ArrayD<f32> {
    assert_eq!(a.shape(), b.shape(), "Residual: the paths' outputs differ in shape");
    let (mut a, mut b) = (super::standard(a), super::standard(b));
    let (a_s, b_s) = (a.as_slice_mut().expect("standard layout"), b.as_slice_mut().expect("standard layout"));
    if relu {
        super::par_update2(a_s, b_s, |a, b| *a = super::activation::relu(*a + *b));
    } else {
        super::par_update2(a_s, b_s, |a, b| *a += *b);
    }
    a
}

impl Layer for Residual {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let main = Chain::build_child(&mut self.main, "main", input, init)?;
        let shortcut = Chain::build_child(&mut self.shortcut, "shortcut", input, init)?;
        if main != shortcut {
            return Err(BuildError::Input(format!("the main path gives {main:?} but the shortcut gives {shortcut:?}: they must be equal to be summed")));
        }
        Chain::build_child(&mut self.post, "post", &main, init)
    }

    /// The main path reads `x` in place ([`Layer::forward_view`]: no copy when it starts with a
    /// convolution), the shortcut takes it; a ReLU first after the sum is applied in its pass.
    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let (main, shortcut) = (self.main.forward_view(x.view()), self.shortcut.forward(x));
        let (relu, post) = fuse::leading_relu(self.post.layers());
        fuse::forward(post, sum(main, shortcut, relu))
    }

    /// As [`Layer::forward`], a ReLU first after the sum in its pass (its mask kept).
    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let (main, shortcut) = (self.main.forward_train(super::par_clone(x.view())), self.shortcut.forward_train(x));
        match fuse::leading_relu_mut(self.post.layers_mut()) {
            Some((relu, post)) => fuse::forward_train(post, relu.forward_train_sum(main, shortcut)),
            None => self.post.forward_train(sum(main, shortcut, false)),
        }
    }

    /// `dsum = post'(dy)`, then `dx = main'(dsum) + shortcut'(dsum)`: `x` feeds both paths.
    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let dsum = self.post.backward(dy);
        sum(self.main.backward_view(dsum.view()), self.shortcut.backward(dsum), false)
    }

    fn params(&self) -> Vec<(String, &Param)> {
        self.paths().into_iter().flat_map(|(name, c)| prefixed(name, c.params())).collect()
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        self.paths_mut().into_iter().flat_map(|(name, c)| prefixed(name, c.params_mut())).collect()
    }

    fn buffers(&self) -> Vec<(String, &ArrayD<f32>)> {
        self.paths().into_iter().flat_map(|(name, c)| prefixed(name, c.buffers())).collect()
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut ArrayD<f32>)> {
        self.paths_mut().into_iter().flat_map(|(name, c)| prefixed(name, c.buffers_mut())).collect()
    }

    fn children(&self) -> Vec<(String, &dyn Layer)> {
        self.paths().into_iter().map(|(name, c)| (name.to_string(), c as &dyn Layer)).collect()
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer)> {
        self.paths_mut().into_iter().map(|(name, c)| (name.to_string(), c as &mut dyn Layer)).collect()
    }

    fn describe(&self) -> Describe {
        Describe { name: "Residual".into(), ..Describe::default() }
    }

    fn macs(&self, output: &[usize]) -> u64 {
        self.paths().into_iter().map(|(_, c)| c.macs(output)).sum()
    }

    /// The paths' tensors and the sum.
    fn activations(&self, output: &[usize]) -> usize {
        self.paths().into_iter().map(|(_, c)| c.activations(output)).sum::<usize>() + output.iter().product::<usize>()
    }
}

/// Parallel branches on the same input, their outputs concatenated along the channels: an
/// inception module. Branch `i`'s parameters are named `i.…`.
///
/// # Shapes
/// input `[n, ...]` → `[n, Σ c_i, h, w]`, every branch giving `[n, c_i, h, w]`
#[derive(Default)]
pub struct Concat {
    branches: Vec<Chain>,
    /// Channels of each branch's output (after `build`).
    channels: Vec<usize>,
}

impl Concat {
    /// No branches yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a branch.
    pub fn branch(mut self, branch: Chain) -> Self {
        self.branches.push(branch);
        self
    }
}

impl Layer for Concat {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        if self.branches.is_empty() {
            return Err(BuildError::Setting("Concat needs at least one branch".into()));
        }
        let mut outputs = vec![];
        for (i, branch) in self.branches.iter_mut().enumerate() {
            outputs.push(Chain::build_child(branch, &i.to_string(), input, init)?);
        }
        let first = &outputs[0];
        if let Some((i, other)) = outputs.iter().enumerate().find(|(_, o)| o.is_empty() || o.len() != first.len() || o[1..] != first[1..]) {
            return Err(BuildError::Input(format!("branch {i} gives {other:?}, branch 0 gives {first:?}: only the channels (the first axis) may differ")));
        }
        self.channels = outputs.iter().map(|o| o[0]).collect();
        let mut shape = first.clone();
        shape[0] = self.channels.iter().sum();
        Ok(shape)
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let outputs: Vec<ArrayD<f32>> = self.branches.iter().map(|b| b.forward_view(x.view())).collect();
        let views: Vec<_> = outputs.iter().map(|o| o.view()).collect();
        concatenate(Axis(1), &views).expect("branch shapes were checked at build")
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let outputs: Vec<ArrayD<f32>> = self.branches.iter_mut().map(|b| b.forward_train(x.clone())).collect();
        let views: Vec<_> = outputs.iter().map(|o| o.view()).collect();
        concatenate(Axis(1), &views).expect("branch shapes were checked at build")
    }

    /// Each branch gets its slice of the channels of `dy`; `x` feeds every branch, so `dx` is
    /// the sum of theirs.
    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let mut start = 0;
        let mut dx: Option<ArrayD<f32>> = None;
        for (branch, &c) in self.branches.iter_mut().zip(&self.channels) {
            let part = dy.slice_axis(Axis(1), Slice::from(start..start + c)).to_owned();
            start += c;
            let d = branch.backward(part);
            dx = Some(match dx {
                Some(sum) => sum + d,
                None => d,
            });
        }
        dx.expect("at least one branch")
    }

    fn params(&self) -> Vec<(String, &Param)> {
        self.branches.iter().enumerate().flat_map(|(i, b)| prefixed(&i.to_string(), b.params())).collect()
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        self.branches.iter_mut().enumerate().flat_map(|(i, b)| prefixed(&i.to_string(), b.params_mut())).collect()
    }

    fn buffers(&self) -> Vec<(String, &ArrayD<f32>)> {
        self.branches.iter().enumerate().flat_map(|(i, b)| prefixed(&i.to_string(), b.buffers())).collect()
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut ArrayD<f32>)> {
        self.branches.iter_mut().enumerate().flat_map(|(i, b)| prefixed(&i.to_string(), b.buffers_mut())).collect()
    }

    fn children(&self) -> Vec<(String, &dyn Layer)> {
        self.branches.iter().enumerate().map(|(i, b)| (i.to_string(), b as &dyn Layer)).collect()
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer)> {
        self.branches.iter_mut().enumerate().map(|(i, b)| (i.to_string(), b as &mut dyn Layer)).collect()
    }

    fn describe(&self) -> Describe {
        Describe { name: format!("Concat({} branches)", self.branches.len()), ..Describe::default() }
    }

    fn macs(&self, output: &[usize]) -> u64 {
        self.branches.iter().map(|b| b.macs(output)).sum()
    }

    /// The branches' tensors and their concatenation.
    fn activations(&self, output: &[usize]) -> usize {
        self.branches.iter().map(|b| b.activations(output)).sum::<usize>() + output.iter().product::<usize>()
    }
}

/// The CIFAR ResNets' parameter-free shortcut ("option A"): every `stride`-th pixel, and the
/// channels zero-padded to `channels`, the extra ones split evenly before and after.
///
/// # Shapes
/// input `[n, c, h, w]` → `[n, channels, ceil(h / stride), ceil(w / stride)]`
pub struct SubsampleZeroPad {
    stride: usize,
    channels: usize,
    /// The input shape of the last training forward.
    input: Option<[usize; 4]>,
}

impl SubsampleZeroPad {
    /// Subsample by `stride`, pad to `channels`.
    pub fn new(stride: usize, channels: usize) -> Self {
        SubsampleZeroPad { stride, channels, input: None }
    }

    /// Zero channels added before the input's `c`.
    fn before(&self, c: usize) -> usize {
        (self.channels - c) / 2
    }
}

impl Layer for SubsampleZeroPad {
    fn build(&mut self, input: &[usize], _: &mut Init) -> Result<Vec<usize>, BuildError> {
        let [c, h, w] = input else {
            return Err(BuildError::Input("SubsampleZeroPad needs (channels, height, width) per sample".into()));
        };
        if self.stride == 0 || self.channels < *c {
            return Err(BuildError::Setting(format!("SubsampleZeroPad needs a stride >= 1 and at least the {c} input channels, got stride {} and {} channels", self.stride, self.channels)));
        }
        Ok(vec![self.channels, h.div_ceil(self.stride), w.div_ceil(self.stride)])
    }

    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let x = x.into_dimensionality::<Ix4>().expect("SubsampleZeroPad input is [n, c, h, w]");
        let (n, c, h, w) = x.dim();
        let s = self.stride as isize;
        let mut y = Array4::zeros((n, self.channels, h.div_ceil(self.stride), w.div_ceil(self.stride)));
        let before = self.before(c);
        y.slice_mut(s![.., before..before + c, .., ..]).assign(&x.slice(s![.., .., ..;s, ..;s]));
        y.into_dyn()
    }

    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.input = Some(x.shape().try_into().expect("SubsampleZeroPad input is [n, c, h, w]"));
        self.forward(x)
    }

    /// The gradient of the kept pixels, zero elsewhere (the padding channels had no input).
    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let [n, c, h, w] = self.input.take().expect("SubsampleZeroPad::backward needs a training forward first");
        let dy = dy.into_dimensionality::<Ix4>().expect("SubsampleZeroPad dy is 4-D");
        let s = self.stride as isize;
        let before = self.before(c);
        let mut dx = Array4::zeros((n, c, h, w));
        dx.slice_mut(s![.., .., ..;s, ..;s]).assign(&dy.slice(s![.., before..before + c, .., ..]));
        dx.into_dyn()
    }

    fn describe(&self) -> Describe {
        Describe { name: format!("SubsampleZeroPad(s={},c={})", self.stride, self.channels), ..Describe::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::ModelRng;
    use crate::layers::ReLU;
    use rand::SeedableRng;

    /// The paths' sum over several of the element-wise loops' chunks: `relu(x) + x`, and its
    /// gradient `relu'(x)·dy + dy`, value by value.
    #[test]
    fn residual_sums_over_many_chunks() {
        let side = 64;
        let n = 2 * crate::layers::CHUNK / (side * side) + 1;
        let mut block = Residual::new(Chain::new().add(ReLU::new()));
        block.build(&[1, side, side], &mut Init { rng: &mut ModelRng::seed_from_u64(0) }).unwrap();
        let x = ArrayD::from_shape_fn(vec![n, 1, side, side], |i| (i[2] as f32 - 31.5) * (1.0 + i[0] as f32 + i[3] as f32));
        let y = block.forward_train(x.clone());
        let dx = block.backward(ArrayD::from_elem(x.raw_dim(), 0.5));
        for ((&x, &y), &dx) in x.iter().zip(&y).zip(&dx) {
            assert_eq!(y, x.max(0.0) + x);
            assert_eq!(dx, if x > 0.0 { 1.0 } else { 0.5 });
        }
        assert_eq!(block.forward(x.clone()), y, "inference sums the same way");
    }

    /// The ReLU after the sum, in the sum's pass in training, against the sum and then the
    /// ReLU (a ReLU in a chain of its own is not fused), over several chunks and a part of
    /// one: outputs, input gradients, NaN kept both ways.
    #[test]
    fn the_relu_after_the_sum_trains_as_a_layer_after_it() {
        let side = 64;
        let n = 2 * crate::layers::CHUNK / (side * side) + 1;
        let built = |mut block: Residual| {
            block.build(&[1, side, side], &mut Init { rng: &mut ModelRng::seed_from_u64(0) }).unwrap();
            block
        };
        let mut fused = built(Residual::new(Chain::new().add(ReLU::new())).then(ReLU::new()));
        let mut apart = built(Residual::new(Chain::new().add(ReLU::new())).then(Chain::new().add(ReLU::new())));
        let mut x = ArrayD::from_shape_fn(vec![n, 1, side, side], |i| (i[2] as f32 - 31.5) * (1.0 + i[0] as f32) - i[3] as f32);
        x[[0, 0, 3, 4]] = f32::NAN;
        let mut dy = ArrayD::from_shape_fn(x.raw_dim(), |i| 0.25 + (i[3] % 5) as f32);
        dy[[1, 0, 0, 0]] = f32::NAN;
        let (y, y_apart) = (fused.forward_train(x.clone()), apart.forward_train(x.clone()));
        let (dx, dx_apart) = (fused.backward(dy.clone()), apart.backward(dy));
        for (what, a, b) in [("output", &y, &y_apart), ("input gradient", &dx, &dx_apart)] {
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()), "{what} {i}: {p} against {q}");
            }
        }
        // relu(relu(x) + x) is 0 where x ≤ 0
        let (off, zero) = (x.iter().filter(|v| **v <= 0.0).count(), y.iter().filter(|v| **v == 0.0).count());
        assert!(off > x.len() / 4 && zero == off, "{off} inputs ≤ 0, {zero} zero outputs");
        assert!(y[[0, 0, 3, 4]].is_nan() && dx[[1, 0, 0, 0]].is_nan());
    }
}
