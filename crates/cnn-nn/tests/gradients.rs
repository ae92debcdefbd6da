//! Finite-difference gradient checks for every layer and a whole small model.
//!
//! The layers compute in f32, so the differences cannot be taken in f64 end to end; instead
//! the losses are accumulated in f64 and the step is chosen so that the difference is exact
//! up to rounding: a large step (0.5) where the layer is linear in the probed operand
//! (convolution, dense, pooling by average), a step below half the 0.02 spacing of the inputs
//! where it is piecewise linear (ReLU, max pooling: no kink or tie within reach), and a small
//! step only for the smooth non-linear ones (sigmoid, tanh, softmax: truncation error
//! ~eps²/6). The tolerance, 1e-3 relative, fails a gradient a few percent off.

use cnn_nn::layers::*;
use cnn_nn::loss::softmax_cross_entropy;
use cnn_nn::ndarray::{ArrayD, Ix2, IxDyn};
use cnn_nn::{Init, Layer, ModelRng, Padding, Sequential, Window};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A step where the layer is linear in the probed operand: exact.
const LINEAR: f32 = 0.5;
/// A step below half the spacing of [`spread_input`]: exact for piecewise-linear layers.
const PIECEWISE: f32 = 0.004;
/// A step for smooth non-linear layers.
const SMOOTH: f32 = 0.01;

/// Inputs spread out so that no ReLU kink or max-pool tie sits within a probe's reach:
/// a shuffled grid of values 0.02 apart, none within 0.01 of zero.
fn spread_input(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let mut values: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0 + 0.5) * 0.02).collect();
    values.shuffle(&mut ModelRng::seed_from_u64(seed));
    ArrayD::from_shape_vec(IxDyn(shape), values).unwrap()
}

fn dot(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Checks `backward` of `layer` against central differences of `L = <forward(x), r>` with
/// step `eps`, for the input and every parameter (up to `probes` entries each).
fn check_layer(mut layer: impl Layer, shape: &[usize], eps: f32, seed: u64) {
    let name = layer.describe().name;
    let mut rng = ModelRng::seed_from_u64(seed);
    layer.build(&shape[1..], &mut Init { rng: &mut rng }).unwrap();
    let x = spread_input(shape, seed);
    let y = layer.forward_train(x.clone());
    let r = ArrayD::from_shape_simple_fn(y.raw_dim(), || rng.gen_range(-1.0f32..1.0));
    let dx = layer.backward(r.clone());
    let grads: Vec<ArrayD<f32>> = layer.params().iter().map(|(_, p)| p.grad.clone()).collect();

    let tol = |numeric: f64, analytic: f32| (numeric - analytic as f64).abs() <= 1e-3 * (0.1 + numeric.abs());
    let probes = 40;

    // the input (through the training forward: BatchNorm's differs from its evaluation)
    let loss_at = |x: &ArrayD<f32>, layer: &mut dyn Layer| dot(&layer.forward_train(x.clone()), &r);
    for i in (0..x.len()).step_by((x.len() / probes).max(1)) {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus.as_slice_mut().unwrap()[i] += eps;
        minus.as_slice_mut().unwrap()[i] -= eps;
        let numeric = (loss_at(&plus, &mut layer) - loss_at(&minus, &mut layer)) / (2.0 * eps as f64);
        let analytic = dx.as_slice().unwrap()[i];
        assert!(tol(numeric, analytic), "{name} on {shape:?}: dx[{i}] numeric {numeric} analytic {analytic}");
    }
    // each parameter
    for (k, grad) in grads.iter().enumerate() {
        for i in (0..grad.len()).step_by((grad.len() / probes).max(1)) {
            let shifted = |delta: f32, layer: &mut dyn Layer| {
                layer.params_mut()[k].1.value.as_slice_mut().unwrap()[i] += delta;
                let l = dot(&layer.forward_train(x.clone()), &r);
                layer.params_mut()[k].1.value.as_slice_mut().unwrap()[i] -= delta;
                l
            };
            let numeric = (shifted(eps, &mut layer) - shifted(-eps, &mut layer)) / (2.0 * eps as f64);
            let analytic = grad.as_slice().unwrap()[i];
            assert!(tol(numeric, analytic), "{name}: param {k}[{i}] numeric {numeric} analytic {analytic}");
        }
    }
}

#[test]
fn conv_layers() {
    check_layer(Conv2d::new(4, 3), &[2, 3, 6, 6], LINEAR, 1);
    check_layer(Conv2d::new(3, 3).stride(2).padding(Padding::Same), &[2, 2, 7, 6], LINEAR, 2);
    check_layer(Conv2d::new(2, 2).kernel(2, 3).strides(1, 2).no_bias(), &[1, 2, 5, 7], LINEAR, 3);
    check_layer(Conv1d::new(3, 3).stride(2).padding(Padding::Same), &[2, 2, 9], LINEAR, 4);
    check_layer(Conv2d::new(4, 3).groups(2).padding(Padding::Same), &[2, 4, 5, 5], LINEAR, 22);
    check_layer(Conv2d::depthwise(3, 2).stride(2).padding(Padding::Same), &[2, 3, 6, 6], LINEAR, 23);
    check_layer(Conv2d::new(3, 3).dilation(2).padding(Padding::Same), &[2, 2, 7, 7], LINEAR, 24);
    check_layer(SeparableConv2d::with_multiplier(4, 3, 2).padding(Padding::Same), &[2, 3, 5, 5], LINEAR, 25);
    // linear in x, in mix and in basis, each on its own
    check_layer(LowRankConv2d::new(5, 2, Window::square(3).padding(Padding::Same)), &[2, 3, 6, 6], LINEAR, 18);
    // the spatial factors of a SAME, strided 3x3 layer on 7x6: a vertical 3x1 convolution then a
    // horizontal 1x3 one, with the windows `split_spatial` gives (asymmetric padding included)
    let (vertical, horizontal) = Window::square(3).stride(2).padding(Padding::Same).split_spatial(7, 6).unwrap();
    let conv = |filters, w: Window| Conv2d::new(filters, 1).kernel(w.kh, w.kw).strides(w.sh, w.sw).padding(w.padding);
    check_layer(Chain::new().add(conv(2, vertical).no_bias()).add(conv(3, horizontal)), &[2, 2, 7, 6], LINEAR, 26);
}

/// A layer shaped like ResNet-20's takes the implicit product, forward and for its input
/// gradient (8 → 8 channels, 3x3 SAME on 8x8): its gradients against finite differences, as
/// a downstream crate sees them.
#[test]
fn conv_layer_on_the_implicit_product() {
    use cnn_nn::cnn_core::Algorithm;
    let same = Window::square(3).padding(Padding::Same);
    assert_eq!(Algorithm::choose(&[2, 8, 8, 8], &[8, 8, 3, 3], &same, 1).unwrap(), Algorithm::Implicit);
    check_layer(Conv2d::new(8, 3).padding(Padding::Same), &[2, 8, 8, 8], LINEAR, 27);
    // strided, like ResNet-20's downsampling layers: the implicit product on phase planes
    let down = Window::square(3).stride(2).padding(Padding::Same);
    assert_eq!(Algorithm::choose(&[2, 8, 8, 8], &[8, 8, 3, 3], &down, 1).unwrap(), Algorithm::Implicit);
    check_layer(Conv2d::new(8, 3).strides(2, 2).padding(Padding::Same), &[2, 8, 8, 8], LINEAR, 28);
}

/// Layers of 8 channels or more on images F(4x4)'s tiles fit (here 12 filters at 24x24) take
/// Winograd's F(4x4, 3x3) on CPUs with AVX-512 or AVX2 (portable code: the implicit product),
/// like ResNet-20's first stage, and layers of 24 channels on 14x14 F(2x2, 3x3), like its
/// second: the layer's forward and all three gradients (the filter gradient by Winograd's tiles
/// read backwards) against the naive loops. (Not by finite
/// differences here: on 4608 inputs spread to ±46, F(4x4)'s own rounding in the forward, a
/// few 1e-6 of the outputs' size, moves the differences by more than their tolerance; the
/// input gradient of F(4x4) is checked against differences of the naive forward in
/// `named_algorithms_agree_with_the_naive_loops`.)
#[test]
fn conv_layers_on_winograd() {
    use cnn_nn::cnn_core::{gemm, reference, Algorithm};
    use cnn_nn::ndarray::Ix4;
    let same = Window::square(3).padding(Padding::Same);
    for (c_in, c_out, side, winograd) in [(8, 12, 24, Algorithm::Winograd4), (24, 24, 14, Algorithm::Winograd)] {
        let expected = if gemm::kernel_name() == "portable" { Algorithm::Implicit } else { winograd };
        assert_eq!(Algorithm::choose(&[2, c_in, side, side], &[c_out, c_in, 3, 3], &same, 1).unwrap(), expected);
        let mut rng = ModelRng::seed_from_u64(33);
        let mut layer = Conv2d::new(c_out, 3).padding(Padding::Same);
        layer.build(&[c_in, side, side], &mut Init { rng: &mut rng }).unwrap();
        let x = ArrayD::from_shape_simple_fn(IxDyn(&[2, c_in, side, side]), || rng.gen_range(-1.0f32..1.0));
        let dy = ArrayD::from_shape_simple_fn(IxDyn(&[2, c_out, side, side]), || rng.gen_range(-1.0f32..1.0));
        let y = layer.forward_train(x.clone());
        let dx = layer.backward(dy.clone());
        let params = layer.params();
        let (w, b) = (params[0].1.value.view().into_dimensionality::<Ix4>().unwrap(), params[1].1.value.view().into_dimensionality().unwrap());
        let (x4, dy4) = (x.view().into_dimensionality::<Ix4>().unwrap(), dy.view().into_dimensionality::<Ix4>().unwrap());
        let want_y = reference::conv2d(x4, w, Some(b), &same).unwrap();
        let want = reference::conv2d_backward(x4, w, dy4, &same).unwrap();
        let close = |got: &ArrayD<f32>, want: &[f32], what: &str| {
            let err = got.iter().zip(want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f32::max);
            assert!(err <= 1e-4, "{what} ({side}x{side}): {err}");
        };
        close(&y, want_y.as_slice().unwrap(), "y");
        close(&dx, want.dx.as_slice().unwrap(), "dx");
        close(&params[0].1.grad, want.dw.as_slice().unwrap(), "dw");
        close(&params[1].1.grad, want.db.as_slice().unwrap(), "db");
    }
}

/// Layers of 32 filters take the direct convolution on CPUs with AVX-512 or AVX2 (portable
/// code takes the lowering, for a 6x6 image padded to 8x8 computes 1.33 outputs per output
/// kept, more than the implicit product's bound): each path of its backward against finite differences —
/// SAME (input gradient by a direct convolution, filter gradient by the lowering), SAME on
/// 9x9 (filter gradient by dot products), VALID 5x5 (col2im), strided.
#[test]
fn conv_layer_on_the_direct_convolution() {
    use cnn_nn::cnn_core::{gemm, Algorithm};
    let same = Window::square(3).padding(Padding::Same);
    let expected = if gemm::kernel_name() == "portable" { Algorithm::Lowered } else { Algorithm::Direct };
    assert_eq!(Algorithm::choose(&[2, 4, 6, 6], &[32, 4, 3, 3], &same, 1).unwrap(), expected);
    check_layer(Conv2d::new(32, 3).padding(Padding::Same), &[2, 4, 6, 6], LINEAR, 29);
    check_layer(Conv2d::new(32, 3).padding(Padding::Same).no_bias(), &[2, 4, 9, 9], LINEAR, 30);
    check_layer(Conv2d::new(32, 3), &[2, 4, 5, 5], LINEAR, 31);
    check_layer(Conv2d::new(32, 3).strides(2, 2).padding(Padding::Same), &[2, 4, 8, 8], LINEAR, 32);
}

/// Algorithms named through `conv2d_with` as a downstream crate would, on layers where
/// `conv2d` may take another — Winograd's F(2x2, 3x3) and F(4x4, 3x3), the direct
/// convolution (on 16, 12 and 6 filters: tiles partly filled): forward and all three gradients of
/// ResNet-20-like layers against the naive loops, and the loss's directional derivative
/// along the input against central differences in f64.
#[test]
fn named_algorithms_agree_with_the_naive_loops() {
    use cnn_nn::cnn_core::{conv2d_backward_with, conv2d_with, reference, Algorithm};
    use cnn_nn::ndarray::Array4;
    let mut state = 7u64;
    let mut random = |shape: [usize; 4]| {
        Array4::from_shape_simple_fn(shape, || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
    };
    for algorithm in [Algorithm::Winograd, Algorithm::Winograd4, Algorithm::Direct] {
        for (c_in, c_out, side, padding) in [(16, 16, 14, Padding::Same), (8, 12, 7, Padding::Same), (4, 6, 9, Padding::Valid)] {
            let win = Window::square(3).padding(padding);
            let (x, w) = (random([2, c_in, side, side]), random([c_out, c_in, 3, 3]));
            let y = conv2d_with(algorithm, x.view(), w.view(), None, &win, 1).unwrap();
            let want = reference::conv2d(x.view(), w.view(), None, &win).unwrap();
            let close = |a: &Array4<f32>, b: &Array4<f32>| a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
            assert!(close(&y, &want), "{} forward {c_in}->{c_out} on {side}x{side}", algorithm.name());
            let dy = random([2, c_out, y.dim().2, y.dim().3]);
            let grads = conv2d_backward_with(algorithm, x.view(), w.view(), dy.view(), &win, 1).unwrap();
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap();
            assert!(close(&grads.dx, &want.dx) && close(&grads.dw, &want.dw), "backward {c_in}->{c_out} on {side}x{side}");
            // L = Σ y·dy; its change along v, in f64, against Σ dx·v
            let v = random([2, c_in, side, side]);
            let loss = |t: f64| -> f64 {
                let moved = &x + &v.mapv(|v| (v as f64 * t) as f32);
                let y = reference::conv2d(moved.view(), w.view(), None, &win).unwrap();
                y.iter().zip(&dy).map(|(&y, &d)| y as f64 * d as f64).sum()
            };
            let numeric = (loss(1e-2) - loss(-1e-2)) / 2e-2;
            let analytic: f64 = grads.dx.iter().zip(&v).map(|(&g, &v)| g as f64 * v as f64).sum();
            assert!((numeric - analytic).abs() <= 1e-3 * (1.0 + numeric.abs()), "{numeric} vs {analytic}");
        }
    }
    // what they cannot compute is refused with their names
    let e = conv2d_with(Algorithm::Winograd, random([1, 2, 8, 8]).view(), random([2, 2, 5, 5]).view(), None, &Window::square(5), 1).unwrap_err();
    assert!(e.to_string().contains("winograd"), "{e}");
    let e = conv2d_with(Algorithm::Direct, random([1, 4, 8, 8]).view(), random([4, 2, 3, 3]).view(), None, &Window::square(3), 2).unwrap_err();
    assert!(e.to_string().contains("direct computes one group"), "{e}");
}

#[test]
fn pooling_layers() {
    check_layer(MaxPool2d::new(2), &[2, 3, 6, 6], PIECEWISE, 5);
    check_layer(MaxPool2d::with_window(Window::square(3).stride(2)), &[2, 2, 7, 7], PIECEWISE, 6);
    check_layer(MaxPool2d::with_window(Window::square(2).stride(2).padding(Padding::uniform(1))), &[2, 2, 5, 5], PIECEWISE, 19);
    check_layer(AvgPool2d::new(2), &[2, 3, 6, 6], LINEAR, 7);
    check_layer(AvgPool2d::with_window(Window::square(3).stride(2).padding(Padding::Same)), &[1, 2, 6, 6], LINEAR, 8);
    check_layer(GlobalAvgPool2d::new(), &[2, 3, 4, 5], LINEAR, 9);
}

#[test]
fn dense_flatten_and_activations() {
    check_layer(Dense::new(5), &[3, 7], LINEAR, 10);
    check_layer(Flatten::new(), &[2, 3, 2, 2], LINEAR, 11);
    check_layer(ReLU::new(), &[2, 3, 4], PIECEWISE, 12);
    check_layer(LeakyReLU::new(0.1), &[2, 3, 4], PIECEWISE, 13);
    check_layer(Sigmoid::new(), &[2, 3, 4], SMOOTH, 14);
    check_layer(Tanh::new(), &[2, 3, 4], SMOOTH, 15);
    check_layer(Softmax::new(), &[3, 6], SMOOTH, 16);
}

#[test]
fn normalisation_layers() {
    // the curvature grows as 1/σ: steps well below the channels' spread (σ ≈ 0.6 and 0.1)
    check_layer(BatchNorm::new(), &[4, 3, 3, 3], SMOOTH, 20);
    check_layer(BatchNorm::new(), &[5, 4], 0.001, 21);
    // large α so the normalisation matters at these input sizes; sizes odd and even
    check_layer(LocalResponseNorm::new(3).constants(2.0, 0.75, 1.0), &[2, 5, 3, 3], SMOOTH, 26);
    check_layer(LocalResponseNorm::new(4).constants(1.0, 0.75, 2.0), &[2, 6, 2, 2], SMOOTH, 27);
}

/// A 3x3 SAME convolution without bias.
fn conv3(c: usize) -> Conv2d {
    Conv2d::new(c, 3).padding(Padding::Same).no_bias()
}

#[test]
fn blocks() {
    // identity shortcut: y = tanh(conv(tanh(conv(x))) + x)
    let main = Chain::new().add(conv3(3)).add(Tanh::new()).add(conv3(3));
    check_layer(Residual::new(main).then(Tanh::new()), &[2, 3, 5, 5], SMOOTH, 30);
    // option A: stride 2 and twice the channels, the shortcut subsampled and zero-padded
    let main = Chain::new().add(conv3(6).stride(2)).add(Tanh::new());
    let shortcut = Chain::new().add(SubsampleZeroPad::new(2, 6));
    check_layer(Residual::new(main).shortcut(shortcut), &[2, 3, 6, 6], SMOOTH, 31);
    // projection shortcut with BatchNorm: a step between its curvature (error ~eps²) and the
    // f32 rounding of the outputs (error ~1/eps)
    let main = Chain::new().add(conv3(4).stride(2)).add(BatchNorm::new());
    let shortcut = Chain::new().add(Conv2d::new(4, 1).stride(2).no_bias()).add(BatchNorm::new());
    check_layer(Residual::new(main).shortcut(shortcut).then(Tanh::new()), &[3, 2, 6, 6], 0.004, 32);
    // an inception-like module: 1x1, 3x3 after a 1x1, a pooled branch, concatenated
    let module = Concat::new()
        .branch(Chain::new().add(Conv2d::new(2, 1)))
        .branch(Chain::new().add(Conv2d::new(2, 1)).add(Tanh::new()).add(conv3(3)))
        .branch(Chain::new().add(AvgPool2d::with_window(Window::square(3).padding(Padding::Same))).add(Conv2d::new(1, 1)));
    check_layer(module, &[2, 3, 5, 5], SMOOTH, 33);
}

#[test]
fn whole_residual_model_with_the_loss() {
    let block = |c: usize| Residual::new(Chain::new().add(conv3(c)).add(Tanh::new()).add(conv3(c))).then(Tanh::new());
    let mut model = Sequential::builder(&[2, 6, 6])
        .add(conv3(3))
        .add(block(3))
        .add(Residual::new(Chain::new().add(conv3(4).stride(2)).add(Tanh::new())).shortcut(Chain::new().add(SubsampleZeroPad::new(2, 4))))
        .add(GlobalAvgPool2d::new())
        .add(Dense::new(5))
        .seed(4)
        .build()
        .unwrap();
    check_model_loss(&mut model, spread_input(&[4, 2, 6, 6], 34), &[0, 3, 4, 1]);
}

#[test]
fn whole_model_with_the_loss() {
    let mut model = Sequential::builder(&[2, 8, 8])
        .add(Conv2d::new(3, 3).padding(Padding::Same))
        .add(Tanh::new())
        .add(AvgPool2d::new(2))
        .add(Conv2d::new(4, 3))
        .add(Sigmoid::new())
        .add(Flatten::new())
        .add(Dense::new(5))
        .seed(3)
        .build()
        .unwrap();
    check_model_loss(&mut model, spread_input(&[4, 2, 8, 8], 17), &[0, 3, 4, 1]);
}

/// Checks every parameter's gradient of the mean cross-entropy of `model` on `x` against
/// central differences (smooth layers only: step [`SMOOTH`]).
fn check_model_loss(model: &mut Sequential, x: ArrayD<f32>, labels: &[usize]) {
    model.zero_grad();
    model.loss_and_gradients(x.clone(), labels).unwrap();
    let grads: Vec<ArrayD<f32>> = model.params_mut().iter().map(|p| p.grad.clone()).collect();
    let loss = |model: &mut Sequential| {
        let logits = model.forward_train(x.clone()).unwrap().into_dimensionality::<Ix2>().unwrap();
        softmax_cross_entropy(logits.view(), labels).unwrap().0 as f64
    };
    let eps = SMOOTH;
    for (k, grad) in grads.iter().enumerate() {
        for i in (0..grad.len()).step_by((grad.len() / 15).max(1)) {
            let mut at = |delta: f32| {
                model.params_mut()[k].value.as_slice_mut().unwrap()[i] += delta;
                let l = loss(model);
                model.params_mut()[k].value.as_slice_mut().unwrap()[i] -= delta;
                l
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let analytic = grad.as_slice().unwrap()[i] as f64;
            assert!((numeric - analytic).abs() <= 1e-3 * (0.1 + numeric.abs()), "param {k}[{i}]: numeric {numeric} analytic {analytic}");
        }
    }
}

#[test]
fn dropout_scales_and_routes_through_its_mask() {
    let mut drop = Dropout::new(0.5);
    let mut rng = ModelRng::seed_from_u64(1);
    drop.build(&[1000], &mut Init { rng: &mut rng }).unwrap();
    let x = ArrayD::ones(IxDyn(&[4, 1000]));
    let y = drop.forward_train(x.clone());
    let kept = y.iter().filter(|&&v| v != 0.0).count();
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0), "kept values are scaled by 1/(1-p)");
    assert!((1800..2200).contains(&kept), "about half kept: {kept}");
    let dx = drop.backward(ArrayD::ones(IxDyn(&[4, 1000])));
    assert_eq!(dx, y, "the gradient goes through the same mask");
    assert_eq!(drop.forward(x.clone()), x, "identity in evaluation");
}

/// The distillation loss written again in f64, straight from its definition.
fn distillation_f64(z: &[Vec<f64>], t: &[Vec<f64>], labels: &[usize], temp: f64, alpha: f64) -> f64 {
    let log_softmax = |row: &[f64], scale: f64| -> Vec<f64> {
        let s: Vec<f64> = row.iter().map(|v| v / scale).collect();
        let log_sum = s.iter().map(|v| v.exp()).sum::<f64>().ln();
        s.iter().map(|v| v - log_sum).collect()
    };
    let n = z.len() as f64;
    z.iter().zip(t).zip(labels).map(|((z, t), &y)| {
        let hard = -log_softmax(z, 1.0)[y];
        let (lp, lq) = (log_softmax(t, temp), log_softmax(z, temp));
        let kl: f64 = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum();
        (1.0 - alpha) * hard + alpha * temp * temp * kl
    }).sum::<f64>() / n
}

#[test]
fn distillation_gradient_matches_finite_differences_in_f64() {
    use cnn_nn::loss::distillation_loss;
    let (n, classes) = (3, 5);
    let z = ndarray::Array2::from_shape_fn((n, classes), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 3.0 - 1.5);
    let t = ndarray::Array2::from_shape_fn((n, classes), |(i, j)| ((i * 5 + j * 2) % 7) as f32 / 2.0 - 1.0);
    let labels = [4, 0, 2];
    for (temp, alpha) in [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0)] {
        let (loss, grad) = distillation_loss(z.view(), t.view(), &labels, temp, alpha).unwrap();
        let rows = |a: &ndarray::Array2<f32>| a.outer_iter().map(|r| r.iter().map(|&v| v as f64).collect()).collect::<Vec<Vec<f64>>>();
        let (zr, tr) = (rows(&z), rows(&t));
        let exact = distillation_f64(&zr, &tr, &labels, temp as f64, alpha as f64);
        assert!((loss as f64 - exact).abs() < 1e-5 * exact.abs().max(1.0), "T {temp}, α {alpha}: {loss} vs {exact}");
        let eps = 1e-6;
        for i in 0..n {
            for j in 0..classes {
                let mut plus = zr.clone();
                plus[i][j] += eps;
                let mut minus = zr.clone();
                minus[i][j] -= eps;
                let numeric = (distillation_f64(&plus, &tr, &labels, temp as f64, alpha as f64) - distillation_f64(&minus, &tr, &labels, temp as f64, alpha as f64)) / (2.0 * eps);
                assert!((grad[[i, j]] as f64 - numeric).abs() < 2e-5, "T {temp}, α {alpha}, [{i}, {j}]: {} vs {numeric}", grad[[i, j]]);
            }
        }
    }
    assert!(distillation_loss(z.view(), t.view(), &labels, 0.0, 0.5).is_err());
    assert!(distillation_loss(z.view(), t.view(), &labels, 2.0, 1.5).is_err());
    assert!(distillation_loss(z.view(), t.slice(ndarray::s![..2, ..]), &labels, 2.0, 0.5).is_err());
}
