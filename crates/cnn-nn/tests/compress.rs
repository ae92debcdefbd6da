//! Replacing trained convolutions by low-rank ones.

use cnn_nn::checkpoint;
use cnn_nn::compress::{conv_layers, factorise, Decision};
use cnn_nn::models::reference_cnn;
use cnn_nn::ndarray::ArrayD;
use cnn_nn::RankPolicy;

fn input() -> ArrayD<f32> {
    ArrayD::from_shape_fn(vec![4, 1, 28, 28], |i| ((i[0] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 11.0)
}

#[test]
fn factorise_replaces_what_gains_and_skips_the_rest() {
    let mut model = reference_cnn(3);
    assert_eq!(conv_layers(&model), [0, 3, 6]);
    let plan = [(0, RankPolicy::Fixed(8)), (3, RankPolicy::Fixed(8)), (6, RankPolicy::FlopReduction(2.0))];
    let decisions = factorise(&mut model, &plan).unwrap();
    // conv1 (32 filters, K = 9): rank 8 > 7 would cost more than the layer
    assert!(matches!(&decisions[0], Decision::Skipped { layer: 0, reason } if reason.contains("ranks above 7")), "{decisions:?}");
    match decisions[1] {
        Decision::Factorised { layer: 3, rank: 8, full_rank: 64, flop_ratio, .. } => {
            assert!((flop_ratio - 8.0 * (64.0 + 288.0) / (64.0 * 288.0)).abs() < 1e-12)
        }
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(decisions[2], Decision::Factorised { layer: 6, rank: 52, .. }), "{:?}", decisions[2]);
    assert_eq!(conv_layers(&model), [0]);
    let summary = model.summary();
    assert!(summary.contains("LowRankConv2d(f=3,s=1,r=8)   64"), "{summary}");
    assert!(model.num_params() < reference_cnn(3).num_params());
    assert!(factorise(&mut model, &[(1, RankPolicy::Fixed(2))]).unwrap_err().to_string().contains("is not a Conv2d"));
}

#[test]
fn skipped_layers_leave_the_model_unchanged() {
    let original = reference_cnn(4);
    let mut model = reference_cnn(4);
    // full rank (64 on conv2, 128 on conv3) is above the useful ranks 52 and 104: nothing to gain
    let decisions = factorise(&mut model, &[(3, RankPolicy::Fixed(64)), (6, RankPolicy::Energy(1.0))]).unwrap();
    assert!(decisions.iter().all(|d| matches!(d, Decision::Skipped { .. })), "{decisions:?}");
    assert_eq!(conv_layers(&model), [0, 3, 6]);
    assert_eq!(original.forward(input()).unwrap(), model.forward(input()).unwrap());
}

#[test]
fn a_converted_model_round_trips_through_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("low.safetensors");
    let plan = [(3, RankPolicy::Fixed(8)), (6, RankPolicy::Fixed(24))];
    let mut model = reference_cnn(5);
    factorise(&mut model, &plan).unwrap();
    checkpoint::save(&path, &model, None, &Default::default()).unwrap();

    // the same structure from any weights, then the checkpoint
    let mut loaded = reference_cnn(99);
    factorise(&mut loaded, &plan).unwrap();
    checkpoint::load(&path, &mut loaded, None).unwrap();
    for ((na, a), (nb, b)) in model.named_params().iter().zip(loaded.named_params()) {
        assert_eq!((na, &a.value), (&nb, &b.value));
    }
    assert!(model.named_params().iter().any(|(n, _)| n == "3.mix"));
    assert_eq!(model.forward(input()).unwrap(), loaded.forward(input()).unwrap());

    // a full-rank model cannot take it, and says which tensor is missing
    let e = checkpoint::load(&path, &mut reference_cnn(0), None).unwrap_err();
    assert!(e.to_string().contains("tensor `3.weight` is missing"), "{e}");
}

#[test]
fn non_finite_weights_and_bad_policies_are_refused() {
    // an infinite weight used to hang the SVD at 100% CPU
    let mut model = reference_cnn(6);
    let (_, w) = model.named_params_mut().into_iter().find(|(n, _)| n == "3.weight").unwrap();
    w.value[[0, 0, 0, 0]] = f32::INFINITY;
    let e = factorise(&mut model, &[(3, RankPolicy::Fixed(4))]).unwrap_err();
    assert_eq!(e.to_string(), "filters holds a non-finite value (inf) at index [0, 0, 0, 0]");
    let e = factorise(&mut reference_cnn(6), &[(3, RankPolicy::Energy(f64::NAN))]).unwrap_err();
    assert_eq!(e.to_string(), "invalid rank policy: energy fraction must be in (0, 1], got NaN");
}
