//! im2col + GEMM against the naive loops, forward and backward, over a grid of shapes.

#[path = "common/mod.rs"]
mod common;

use cnn_core::{
    conv1d, conv1d_backward, conv1d_output_len, conv2d, conv2d_backward, conv2d_groups, conv2d_groups_backward, reference, CnnError, Padding,
    Window,
};
use common::{random, rel_err};
use ndarray::{Array1, Array3, Axis};
use proptest::prelude::*;

const TOL: f32 = 1e-5;

/// Compares forward and backward of the fast path with the naive loops for one case.
fn check(n: usize, c_in: usize, c_out: usize, h: usize, w: usize, win: Window, seed: u64) {
    let x = random((n, c_in, h, w), seed);
    let f = random((c_out, c_in, win.kh, win.kw), seed + 1);
    let b = random(c_out, seed + 2);
    let case = format!("n={n} c_in={c_in} c_out={c_out} {h}x{w} {win:?}");

    let y = conv2d(x.view(), f.view(), Some(b.view()), &win).unwrap();
    let y_ref = reference::conv2d(x.view(), f.view(), Some(b.view()), &win).unwrap();
    assert!(rel_err(&y, &y_ref) < TOL, "forward {case}: {}", rel_err(&y, &y_ref));

    let dy = random(y.raw_dim(), seed + 3);
    let g = conv2d_backward(x.view(), f.view(), dy.view(), &win).unwrap();
    let g_ref = reference::conv2d_backward(x.view(), f.view(), dy.view(), &win).unwrap();
    assert!(rel_err(&g.dx, &g_ref.dx) < TOL, "dx {case}");
    assert!(rel_err(&g.dw, &g_ref.dw) < TOL, "dw {case}");
    assert!(rel_err(&g.db, &g_ref.db) < TOL, "db {case}");
}

/// As [`check`], for a grouped (or depthwise, `groups = c_in`) convolution.
fn check_groups(n: usize, c_in: usize, c_out: usize, h: usize, w: usize, win: Window, groups: usize, seed: u64) {
    let x = random((n, c_in, h, w), seed);
    let f = random((c_out, c_in / groups, win.kh, win.kw), seed + 1);
    let b = random(c_out, seed + 2);
    let case = format!("n={n} c_in={c_in} c_out={c_out} groups={groups} {h}x{w} {win:?}");

    let y = conv2d_groups(x.view(), f.view(), Some(b.view()), &win, groups).unwrap();
    let y_ref = reference::conv2d_groups(x.view(), f.view(), Some(b.view()), &win, groups).unwrap();
    assert!(rel_err(&y, &y_ref) < TOL, "forward {case}: {}", rel_err(&y, &y_ref));

    let dy = random(y.raw_dim(), seed + 3);
    let g = conv2d_groups_backward(x.view(), f.view(), dy.view(), &win, groups).unwrap();
    let g_ref = reference::conv2d_groups_backward(x.view(), f.view(), dy.view(), &win, groups).unwrap();
    assert!(rel_err(&g.dx, &g_ref.dx) < TOL, "dx {case}");
    assert!(rel_err(&g.dw, &g_ref.dw) < TOL, "dw {case}");
    assert!(rel_err(&g.db, &g_ref.db) < TOL, "db {case}");
}

#[test]
pub fn grouped_and_depthwise() {
    let mut seed = 900;
    // (c_in, c_out, groups): two groups (AlexNet), depthwise with multipliers 1 and 2, four groups
    for (c_in, c_out, groups) in [(4, 6, 2), (3, 3, 3), (3, 6, 3), (8, 4, 4)] {
        for win in [
            Window::square(3),
            Window::square(3).stride(2).padding(Padding::Same),
            Window::new(2, 3).strides(1, 2).dilations(2, 1).padding(Padding::uniform(1)),
        ] {
            seed += 10;
            check_groups(3, c_in, c_out, 7, 6, win, groups, seed);
        }
    }
}

#[test]
fn the_reference_groups_are_independent_convolutions() {
    // a 2-group convolution is two convolutions side by side
    let x = random((2, 4, 5, 5), 1);
    let w = random((6, 2, 3, 3), 2);
    let y = reference::conv2d_groups(x.view(), w.view(), None, &Window::square(3), 2).unwrap();
    let half = |a: usize, b: usize, c: usize, d: usize| reference::conv2d(x.slice(ndarray::s![.., a..b, .., ..]), w.slice(ndarray::s![c..d, .., .., ..]), None, &Window::square(3)).unwrap();
    assert_eq!(y.slice(ndarray::s![.., ..3, .., ..]), half(0, 2, 0, 3));
    assert_eq!(y.slice(ndarray::s![.., 3.., .., ..]), half(2, 4, 3, 6));
}

#[test]
fn groups_must_divide_the_channels() {
    let x = random((1, 4, 5, 5), 1);
    let e = conv2d_groups(x.view(), random((6, 2, 3, 3), 2).view(), None, &Window::square(3), 3).unwrap_err();
    assert!(matches!(e, CnnError::Invalid { what: "groups", .. }), "{e}");
    let e = conv2d_groups(x.view(), random((6, 1, 3, 3), 2).view(), None, &Window::square(3), 2).unwrap_err();
    assert_eq!(e.to_string(), "invalid groups: input [1, 4, 5, 5] has 4 channels, filters [6, 1, 3, 3] take 1 in each of 2 groups");
    assert!(conv2d_groups(x.view(), random((6, 2, 3, 3), 2).view(), None, &Window::square(3), 0).is_err());
}

#[test]
pub fn grid_of_shapes() {
    let paddings = [
        Padding::Valid,
        Padding::Same,
        Padding::uniform(1),
        Padding::Explicit { top: 0, bottom: 2, left: 1, right: 0 },
    ];
    let mut seed = 0;
    for (n, c_in, c_out) in [(1, 1, 1), (2, 3, 4), (5, 8, 3)] {
        for (h, w) in [(7, 7), (8, 6), (5, 9)] {
            for (kh, kw) in [(1, 1), (3, 3), (2, 2), (3, 2), (4, 4)] {
                for (sh, sw) in [(1, 1), (2, 2), (3, 3), (1, 2)] {
                    for padding in paddings {
                        seed += 10;
                        check(n, c_in, c_out, h, w, Window::new(kh, kw).strides(sh, sw).padding(padding), seed);
                    }
                }
            }
        }
    }
}

/// ResNet-20's 3x3 layers through the public functions, whatever algorithm each takes (with
/// AVX2: Winograd's F(4x4) at 28x28, F(2x2) at 14x14, F(4x4) in strips of seven samples at
/// 7x7 — nine samples leave the second strip part-filled — and the direct convolution for the
/// strided ones).
#[test]
fn resnet20_layers() {
    let same = Window::square(3).padding(Padding::Same);
    check(9, 16, 16, 28, 28, same, 6);
    check(9, 16, 32, 28, 28, same.stride(2), 7);
    check(9, 32, 32, 14, 14, same, 8);
    check(9, 32, 64, 14, 14, same.stride(2), 9);
    check(9, 64, 64, 7, 7, same, 10);
}

#[test]
fn kernel_equal_to_input() {
    check(3, 2, 5, 4, 6, Window::new(4, 6), 1);
    check(2, 8, 4, 5, 5, Window::square(5).stride(2), 2);
}

#[test]
pub fn reference_network_layers() {
    // the three conv layers of the reference network, batch 2
    check(2, 1, 32, 28, 28, Window::square(3), 3);
    check(2, 32, 64, 13, 13, Window::square(3), 4);
    check(2, 64, 128, 5, 5, Window::square(3), 5);
}

#[test]
pub fn dilated_kernels() {
    let mut seed = 500;
    for (kh, kw, dh, dw) in [(3, 3, 2, 2), (3, 2, 1, 3), (2, 3, 3, 1)] {
        for padding in [Padding::Valid, Padding::Same, Padding::uniform(2)] {
            for stride in [1, 2] {
                seed += 10;
                check(2, 3, 4, 9, 8, Window::new(kh, kw).stride(stride).dilations(dh, dw).padding(padding), seed);
            }
        }
    }
}

#[test]
pub fn pointwise_convolutions_skip_the_lowering() {
    // 1x1, stride 1, no padding, 64 positions or more: the sample is its own lowered matrix
    check(3, 5, 4, 9, 9, Window::square(1), 51);
    check(2, 7, 3, 8, 12, Window::square(1).padding(Padding::Same), 52);
    // strided or padded 1x1 convolutions still lower (subsampling, or zeros)
    check(2, 5, 4, 16, 16, Window::square(1).stride(2), 53);
    check(2, 5, 4, 9, 9, Window::square(1).padding(Padding::uniform(1)), 54);
    check_groups(2, 6, 6, 9, 9, Window::square(1), 2, 55);
}

#[test]
pub fn large_images_are_lowered_in_bands() {
    // K = 32·9 = 288 and 92 outputs per row: a band holds 2^20 / (288·92) = 39 rows, so the
    // 92 rows go in three bands (and in two at stride 2), forward and backward
    check(2, 32, 4, 92, 92, Window::square(3).padding(Padding::Same), 41);
    check(1, 32, 3, 92, 92, Window::square(3).stride(2).padding(Padding::uniform(1)), 42);
}

#[test]
fn no_bias_is_zero_bias() {
    let x = random((2, 3, 6, 6), 7);
    let f = random((4, 3, 3, 3), 8);
    let y = conv2d(x.view(), f.view(), None, &Window::square(3)).unwrap();
    let zero = Array1::zeros(4);
    let y0 = reference::conv2d(x.view(), f.view(), Some(zero.view()), &Window::square(3)).unwrap();
    assert!(rel_err(&y, &y0) < TOL);
}

#[test]
pub fn non_contiguous_inputs() {
    // a transposed view of the input (H and W swapped) must be read correctly
    let x = random((2, 3, 6, 7), 9);
    let xt = x.view().reversed_axes(); // [w, h, c, n] — then permute back to NCHW order
    let xt = xt.permuted_axes([3, 2, 0, 1]); // [n, c, w, h]: a strided view
    let f = random((4, 3, 3, 3), 10);
    let win = Window::square(3).padding(Padding::Same);
    let y = conv2d(xt, f.view(), None, &win).unwrap();
    let y_ref = reference::conv2d(xt.to_owned().view(), f.view(), None, &win).unwrap();
    assert!(rel_err(&y, &y_ref) < TOL);
}

/// Naive 1-D convolution, written independently of the 2-D code.
fn conv1d_naive(x: &Array3<f32>, w: &Array3<f32>, stride: usize, left: usize, out: usize) -> Array3<f32> {
    let (n, c_in, l) = x.dim();
    let (c_out, _, k) = w.dim();
    Array3::from_shape_fn((n, c_out, out), |(i, f, o)| {
        let mut sum = 0.0;
        for c in 0..c_in {
            for t in 0..k {
                let at = (o * stride + t) as isize - left as isize;
                if at >= 0 && (at as usize) < l {
                    sum += w[[f, c, t]] * x[[i, c, at as usize]];
                }
            }
        }
        sum
    })
}

#[test]
pub fn conv1d_matches_naive_loops() {
    for (l, k, stride, padding, left, out) in [
        (10, 3, 1, Padding::Valid, 0, 8),
        (10, 3, 2, Padding::Same, 0, 5),
        (9, 4, 1, Padding::Same, 1, 9),
        (7, 2, 3, Padding::row(2, 1), 2, 3),
    ] {
        let x = random((3, 2, l), 11);
        let w = random((4, 2, k), 12);
        let win = Window::row(k).strides(1, stride).padding(padding);
        assert_eq!(conv1d_output_len(&win, l).unwrap(), out);
        let y = conv1d(x.view(), w.view(), None, &win).unwrap();
        let y_ref = conv1d_naive(&x, &w, stride, left, out);
        assert!(rel_err(&y, &y_ref) < TOL, "{win:?}");

        // backward: dx of <y, dy> equals the adjoint computed through the 2-D reference
        let dy = random(y.raw_dim(), 13);
        let g = conv1d_backward(x.view(), w.view(), dy.view(), &win).unwrap();
        let g_ref = reference::conv2d_backward(
            x.view().insert_axis(Axis(2)),
            w.view().insert_axis(Axis(2)),
            dy.view().insert_axis(Axis(2)),
            &win,
        )
        .unwrap();
        assert!(rel_err(&g.dx, &g_ref.dx.remove_axis(Axis(2))) < TOL);
        assert!(rel_err(&g.dw, &g_ref.dw.remove_axis(Axis(2))) < TOL);
        assert_eq!(g.db, g_ref.db);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes_agree(
        n in 1usize..4, c_in in 1usize..5, c_out in 1usize..5,
        h in 1usize..10, w in 1usize..10, kh in 1usize..5, kw in 1usize..5,
        sh in 1usize..4, sw in 1usize..4, pad in 0usize..3, same in any::<bool>(), seed in 0u64..1000,
        dh in 1usize..4, dw in 1usize..3,
    ) {
        let padding = if same { Padding::Same } else { Padding::uniform(pad) };
        let win = Window::new(kh, kw).strides(sh, sw).dilations(dh, dw).padding(padding);
        prop_assume!(win.geometry(h, w).is_ok());
        check(n, c_in, c_out, h, w, win, seed);
    }

    #[test]
    fn random_groups_agree(
        n in 1usize..3, groups in 1usize..4, per_in in 1usize..3, per_out in 1usize..3,
        h in 3usize..8, w in 3usize..8, k in 1usize..4, s in 1usize..3, same in any::<bool>(), seed in 0u64..1000,
    ) {
        let win = Window::square(k).stride(s).padding(if same { Padding::Same } else { Padding::Valid });
        prop_assume!(win.geometry(h, w).is_ok());
        check_groups(n, groups * per_in, groups * per_out, h, w, win, groups, seed);
    }
}

#[test]
fn buffers_reused_from_a_nan_convolution_leak_nothing() {
    // the work matrices are pooled per thread and not cleared: a convolution of NaNs first
    // (at every shape the next one uses: one sample per task, groups of samples, bands, and
    // the implicit product's padded samples and spread output gradients)
    let same = Window::square(3).padding(Padding::Same);
    for (n, c, filters, side, win) in [(4, 3, 4, 9, same), (8, 5, 4, 4, Window::square(2)), (2, 32, 4, 92, same), (3, 8, 8, 10, same)] {
        let nan = ndarray::Array4::from_elem((n, c, side, side), f32::NAN);
        let f = random((filters, c, win.kh, win.kw), 7);
        let y = conv2d(nan.view(), f.view(), None, &win).unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "NaN in, NaN out");
        conv2d_backward(nan.view(), f.view(), y.view(), &win).unwrap();
        check(n, c, filters, side, side, win, 70);
    }
}

/// Shapes the implicit product takes (stride 1, 8+ filters, receptive fields of 32+), forward
/// and backward: its input gradient too wherever the padding is within the kernel's reach.
#[test]
pub fn stride_one_shapes_of_the_implicit_product() {
    let explicit = Padding::Explicit { top: 1, bottom: 0, left: 2, right: 1 };
    check(3, 16, 16, 12, 12, Window::square(3).padding(Padding::Same), 80);
    check(2, 8, 12, 10, 9, Window::square(3), 81);
    check(2, 4, 9, 11, 13, Window::square(5).padding(Padding::Same), 82);
    check(2, 12, 8, 9, 10, Window::new(2, 3).padding(explicit), 83);
    check(1, 8, 8, 14, 14, Window::square(3).dilation(2).padding(Padding::Same), 84);
    // padding wider than the kernel's reach: forward implicit, input gradient by col2im
    check(2, 8, 8, 6, 6, Window::square(2).padding(Padding::uniform(2)), 85);
}

/// Every algorithm that can compute a shape, forced by `conv2d_with`, against the naive loops;
/// the ones that cannot are refused with a reason.
#[test]
fn every_algorithm_named_agrees_or_is_refused() {
    use cnn_core::{conv2d_backward_with, conv2d_with, Algorithm};
    let cases = [
        (2, 4, 4, 9, Window::square(3).padding(Padding::Same), 1),
        (2, 4, 6, 9, Window::square(3).stride(2), 1),
        (2, 4, 8, 9, Window::square(3).padding(Padding::Same), 2),
        (2, 4, 8, 9, Window::square(3).padding(Padding::Same), 4),
        (1, 3, 5, 6, Window::square(1), 1),
    ];
    for (seed, &(n, c_in, c_out, side, win, groups)) in cases.iter().enumerate() {
        let x = random((n, c_in, side, side), seed as u64);
        let w = random((c_out, c_in / groups, win.kh, win.kw), 100 + seed as u64);
        let b = random(c_out, 200 + seed as u64);
        let y_ref = reference::conv2d_groups(x.view(), w.view(), Some(b.view()), &win, groups).unwrap();
        let dy = random(y_ref.raw_dim(), 300 + seed as u64);
        let g_ref = reference::conv2d_groups_backward(x.view(), w.view(), dy.view(), &win, groups).unwrap();
        let mut ran = 0;
        for algorithm in Algorithm::ALL {
            let applies = match algorithm {
                Algorithm::Lowered => groups == 1,
                Algorithm::Implicit | Algorithm::Direct => groups == 1,
                Algorithm::Winograd | Algorithm::Winograd4 => groups == 1 && win.sh == 1 && win.kh == 3,
                Algorithm::Grouped => true,
                Algorithm::Depthwise => groups == c_in,
            };
            let y = conv2d_with(algorithm, x.view(), w.view(), Some(b.view()), &win, groups);
            let grads = conv2d_backward_with(algorithm, x.view(), w.view(), dy.view(), &win, groups);
            if !applies {
                let e = y.unwrap_err().to_string();
                assert!(e.contains(algorithm.name()), "case {seed}: {e}");
                assert_eq!(grads.unwrap_err().to_string(), e);
                continue;
            }
            ran += 1;
            let (y, grads) = (y.unwrap(), grads.unwrap());
            let what = format!("case {seed}, {}", algorithm.name());
            assert!(rel_err(&y, &y_ref) < TOL, "forward {what}");
            assert!(rel_err(&grads.dx, &g_ref.dx) < TOL, "dx {what}");
            assert!(rel_err(&grads.dw, &g_ref.dw) < TOL, "dw {what}");
            assert!(rel_err(&grads.db, &g_ref.db) < TOL, "db {what}");
        }
        assert!(ran >= 1, "case {seed}: some algorithm computed it");
    }
}
