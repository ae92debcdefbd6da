//! Truncated-SVD low-rank convolution: Eckart–Young, full-rank equivalence, gradients, policies.

mod common;

use cnn_core::CnnError;
use cnn_core::lowrank::{lowrank_conv2d, lowrank_conv2d_backward, max_useful_rank, svd_filters, svd_filters_as, Decomposition, Factors, LowRankFilters, RankPolicy};
use cnn_core::{conv2d, reference, Padding, Window};
use common::{random, rel_err};
use ndarray::Array2;

/// The channel factors of a truncated SVD.
fn channel(f: Factors) -> LowRankFilters {
    match f {
        Factors::Channel(f) => f,
        other => panic!("expected channel factors, got {other:?}"),
    }
}

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
        let f = channel(svd_filters(w.view()).unwrap().truncate(usize::MAX));
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
    let f = channel(svd_filters(w.view()).unwrap().truncate(3));
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

#[test]
fn the_spatial_decomposition_obeys_eckart_young_for_its_reshaping() {
    let w = random((24, 16, 3, 3), 11);
    let svd = svd_filters_as(w.view(), Decomposition::Spatial).unwrap();
    // [c_in·kh, kw·c_out] = [48, 72]: full rank 48
    assert_eq!((svd.u.dim(), svd.vt.dim(), svd.full_rank()), ((48, 48), (48, 72), 48));
    assert!(svd.s.windows(2).into_iter().all(|p| p[0] >= p[1]), "sorted, largest first");
    for k in [1, 6, 24, 47, 48] {
        let approx = svd.truncate(k).reconstruct();
        let diff = (&w - &approx).mapv(|v| (v as f64).powi(2)).sum().sqrt();
        let predicted = svd.truncation_error(k);
        assert!((diff - predicted).abs() <= 1e-4 * (1.0 + predicted), "rank {k}: {diff} vs {predicted}");
        // the best rank-k approximation: moving a factor makes it worse
        if let Factors::Spatial(mut f) = svd.truncate(k) {
            f.vertical[[0, 0, 0, 0]] += 0.05;
            let moved = (&w - &Factors::Spatial(f).reconstruct()).mapv(|v| (v as f64).powi(2)).sum().sqrt();
            assert!(moved > diff, "rank {k}: a moved factor gives {moved}, not above {diff}");
        } else {
            panic!("spatial factors expected");
        }
    }
    assert!(svd.truncation_error(48) < 1e-12);
}

#[test]
fn spatial_factors_at_full_rank_are_the_layer_as_two_convolutions() {
    // a vertical kh x 1 convolution to k channels, then a horizontal 1 x kw one with the bias
    for (shape, win) in [
        ((2, 8, 13, 11), Window::square(3)),
        ((2, 6, 9, 10), Window::square(3).stride(2).padding(Padding::Same)),
        ((1, 4, 12, 12), Window::new(3, 5).strides(1, 2).padding(Padding::Explicit { top: 1, bottom: 2, left: 3, right: 0 }).dilations(2, 1)),
    ] {
        let x = random(shape, 12);
        let w = random((10, shape.1, win.kh, win.kw), 13);
        let b = random(10, 14);
        let Factors::Spatial(f) = svd_filters_as(w.view(), Decomposition::Spatial).unwrap().truncate(usize::MAX) else { panic!("spatial") };
        let (vertical, horizontal) = win.split_spatial(shape.2, shape.3).unwrap();
        let t = reference::conv2d(x.view(), f.vertical.view(), None, &vertical).unwrap();
        let y_split = reference::conv2d(t.view(), f.horizontal.view(), Some(b.view()), &horizontal).unwrap();
        let y = reference::conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
        assert_eq!(y_split.dim(), y.dim(), "{win:?}");
        assert!(rel_err(&y_split, &y) < 1e-4, "{win:?}: {}", rel_err(&y_split, &y));
    }
}

#[test]
fn each_decomposition_counts_its_multiply_adds() {
    let shape = [64, 32, 3, 3];
    assert_eq!(Decomposition::Channel.macs_per_position(shape, None), 64 * 288);
    assert_eq!(Decomposition::Spatial.macs_per_position(shape, None), 64 * 288);
    assert_eq!(Decomposition::Channel.macs_per_position(shape, Some(8)), 8 * (64 + 288));
    assert_eq!(Decomposition::Spatial.macs_per_position(shape, Some(8)), 8 * (32 * 3 + 64 * 3));
    for d in Decomposition::ALL {
        let useful = d.max_useful_rank(shape);
        assert!(d.macs_per_position(shape, Some(useful)) < d.macs_per_position(shape, None));
        assert!(d.macs_per_position(shape, Some(useful + 1)) >= d.macs_per_position(shape, None));
        assert_eq!(d.to_string().parse::<Decomposition>().unwrap(), d);
    }
    assert_eq!(Decomposition::Channel.max_useful_rank(shape), max_useful_rank(64, 288));
    // the spatial FLOP policy divides its own count
    let svd = svd_filters_as(random((64, 32, 3, 3), 15).view(), Decomposition::Spatial).unwrap();
    let k = svd.rank_for(RankPolicy::FlopReduction(2.0)).unwrap();
    assert!(2 * Decomposition::Spatial.macs_per_position(shape, Some(k)) <= 64 * 288);
    assert!(2 * Decomposition::Spatial.macs_per_position(shape, Some(k + 1)) > 64 * 288);
}
