//! Replacing trained convolutions by low-rank ones, and distilling the original into them.

mod common;

use cnn_nn::checkpoint;
use cnn_nn::compress::{conv_sites, factorise, parse_plan, plan_string, Choice, Decision, Decomposition};
use cnn_nn::models::reference_cnn;
use cnn_nn::ndarray::ArrayD;
use cnn_nn::RankPolicy;

/// The paths of the model's full convolutions.
fn conv_layers(model: &cnn_nn::Sequential) -> Vec<String> {
    conv_sites(model).into_iter().map(|s| s.path).collect()
}

/// Channel decompositions of top-level layers.
fn channel_plan(entries: &[(usize, RankPolicy)]) -> Vec<Choice> {
    entries.iter().map(|&(i, p)| Choice::channel(i.to_string(), p)).collect()
}

fn input() -> ArrayD<f32> {
    ArrayD::from_shape_fn(vec![4, 1, 28, 28], |i| ((i[0] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 11.0)
}

#[test]
fn factorise_replaces_what_gains_and_skips_the_rest() {
    let mut model = reference_cnn(3);
    assert_eq!(conv_layers(&model), ["0", "3", "6"]);
    let plan = channel_plan(&[(0, RankPolicy::Fixed(8)), (3, RankPolicy::Fixed(8)), (6, RankPolicy::FlopReduction(2.0))]);
    let decisions = factorise(&mut model, &plan).unwrap();
    // conv1 (32 filters, K = 9): rank 8 > 7 would cost more than the layer
    assert!(matches!(&decisions[0], Decision::Skipped { path, reason } if path == "0" && reason.contains("ranks above 7")), "{decisions:?}");
    match decisions[1] {
        Decision::Factorised { ref path, rank: 8, full_rank: 64, flop_ratio, .. } if path == "3" => {
            assert!((flop_ratio - 8.0 * (64.0 + 288.0) / (64.0 * 288.0)).abs() < 1e-12)
        }
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(&decisions[2], Decision::Factorised { path, rank: 52, .. } if path == "6"), "{:?}", decisions[2]);
    assert_eq!(conv_layers(&model), ["0"]);
    let summary = model.summary();
    assert!(summary.contains("LowRankConv2d(f=3,s=1,r=8)   64"), "{summary}");
    assert!(model.num_params() < reference_cnn(3).num_params());
    assert!(factorise(&mut model, &channel_plan(&[(1, RankPolicy::Fixed(2))])).unwrap_err().to_string().contains("is not a full Conv2d"));
}

#[test]
fn skipped_layers_leave_the_model_unchanged() {
    let original = reference_cnn(4);
    let mut model = reference_cnn(4);
    // full rank (64 on conv2, 128 on conv3) is above the useful ranks 52 and 104: nothing to gain
    let decisions = factorise(&mut model, &channel_plan(&[(3, RankPolicy::Fixed(64)), (6, RankPolicy::Energy(1.0))])).unwrap();
    assert!(decisions.iter().all(|d| matches!(d, Decision::Skipped { .. })), "{decisions:?}");
    assert_eq!(conv_layers(&model), ["0", "3", "6"]);
    assert_eq!(original.forward(input()).unwrap(), model.forward(input()).unwrap());
}

#[test]
fn a_converted_model_round_trips_through_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("low.safetensors");
    let plan = channel_plan(&[(3, RankPolicy::Fixed(8)), (6, RankPolicy::Fixed(24))]);
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
    let e = factorise(&mut model, &channel_plan(&[(3, RankPolicy::Fixed(4))])).unwrap_err();
    assert_eq!(e.to_string(), "filters holds a non-finite value (inf) at index [0, 0, 0, 0]");
    let e = factorise(&mut reference_cnn(6), &channel_plan(&[(3, RankPolicy::Energy(f64::NAN))])).unwrap_err();
    assert_eq!(e.to_string(), "invalid rank policy: energy fraction must be in (0, 1], got NaN");
}

#[test]
fn filters_of_low_rank_are_reproduced_by_either_decomposition() {
    // a SAME, strided 3x3 convolution whose filters have rank 2 in the reshaping factorised:
    // its rank-2 factorisation must give the layer's output (windows, padding, bias and all)
    use cnn_nn::layers::{Conv2d, Flatten};
    use cnn_nn::{Padding, Sequential};
    let model = |seed| {
        Sequential::builder(&[8, 9, 10]).add(Conv2d::new(16, 3).stride(2).padding(Padding::Same)).add(Flatten::new()).seed(seed).build().unwrap()
    };
    let x = ArrayD::from_shape_fn(vec![3, 8, 9, 10], |i| ((i[0] * 13 + i[1] * 7 + i[2] * 3 + i[3]) % 17) as f32 / 17.0 - 0.4);
    let value = |a: usize, b: usize| ((a * 31 + b * 17) % 13) as f32 / 13.0 - 0.5;
    for d in Decomposition::ALL {
        let mut original = model(1);
        {
            let (_, w) = original.named_params_mut().into_iter().find(|(n, _)| n == "0.weight").unwrap();
            for (i, v) in w.value.indexed_iter_mut() {
                let (co, ci, y, x) = (i[0], i[1], i[2], i[3]);
                *v = (0..2).map(|k| match d {
                    Decomposition::Channel => value(co, k) * value(k + 2, ci * 9 + y * 3 + x),
                    Decomposition::Spatial => value(k, ci * 3 + y) * value(co + 5, k * 3 + x),
                }).sum();
            }
            let (_, b) = original.named_params_mut().into_iter().find(|(n, _)| n == "0.bias").unwrap();
            b.value.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 * 0.1);
        }
        let mut low = model(2);
        for ((_, to), (_, from)) in low.named_params_mut().into_iter().zip(original.named_params()) {
            to.value.assign(&from.value);
        }
        let decisions = factorise(&mut low, &[Choice { path: "0".into(), decomposition: d, policy: RankPolicy::Fixed(2) }]).unwrap();
        assert!(matches!(&decisions[0], Decision::Factorised { rel_error, .. } if *rel_error < 1e-5), "{d}: {decisions:?}");
        let (a, b) = (original.forward(x.clone()).unwrap(), low.forward(x.clone()).unwrap());
        let gap = (&a - &b).iter().fold(0.0f32, |m, v| m.max(v.abs())) / a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(gap < 1e-4, "{d}: outputs {gap:e} apart (relative to the largest)");
    }
}

#[test]
fn spatial_factors_are_two_convolutions_that_train() {
    let mut model = reference_cnn(7);
    let decisions = factorise(&mut model, &[Choice::spatial("3", RankPolicy::Fixed(96)), Choice::spatial("6", RankPolicy::Fixed(16))]).unwrap();
    // conv2 (32 → 64): [c_in·kh, kw·c_out] = [96, 192]: rank 96 would cost more than the layer
    assert!(matches!(&decisions[0], Decision::Skipped { path, reason } if path == "3" && reason.contains("spatial rank 96")), "{decisions:?}");
    assert!(matches!(&decisions[1], Decision::Factorised { path, decomposition: Decomposition::Spatial, rank: 16, .. } if path == "6"), "{decisions:?}");
    assert!(model.named_params().iter().any(|(n, p)| n == "6.0.weight" && p.value.shape() == [16, 64, 3, 1]), "vertical filters");
    assert!(model.named_params().iter().any(|(n, p)| n == "6.1.weight" && p.value.shape() == [128, 16, 1, 3]), "horizontal filters");
    assert!(model.named_params().iter().any(|(n, _)| n == "6.1.bias"));
    let labels: Vec<usize> = (0..4).collect();
    let mut opt = cnn_nn::optim::Adam::new(1e-3);
    let mut losses = vec![];
    for _ in 0..5 {
        model.zero_grad();
        let (loss, _) = model.loss_and_gradients(input(), &labels).unwrap();
        losses.push(loss);
        cnn_nn::optim::Optimizer::step(&mut opt, &mut model.params_mut());
    }
    assert!(losses[4] < losses[0], "{losses:?}");
}

#[test]
fn convolutions_inside_residual_blocks_are_found_and_factorised() {
    let mut model = cnn_nn::models::by_name("resnet20", 3).unwrap();
    let sites = conv_sites(&model);
    // the stem and two per block, nine blocks
    assert_eq!(sites.len(), 19, "{:?}", sites.iter().map(|s| &s.path).collect::<Vec<_>>());
    let deep = sites.iter().find(|s| s.filters == [64, 64, 3, 3]).unwrap().clone();
    assert!(deep.path.contains(".main."), "{}", deep.path);
    assert_eq!((deep.input.clone(), deep.output.clone()), (vec![64, 7, 7], vec![64, 7, 7]));
    let x = ArrayD::from_shape_fn(vec![2, 1, 28, 28], |i| ((i[2] * 5 + i[3]) % 7) as f32 / 7.0);
    let before = model.forward(x.clone()).unwrap();
    let plan = [Choice::channel(deep.path.clone(), RankPolicy::Fixed(32)), Choice::spatial(sites[1].path.clone(), RankPolicy::Fixed(8))];
    let decisions = factorise(&mut model, &plan).unwrap();
    assert!(decisions.iter().all(|d| matches!(d, Decision::Factorised { .. })), "{decisions:?}");
    assert_eq!(conv_sites(&model).len(), 17 + 2, "the spatial factors are two full convolutions");
    let after = model.forward(x).unwrap();
    assert_eq!(before.shape(), after.shape());
    // the plan string names the paths and decompositions, and parses back
    let text = plan_string(&decisions);
    assert_eq!(text, format!("{}:32,{}:spatial:8", deep.path, sites[1].path));
    assert_eq!(parse_plan(&text).unwrap()[1], Choice::spatial(sites[1].path.clone(), RankPolicy::Fixed(8)));
    assert!(parse_plan("3:diagonal:4").unwrap_err().contains("not a decomposition"));
}

#[test]
fn distillation_pulls_a_student_towards_its_teacher() {
    use cnn_nn::data::Data;
    use cnn_nn::optim::Adam;
    use cnn_nn::train::{fit, Distillation, FitConfig};
    use std::sync::Arc;
    let data = common::toy_data(256, 1);
    let quiet = FitConfig { epochs: 3, batch_size: 32, progress: false, ..FitConfig::default() };
    // a teacher that learned other labels (each class called the next): only its soft
    // targets can teach a student to answer as it does
    let mut shifted = data.clone();
    shifted.labels.iter_mut().for_each(|l| *l = (*l + 1) % 4);
    let mut teacher = common::small_model_with(8, 1);
    fit(&mut teacher, &mut Adam::new(1e-2), &shifted, None, None, &quiet, |_, _, _| Ok(())).unwrap();
    // the mean KL divergence of the student's predictions from the teacher's
    let (x, _) = data.batch(&(0..256).collect::<Vec<_>>());
    let p_teacher = teacher.predict(x.clone()).unwrap();
    let kl = |student: &cnn_nn::Sequential| {
        let q = student.predict(x.clone()).unwrap();
        p_teacher.iter().zip(q.iter()).map(|(&p, &q)| p as f64 * ((p as f64).max(1e-12).ln() - (q as f64).max(1e-12).ln())).sum::<f64>() / 256.0
    };
    let teacher = Arc::new(teacher);
    let distil = |alpha| FitConfig { distill: Some(Distillation { teacher: teacher.clone(), temperature: 2.0, alpha }), ..quiet.clone() };
    let mut student = common::small_model_with(4, 2);
    let before = kl(&student);
    fit(&mut student, &mut Adam::new(1e-2), &data, None, None, &distil(1.0), |_, _, _| Ok(())).unwrap();
    let after = kl(&student);
    // the same student trained on the labels alone moves away from this teacher
    let mut alone = common::small_model_with(4, 2);
    fit(&mut alone, &mut Adam::new(1e-2), &data, None, None, &quiet, |_, _, _| Ok(())).unwrap();
    assert!(after < before / 4.0 && after < kl(&alone) / 4.0, "KL from the teacher: {before} → {after} distilled, {} on the labels", kl(&alone));
    // a teacher of another network shape is refused before training
    let other = Distillation { teacher: Arc::new(reference_cnn(0)), temperature: 2.0, alpha: 0.5 };
    let e = fit(&mut common::small_model_with(4, 2), &mut Adam::new(1e-2), &data, None, None, &FitConfig { distill: Some(other), ..quiet.clone() }, |_, _, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("they must agree to distil"), "{e}");
    let e = fit(&mut common::small_model_with(4, 2), &mut Adam::new(1e-2), &data, None, None, &distil(1.5), |_, _, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("alpha in [0, 1]"), "{e}");
}

#[test]
fn the_rank_search_meets_its_budget_taking_the_cheapest_energy_first() {
    use cnn_nn::compress::{choose_under_budget, Candidate};
    // a synthetic cost model: three layers, each with a mild and a deep factorisation
    let c = |layer: &str, rank, saved_ms, energy_lost| Candidate { choice: Choice::channel(layer, RankPolicy::Fixed(rank)), saved_ms, energy_lost };
    let candidates = vec![
        c("a", 16, 2.0, 0.01), // cheap: 200 ms per unit of energy
        c("a", 4, 3.0, 0.30),
        c("b", 16, 4.0, 0.20), // 20 per unit
        c("b", 8, 6.0, 0.25),
        c("c", 16, 1.0, 0.001), // cheapest of all
        c("c", 2, 1.5, 0.9),
    ];
    let total = |chosen: &[usize]| chosen.iter().map(|&i| candidates[i].saved_ms).sum::<f64>();
    let energy = |chosen: &[usize]| chosen.iter().map(|&i| candidates[i].energy_lost).sum::<f64>();
    let layers = |chosen: &[usize]| { let mut l: Vec<&str> = chosen.iter().map(|&i| candidates[i].choice.path.as_str()).collect(); l.sort(); l };
    for needed in [0.5, 2.5, 3.0, 6.5, 9.0, 10.5] {
        let chosen = choose_under_budget(&candidates, needed).unwrap();
        assert!(total(&chosen) >= needed, "{needed}: saves {}", total(&chosen));
        let mut unique = layers(&chosen);
        unique.dedup();
        assert_eq!(unique.len(), chosen.len(), "one factorisation per layer: {chosen:?}");
    }
    // the cheapest energy first: 1 ms from c, then 2 from a, before anything from b
    assert_eq!(choose_under_budget(&candidates, 0.5).unwrap(), [4]);
    assert_eq!(layers(&choose_under_budget(&candidates, 2.5).unwrap()), ["a", "c"]);
    assert!(energy(&choose_under_budget(&candidates, 2.5).unwrap()) < 0.02);
    // all the fastest: 3 + 6 + 1.5 = 10.5 ms; more is out of reach
    assert_eq!(total(&choose_under_budget(&candidates, 10.5).unwrap()), 10.5);
    let e = choose_under_budget(&candidates, 11.0).unwrap_err();
    assert!(e.contains("out of reach") && e.contains("10.50 ms"), "{e}");
    assert!(choose_under_budget(&candidates, 0.0).unwrap().is_empty());
    // NaN is refused, not taken for "nothing to save"
    assert!(choose_under_budget(&candidates, f64::NAN).unwrap_err().contains("finite"));
    let mut broken = candidates.clone();
    broken[3].saved_ms = f64::NAN;
    assert!(choose_under_budget(&broken, 1.0).unwrap_err().contains("candidate b"));
}

#[test]
fn layers_inside_blocks_are_found_and_replaced_by_path() {
    use cnn_nn::layers::Conv2d;
    use cnn_nn::ndarray::{Array1, Array4};
    use cnn_nn::Window;
    let mut model = cnn_nn::models::by_name("resnet20", 3).unwrap();
    let path = conv_sites(&model)[1].path.clone();
    assert!(model.layer_at(&path).unwrap().describe().name.starts_with("Conv2d("));
    assert!(model.layer_at("1.99.main").is_none());
    // a convolution with given filters takes the place of another of the same shape
    let window = Window::square(3).padding(cnn_nn::Padding::Same);
    let given = || Conv2d::from_weights(Array4::from_elem((16, 16, 3, 3), 0.01), Some(Array1::zeros(16)), window);
    model.replace_at(&path, Box::new(given())).unwrap();
    assert!(model.named_params().iter().any(|(n, p)| *n == format!("{path}.weight") && p.value.iter().all(|&v| v == 0.01)));
    // filters that do not fit, or a bias of another length, are refused, not re-initialised
    let wrong = Conv2d::from_weights(Array4::from_elem((16, 8, 3, 3), 0.01), None, window);
    let e = model.replace_at(&path, Box::new(wrong)).unwrap_err().to_string();
    assert!(e.contains("do not fit"), "{e}");
    let short_bias = Conv2d::from_weights(Array4::from_elem((16, 16, 3, 3), 0.01), Some(Array1::zeros(3)), window);
    assert!(model.replace_at(&path, Box::new(short_bias)).unwrap_err().to_string().contains("do not fit"));
    assert!(model.replace_at("1.99.main.0", Box::new(given())).unwrap_err().to_string().contains("no layer in a chain at path `1.99.main.0`"));
}
