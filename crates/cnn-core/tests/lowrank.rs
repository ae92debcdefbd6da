//! Truncated-SVD low-rank convolution: Eckart–Young, full-rank equivalence, gradients, policies.

mod common;

use cnn_core::CnnError;
use cnn_core::lowrank::{lowrank_conv2d, lowrank_conv2d_backward, max_useful_rank, svd_filters, RankPolicy};
use cnn_core::{conv2d, reference, Padding, Window};
use common::{random, rel_err};
use ndarray::Array2;

#[test]
fn truncation_error_is_the_discarded_spectrum() {
    // Eckart–Young: ||W - W_k||_F = sqrt(sum of the discarded squared singular values)
    let w = random((64, 32, 3, 3), 1);
    let svd = svd_filters(w.view()).unwrap();
    assert_eq!(svd.full_rank(), 64);
    assert!(svd.s.windows(2).into_iter().all(|p| p[0] >= p[1]), "sorted, largest first");
    for k in [1, 8, 24, 63, 64] {
        let approx = svd.truncate(k).reconstruct();
        let diff = (&w - &approx).mapv(|v| (v as f64).powi(2)).sum().sqrt();
        let predicted = svd.truncation_error(k);
        assert!((diff - predicted).abs() <= 1e-4 * (1.0 + predicted), "rank {k}: {diff} vs {predicted}");
    }
    assert!(svd.truncation_error(64) < 1e-12);
}

#[test]
fn full_rank_reproduces_the_layer() {
    for (shape, win) in [
        ((3, 32, 13, 13), Window::square(3)),
        ((2, 8, 9, 9), Window::square(3).stride(2).padding(Padding::Same)),
        ((2, 1, 28, 28), Window::square(3)),
    ] {
        let x = random(shape, 2);
        let w = random((16, shape.1, 3, 3), 3);
        let b = random(16, 4);
        let f = svd_filters(w.view()).unwrap().truncate(usize::MAX);
        let y = conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
        let y_low = lowrank_conv2d(x.view(), f.mix.view(), f.basis.view(), Some(b.view()), &win).unwrap();
        assert!(rel_err(&y_low, &y) < 1e-4, "{win:?}: {}", rel_err(&y_low, &y));
    }
}

#[test]
fn backward_matches_the_naive_gradient_through_the_product() {
    // y = conv(x, mix·basis): dx is the naive dx with W = mix·basis, and the factors' gradients
    // follow from the naive dW by the chain rule: dmix = dW·basisᵀ, dbasis = mixᵀ·dW.
    let x = random((3, 4, 7, 7), 5);
    let w = random((6, 4, 3, 3), 6);
    let win = Window::square(3).padding(Padding::Same);
    let f = svd_filters(w.view()).unwrap().truncate(3);
    let dy = random((3, 6, 7, 7), 7);
    let g = lowrank_conv2d_backward(x.view(), f.mix.view(), f.basis.view(), dy.view(), &win).unwrap();
    let w_k = f.reconstruct();
    let naive = reference::conv2d_backward(x.view(), w_k.view(), dy.view(), &win).unwrap();
    let dw: Array2<f32> = naive.dw.into_shape_with_order((6, 36)).unwrap();
    let basis = f.basis.to_shape((3, 36)).unwrap();
    assert!(rel_err(&g.dx, &naive.dx) < 1e-5);
    assert!(rel_err(&g.dmix, &dw.dot(&basis.t())) < 1e-5);
    assert!(rel_err(&g.dbasis.into_shape_with_order((3, 36)).unwrap(), &f.mix.t().dot(&dw)) < 1e-5);
    assert!(rel_err(&g.db, &naive.db) < 1e-5);
    // and the forward is the naive forward with W = mix·basis
    let y = lowrank_conv2d(x.view(), f.mix.view(), f.basis.view(), None, &win).unwrap();
    assert!(rel_err(&y, &reference::conv2d(x.view(), w_k.view(), None, &win).unwrap()) < 1e-5);
}

#[test]
fn policies_pick_the_ranks_they_promise() {
    let w = random((64, 32, 3, 3), 8);
    let svd = svd_filters(w.view()).unwrap();
    let energy = |k: usize| svd.s.iter().take(k).map(|v| v * v).sum::<f64>() / svd.s.iter().map(|v| v * v).sum::<f64>();
    for fraction in [0.5, 0.9, 0.99] {
        let k = svd.rank_for(RankPolicy::Energy(fraction)).unwrap();
        assert!(energy(k) >= fraction && energy(k - 1) < fraction, "energy {fraction}: rank {k}");
    }
    let (c_out, patch) = (64.0, 288.0);
    for factor in [2.0, 4.0] {
        let k = svd.rank_for(RankPolicy::FlopReduction(factor)).unwrap();
        let ratio = |k: usize| c_out * patch / (k as f64 * (c_out + patch));
        assert!(ratio(k) >= factor && ratio(k + 1) < factor, "{factor}x: rank {k}");
    }
    assert_eq!(svd.rank_for(RankPolicy::Fixed(8)).unwrap(), 8);
    assert_eq!(svd.rank_for(RankPolicy::Fixed(1000)).unwrap(), 64);
    // the first reference layer (32 filters, K = 9): ranks above 7 cost more than the layer
    assert_eq!(max_useful_rank(32, 9), 7);
    assert_eq!(max_useful_rank(64, 288), 52);
}

#[test]
fn mismatched_factors_are_errors() {
    let x = random((1, 4, 5, 5), 9);
    let mix = Array2::<f32>::zeros((6, 3));
    let basis = random((2, 4, 3, 3), 10);
    let e = lowrank_conv2d(x.view(), mix.view(), basis.view(), None, &Window::square(3)).unwrap_err();
    assert_eq!(e.to_string(), "shape mismatch for low-rank mix [c_out, k] vs basis [k, ...]: expected [3], got [2]");
}

#[test]
fn non_finite_weights_and_bad_policies_are_refused() {
    // an infinite weight used to hang LAPACK at 100% CPU, a NaN gave an opaque LAPACK code
    for bad in [f32::INFINITY, f32::NAN] {
        let mut w = random((4, 2, 3, 3), 5);
        w[[1, 0, 2, 1]] = bad;
        let e = svd_filters(w.view()).unwrap_err();
        assert!(matches!(e, CnnError::NonFinite { what: "filters", ref index, .. } if index == &[1, 0, 2, 1]), "{e}");
    }
    let svd = svd_filters(random((4, 2, 3, 3), 6).view()).unwrap();
    for policy in [RankPolicy::Energy(f64::NAN), RankPolicy::Energy(0.0), RankPolicy::Energy(1.5), RankPolicy::FlopReduction(0.0), RankPolicy::FlopReduction(f64::INFINITY), RankPolicy::Fixed(0)] {
        let e = svd.rank_for(policy).unwrap_err();
        assert!(matches!(e, CnnError::Invalid { what: "rank policy", .. }), "{policy:?}: {e}");
    }
}
