//! Sequential: summary, build errors, learning, determinism, checkpoints.

mod common;

use cnn_nn::data::Data;
use cnn_nn::layers::*;
use cnn_nn::models::reference_cnn;
use cnn_nn::ndarray::ArrayD;
use cnn_nn::optim::{Adam, Sgd};
use cnn_nn::train::{evaluate, fit, FitConfig};
use cnn_nn::{checkpoint, NnError, Padding, Sequential, Window};
use common::{on_threads, small_model, small_model_with, state, toy_data};

/// The course material's table; its last row, "Softmax", is the `Dense(10)` whose logits the
/// softmax turns into probabilities (in the loss and in `predict`, not as a layer).
#[test]
fn reference_summary_is_the_material_table() {
    let expected = "\
Layer             Number of Filters  Padding  Activation Shape  Activation Size  Parameters
-------------------------------------------------------------------------------------------
Input                                         (28,28,1)                     784           0
Conv2d(f=3,s=1)   32                 Valid    (26,26,32)                 21,632         320
MaxPool(f=2,s=2)                              (13,13,32)                  5,408           0
Conv2d(f=3,s=1)   64                 Valid    (11,11,64)                  7,744      18,496
MaxPool(f=2,s=2)                              (5,5,64)                    1,600           0
Conv2d(f=3,s=1)   128                Valid    (3,3,128)                   1,152      73,856
MaxPool(f=2,s=2)                              (1,1,128)                     128           0
Flatten                                       (128)                         128           0
Dense                                         (64)                           64       8,256
Dense                                         (10)                           10         650
-------------------------------------------------------------------------------------------
Total parameters: 101,578
Activations: ReLU after Conv2d(f=3,s=1), ReLU after Conv2d(f=3,s=1), ReLU after Conv2d(f=3,s=1), ReLU after Dense
Output: 10 logits (the softmax is applied by the loss and by predict)
";
    assert_eq!(reference_cnn(0).summary(), expected);
}

#[test]
fn impossible_stacks_are_refused_at_build() {
    let e = Sequential::builder(&[1, 28, 28]).add(Conv2d::new(8, 3)).add(Dense::new(10)).build().err().unwrap();
    assert_eq!(
        e.to_string(),
        "layer 1 (Dense) cannot take input of shape [8, 26, 26]: Dense needs a flat input per sample; add Flatten before it"
    );
    let e = Sequential::builder(&[1, 4, 4]).add(MaxPool2d::new(2)).add(Conv2d::new(2, 3)).build().err().unwrap();
    assert_eq!(
        e.to_string(),
        "layer 1 (Conv2d(f=3,s=1)) cannot take input of shape [1, 2, 2]: kernel 3x3 is larger than the padded input 2x2 (input 2x2)"
    );
    let e = Sequential::builder(&[5]).add(Conv2d::new(2, 3)).build().err().unwrap();
    assert!(matches!(e, NnError::Build { ref path, .. } if path == "0"), "{e}");
}

#[test]
fn wrong_input_shape_is_an_error() {
    let mut model = reference_cnn(0);
    let e = model.predict(ArrayD::zeros(vec![2, 1, 27, 28])).unwrap_err();
    assert_eq!(e.to_string(), "model input (0 = any batch size): expected shape [0, 1, 28, 28], got [2, 1, 27, 28]");
    let e = model.loss_and_gradients(ArrayD::zeros(vec![2, 1, 28, 28]), &[1, 2, 3]).unwrap_err();
    assert_eq!(e.to_string(), "labels: expected shape [2], got [3]");
    let e = model.loss_and_gradients(ArrayD::zeros(vec![1, 1, 28, 28]), &[10]).unwrap_err();
    assert_eq!(e.to_string(), "label 10 at index 0 is outside 0..10");
}

#[test]
fn predict_gives_probabilities() {
    let model = reference_cnn(1);
    let p = model.predict(ArrayD::from_elem(vec![3, 1, 28, 28], 0.5)).unwrap();
    assert_eq!(p.shape(), &[3, 10]);
    for row in p.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
}

fn quiet(epochs: usize, batch_size: usize) -> FitConfig {
    FitConfig { epochs, batch_size, seed: 5, progress: false, ..FitConfig::default() }
}

#[test]
fn small_model_overfits_a_tiny_data_set() {
    let data = toy_data(32, 1);
    let mut model = small_model(2);
    let history = fit(&mut model, &mut Adam::new(0.01), &data, None, None, &quiet(60, 8), |_, _, _| Ok(())).unwrap();
    assert!(history.last().unwrap().train_loss < history[0].train_loss / 10.0);
    assert_eq!(evaluate(&model, &data, 16).unwrap().accuracy, 1.0);
}

#[test]
fn sgd_with_momentum_learns_too() {
    let data = toy_data(64, 3);
    let mut model = small_model(4);
    fit(&mut model, &mut Sgd::new(0.05, 0.9, 1e-4), &data, None, None, &quiet(30, 16), |_, _, _| Ok(())).unwrap();
    assert!(evaluate(&model, &toy_data(64, 99), 64).unwrap().accuracy > 0.9);
}

#[test]
fn same_seed_same_weights_for_any_thread_count() {
    let data = toy_data(40, 5);
    let train = |threads: usize| {
        on_threads(threads, || {
            let mut model = small_model(6);
            fit(&mut model, &mut Adam::new(0.01), &data, None, None, &quiet(3, 8), |_, _, _| Ok(())).unwrap();
            state(&model)
        })
    };
    let one = train(1);
    assert_eq!(train(1), one);
    assert_eq!(train(2), one);
    assert_eq!(train(3), one);
    // and a different seed gives different weights
    let other = small_model(7).named_params()[0].1.value.clone();
    assert_ne!(other, small_model(6).named_params()[0].1.value);
}

#[test]
fn diverging_training_stops_with_an_error() {
    let data = toy_data(16, 8);
    let mut model = small_model(9);
    let e = fit(&mut model, &mut Sgd::new(1e30, 0.0, 0.0), &data, None, None, &quiet(5, 8), |_, _, _| Ok(())).unwrap_err();
    assert!(matches!(e, NnError::Diverged { .. }), "{e}");
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = reference_cnn(11);
    let meta = [("epoch".to_string(), "3".to_string())].into_iter().collect();
    checkpoint::save(&path, &model, None, &meta).unwrap();
    assert!(!dir.path().join("model.safetensors.tmp").exists(), "no temporary file left behind");
    let mut loaded = reference_cnn(12);
    assert_ne!(loaded.named_params()[0].1.value, model.named_params()[0].1.value);
    let meta = checkpoint::load(&path, &mut loaded, None).unwrap();
    assert_eq!(meta["epoch"], "3");
    for ((na, a), (nb, b)) in model.named_params().iter().zip(loaded.named_params()) {
        assert_eq!((na, &a.value), (&nb, &b.value));
    }
}

#[test]
fn mismatched_checkpoint_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    checkpoint::save(&path, &small_model(1), None, &Default::default()).unwrap();
    let mut other = small_model_with(8, 0);
    let before = other.named_params()[0].1.value.clone();
    let e = checkpoint::load(&path, &mut other, None).unwrap_err();
    assert!(e.to_string().ends_with("tensor `0.weight` has shape [6, 1, 3, 3], expected [8, 1, 3, 3]"), "{e}");
    assert_eq!(other.named_params()[0].1.value, before, "nothing changed");
    let e = checkpoint::load(&path, &mut reference_cnn(0), None).unwrap_err();
    assert!(e.to_string().contains("tensor `0.weight`"), "{e}");
    std::fs::write(&path, b"garbage").unwrap();
    assert!(checkpoint::load(&path, &mut small_model(1), None).unwrap_err().to_string().contains("not a safetensors file"));
}

#[test]
fn gradients_accumulate_until_zero_grad() {
    let data = toy_data(8, 4);
    let (x, labels) = data.batch(&[0, 1, 2, 3]);
    let mut model = small_model(3);
    model.loss_and_gradients(x.clone(), &labels).unwrap();
    let once: Vec<ArrayD<f32>> = model.named_params().iter().map(|(_, p)| p.grad.clone()).collect();
    assert!(once.iter().any(|g| g.iter().any(|&v| v != 0.0)));
    // a second pass adds the same gradients (micro-batches, shared parameters)
    model.loss_and_gradients(x.clone(), &labels).unwrap();
    for ((name, p), g) in model.named_params().iter().zip(&once) {
        assert_eq!(p.grad, g * 2.0, "{name}");
    }
    model.zero_grad();
    assert!(model.named_params().iter().all(|(_, p)| p.grad.iter().all(|&v| v == 0.0)));
    model.loss_and_gradients(x, &labels).unwrap();
    let again: Vec<ArrayD<f32>> = model.named_params().iter().map(|(_, p)| p.grad.clone()).collect();
    assert_eq!(again, once);
}

#[test]
fn predict_is_the_softmax_of_the_logits() {
    let model = reference_cnn(2);
    let x = ArrayD::from_elem(vec![2, 1, 28, 28], 0.3);
    let logits = model.forward(x.clone()).unwrap();
    let p = model.predict(x).unwrap();
    let (l0, p0) = (logits.index_axis(cnn_nn::ndarray::Axis(0), 0), p.index_axis(cnn_nn::ndarray::Axis(0), 0));
    let z: f32 = l0.iter().map(|v| v.exp()).sum();
    for (l, q) in l0.iter().zip(p0.iter()) {
        assert!((l.exp() / z - q).abs() < 1e-6);
    }
}

fn bn_model(seed: u64) -> Sequential {
    Sequential::builder(&[1, 8, 8])
        .add(Conv2d::new(4, 3).no_bias())
        .add(BatchNorm::new())
        .add(ReLU::new())
        .add(GlobalAvgPool2d::new())
        .add(Dense::new(4).init(cnn_nn::WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .unwrap()
}

/// A chain trains a BatchNorm and the ReLU after it in one pass: the same training, bit for
/// bit, as with the ReLU in a chain of its own (where the two cannot be fused).
#[test]
fn a_relu_after_a_batchnorm_trains_the_same_fused_or_not() {
    let data = toy_data(32, 8);
    let apart = |seed: u64| {
        Sequential::builder(&[1, 8, 8])
            .add(Conv2d::new(4, 3).no_bias())
            .add(BatchNorm::new())
            .add(Chain::new().add(ReLU::new()))
            .add(GlobalAvgPool2d::new())
            .add(Dense::new(4).init(cnn_nn::WeightInit::GlorotUniform))
            .seed(seed)
            .build()
            .unwrap()
    };
    let (mut fused, mut unfused) = (bn_model(3), apart(3));
    assert_eq!(fused.named_params(), unfused.named_params());
    let train = |model: &mut Sequential| fit(model, &mut Sgd::new(0.1, 0.9, 1e-4), &data, None, None, &quiet(2, 8), |_, _, _| Ok(())).unwrap();
    let (history, history_apart) = (train(&mut fused), train(&mut unfused));
    assert!(history[1].train_loss < history[0].train_loss, "{history:?}");
    assert_eq!(history.iter().map(|h| h.train_loss).collect::<Vec<_>>(), history_apart.iter().map(|h| h.train_loss).collect::<Vec<_>>());
    assert_eq!(fused.named_params(), unfused.named_params());
    assert_eq!(fused.named_buffers(), unfused.named_buffers());
}

/// A chain trains a ReLU right before a max pool after the pool, on the pooled values (the
/// two commute): the same training, value for value, as with the ReLU in a chain of its own
/// (where the two cannot be swapped), for the reference network's pattern (convolution, ReLU,
/// 2x2 max pool) and an overlapping 3x3 pool.
#[test]
fn a_relu_before_a_max_pool_trains_the_same_swapped_or_not() {
    let data = toy_data(32, 8);
    for window in [Window::square(2).stride(2), Window::square(3).stride(2)] {
        let model = |seed: u64, apart: bool| {
            let relu = |builder: cnn_nn::SequentialBuilder| if apart { builder.add(Chain::new().add(ReLU::new())) } else { builder.add(ReLU::new()) };
            let builder = relu(Sequential::builder(&[1, 8, 8]).add(Conv2d::new(4, 3).padding(Padding::Same)));
            relu(builder.add(MaxPool2d::with_window(window)).add(Conv2d::new(6, 2)))
                .add(MaxPool2d::new(2))
                .add(Flatten::new())
                .add(Dense::new(4).init(cnn_nn::WeightInit::GlorotUniform))
                .seed(seed)
                .build()
                .unwrap()
        };
        let (mut swapped, mut apart) = (model(5, false), model(5, true));
        assert_eq!(swapped.named_params(), apart.named_params());
        let train = |model: &mut Sequential| fit(model, &mut Sgd::new(0.1, 0.9, 1e-4), &data, None, None, &quiet(2, 8), |_, _, _| Ok(())).unwrap();
        let (history, history_apart) = (train(&mut swapped), train(&mut apart));
        assert!(history[1].train_loss < history[0].train_loss, "{window}: {history:?}");
        assert_eq!(history.iter().map(|h| h.train_loss).collect::<Vec<_>>(), history_apart.iter().map(|h| h.train_loss).collect::<Vec<_>>(), "{window}");
        assert_eq!(swapped.named_params(), apart.named_params(), "{window}");
    }
}

/// A residual block whose ReLU after the sum comes before a max pool (`.then(ReLU).then(pool)`)
/// trains, value for value, as with that ReLU in a chain of its own: the sum's ReLU and the
/// swap of a ReLU with the pool after it are not both applied to it.
#[test]
fn a_residual_blocks_relu_before_a_max_pool_trains_the_same_as_apart() {
    let data = toy_data(32, 9);
    let model = |apart: bool| {
        let block = Residual::new(Chain::new().add(Conv2d::new(1, 3).padding(Padding::Same)));
        let block = if apart { block.then(Chain::new().add(ReLU::new())) } else { block.then(ReLU::new()) };
        Sequential::builder(&[1, 8, 8])
            .add(block.then(MaxPool2d::new(2)))
            .add(Flatten::new())
            .add(Dense::new(4).init(cnn_nn::WeightInit::GlorotUniform))
            .seed(6)
            .build()
            .unwrap()
    };
    let (mut fused, mut apart) = (model(false), model(true));
    assert_eq!(fused.named_params(), apart.named_params());
    let train = |model: &mut Sequential| fit(model, &mut Sgd::new(0.1, 0.9, 1e-4), &data, None, None, &quiet(2, 8), |_, _, _| Ok(())).unwrap();
    let (history, history_apart) = (train(&mut fused), train(&mut apart));
    assert!(history[1].train_loss < history[0].train_loss, "{history:?}");
    assert_eq!(history.iter().map(|h| h.train_loss).collect::<Vec<_>>(), history_apart.iter().map(|h| h.train_loss).collect::<Vec<_>>());
    assert_eq!(fused.named_params(), apart.named_params());
}

#[test]
fn batchnorm_buffers_are_saved_counted_apart_and_left_to_training() {
    let data = toy_data(32, 7);
    let mut model = bn_model(1);
    let names: Vec<String> = model.named_buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["1.running_mean", "1.running_var"]);
    let summary = model.summary();
    // conv 4·9 = 36, BatchNorm γ, β 8 (+ running mean and variance 8), dense 4·4 + 4 = 20
    assert!(summary.contains("Total parameters: 72\nTrainable parameters: 64\nNon-trainable parameters: 8\n"), "{summary}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bn.safetensors");
    let mut opt = Adam::new(1e-2);
    fit(&mut model, &mut opt, &data, None, None, &quiet(2, 8), |_, m, o| {
        checkpoint::save(&path, m, Some(o), &checkpoint::Metadata::new())
    })
    .unwrap();
    // the running statistics moved with training (the forward passes), not from the optimiser
    let running_mean = model.named_buffers()[0].1.clone();
    assert!(running_mean.iter().all(|&v| v != 0.0), "{running_mean}");
    // evaluation does not move them
    model.forward(data.batch(&[0, 1]).0).unwrap();
    assert_eq!(model.named_buffers()[0].1, &running_mean);

    let mut loaded = bn_model(2);
    checkpoint::load(&path, &mut loaded, None).unwrap();
    assert_eq!(loaded.named_buffers(), model.named_buffers());
    let x = data.batch(&[3, 4, 5]).0;
    assert_eq!(loaded.forward(x.clone()).unwrap(), model.forward(x).unwrap());
}

/// A small ResNet: stem, one identity block, one option-A block that halves the size.
fn tiny_resnet(seed: u64) -> Sequential {
    tiny_resnet_with(seed, false)
}

/// [`tiny_resnet`], each ReLU in a chain of its own if `apart` (so that training cannot run it
/// in the pass of the BatchNorm or the sum before it).
fn tiny_resnet_with(seed: u64, apart: bool) -> Sequential {
    let add_relu = |chain: Chain| if apart { chain.add(Chain::new().add(ReLU::new())) } else { chain.add(ReLU::new()) };
    let conv_bn = |c: usize, stride: usize| {
        Chain::new().add(Conv2d::new(c, 3).stride(stride).padding(cnn_nn::Padding::Same).no_bias()).add(BatchNorm::new())
    };
    let block = |c: usize, stride: usize, shortcut: Chain| {
        let main = add_relu(conv_bn(c, stride)).add(conv_bn(c, 1));
        let block = Residual::new(main).shortcut(shortcut);
        if apart { block.then(Chain::new().add(ReLU::new())) } else { block.then(ReLU::new()) }
    };
    let stem = Sequential::builder(&[1, 8, 8]).add(Conv2d::new(4, 3).padding(cnn_nn::Padding::Same).no_bias()).add(BatchNorm::new());
    let stem = if apart { stem.add(Chain::new().add(ReLU::new())) } else { stem.add(ReLU::new()) };
    stem.add(block(4, 1, Chain::new()))
        .add(block(8, 2, Chain::new().add(SubsampleZeroPad::new(2, 8))))
        .add(GlobalAvgPool2d::new())
        .add(Dense::new(4).init(cnn_nn::WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .unwrap()
}

#[test]
fn errors_inside_blocks_name_the_path() {
    let inner = Chain::new().add(Conv2d::new(4, 3)).add(Dense::new(3));
    let e = Sequential::builder(&[2, 8, 8]).add(ReLU::new()).add(Residual::new(inner)).build().err().unwrap();
    assert_eq!(
        e.to_string(),
        "layer 1.main.1 (Dense) cannot take input of shape [4, 6, 6]: Dense needs a flat input per sample; add Flatten before it"
    );
    let e = Sequential::builder(&[2, 8, 8]).add(Residual::new(Chain::new().add(Conv2d::new(4, 3)))).build().err().unwrap();
    assert!(e.to_string().contains("the main path gives [4, 6, 6] but the shortcut gives [2, 8, 8]"), "{e}");
}

#[test]
fn a_residual_network_trains_saves_and_resumes_bit_exactly() {
    let data = toy_data(48, 9);
    let model = tiny_resnet(1);
    let names: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
    // the second conv-BN pair is a chain inside the main chain: main.3.0, main.3.1
    assert!(names.contains(&"4.main.0.weight".to_string()) && names.contains(&"4.main.3.1.bias".to_string()), "{names:?}");
    assert!(model.named_buffers().iter().any(|(n, _)| n == "4.main.1.running_var"));
    let summary = model.summary();
    assert!(summary.contains("\n  main: Chain") && summary.contains("\n    0: Conv2d(f=3,s=2)") && summary.contains("shortcut: Chain"), "{summary}");

    let config = |epochs, start_epoch| FitConfig { epochs, start_epoch, batch_size: 8, seed: 3, progress: false, ..FitConfig::default() };
    let mut straight = tiny_resnet(1);
    let history = fit(&mut straight, &mut Adam::new(1e-2), &data, None, None, &config(3, 0), |_, _, _| Ok(())).unwrap();
    assert!(history[2].train_loss < history[0].train_loss, "{history:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet.safetensors");
    let mut first = tiny_resnet(1);
    let mut opt = Adam::new(1e-2);
    fit(&mut first, &mut opt, &data, None, None, &config(2, 0), |_, m, o| checkpoint::save(&path, m, Some(o), &checkpoint::Metadata::new())).unwrap();
    let mut resumed = tiny_resnet(5);
    let mut opt = Adam::new(1e-2);
    checkpoint::load(&path, &mut resumed, Some(&mut opt)).unwrap();
    fit(&mut resumed, &mut opt, &data, None, None, &config(1, 2), |_, _, _| Ok(())).unwrap();
    assert_eq!(resumed.named_params(), straight.named_params());
    assert_eq!(resumed.named_buffers(), straight.named_buffers());
}

/// Training runs a ReLU after a BatchNorm, and a block's ReLU after its sum, in the pass
/// before it: the same training, bit for bit, as with every ReLU a layer apart.
#[test]
fn a_residual_network_trains_the_same_with_its_relus_fused_or_not() {
    let data = toy_data(32, 11);
    let config = FitConfig { epochs: 2, batch_size: 8, seed: 4, progress: false, ..FitConfig::default() };
    let (mut fused, mut apart) = (tiny_resnet(6), tiny_resnet_with(6, true));
    assert_eq!(fused.named_params().len(), apart.named_params().len());
    let history = fit(&mut fused, &mut Sgd::new(0.05, 0.9, 1e-4), &data, None, None, &config, |_, _, _| Ok(())).unwrap();
    let history_apart = fit(&mut apart, &mut Sgd::new(0.05, 0.9, 1e-4), &data, None, None, &config, |_, _, _| Ok(())).unwrap();
    assert!(history[1].train_loss < history[0].train_loss, "{history:?}");
    assert_eq!(history.iter().map(|h| h.train_loss).collect::<Vec<_>>(), history_apart.iter().map(|h| h.train_loss).collect::<Vec<_>>());
    let values = |m: &Sequential| m.named_params().into_iter().map(|(_, p)| p.value.clone()).collect::<Vec<_>>();
    assert_eq!(values(&fused), values(&apart));
}

#[test]
fn a_residual_network_is_deterministic_at_any_thread_count() {
    let data = toy_data(24, 10);
    let train = |threads: usize| {
        on_threads(threads, || {
            let mut model = tiny_resnet(2);
            fit(&mut model, &mut Adam::new(1e-2), &data, None, None, &quiet(2, 8), |_, _, _| Ok(())).unwrap();
            state(&model)
        })
    };
    let one = train(1);
    assert_eq!(train(2), one);
    assert_eq!(train(3), one);
}

/// Activations of several of the element-wise loops' parallel chunks (8 x 32 x 32 values
/// a sample, 6 samples): a block's sum is `relu(x) + x` value by value, and one training
/// step's gradients and BatchNorm statistics are the same bit for bit on 1, 2 and 3 threads,
/// and as with the ReLU after the sum in a chain of its own (not fused into the sum).
#[test]
fn element_wise_layers_over_many_chunks_are_exact_and_deterministic() {
    let x = ArrayD::from_shape_fn(vec![6, 8, 32, 32], |i| ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 23) as f32 / 11.0 - 1.0);
    let sum = Sequential::builder(&[8, 32, 32]).add(Residual::new(Chain::new().add(ReLU::new()))).build().unwrap();
    let y = sum.forward(x.clone()).unwrap();
    assert!(x.iter().zip(&y).all(|(&x, &y)| y == x.max(0.0) + x));

    let block_with = |fused: bool| {
        let conv_bn = || Chain::new().add(Conv2d::new(8, 3).padding(cnn_nn::Padding::Same).no_bias()).add(BatchNorm::new());
        let residual = Residual::new(conv_bn().add(ReLU::new()).add(conv_bn()));
        let residual = if fused { residual.then(ReLU::new()) } else { residual.then(Chain::new().add(ReLU::new())) };
        Sequential::builder(&[8, 32, 32])
            .add(residual)
            .add(GlobalAvgPool2d::new())
            .add(Dense::new(3))
            .seed(4)
            .build()
            .unwrap()
    };
    let step_with = |threads: usize, fused: bool| {
        on_threads(threads, || {
            let mut model = block_with(fused);
            model.loss_and_gradients(x.clone(), &[0, 1, 2, 0, 1, 2]).unwrap();
            let grads: Vec<ArrayD<f32>> = model.named_params().into_iter().map(|(_, p)| p.grad.clone()).collect();
            (grads, state(&model))
        })
    };
    let step = |threads: usize| step_with(threads, true);
    let one = step(1);
    assert!(one.0.iter().all(|g| g.iter().all(|v| v.is_finite())) && one.0.iter().any(|g| g.iter().any(|&v| v != 0.0)));
    assert_eq!(step(2), one);
    assert_eq!(step(3), one);
    assert_eq!(step_with(2, false), one, "the ReLU apart");
}

#[test]
fn fit_asks_the_schedule_before_every_step() {
    use cnn_nn::schedule::{Cosine, Progress, Schedule, Warmup};
    let data = toy_data(40, 11); // 5 batches of 8 per epoch
    let schedule = Warmup { steps: 3, then: Cosine::per_step(0.05) };
    let config = FitConfig { schedule: Some(std::sync::Arc::new(schedule.clone())), ..quiet(3, 8) };
    let history = fit(&mut small_model(3), &mut Sgd::new(1.0, 0.9, 0.0), &data, None, None, &config, |_, _, _| Ok(())).unwrap();
    // each epoch reports the rate of its last step: steps 4, 9, 14 of 15
    for (epoch, m) in history.iter().enumerate() {
        let last = Progress { step: epoch * 5 + 4, steps_per_epoch: 5, total_steps: 15 };
        assert_eq!(m.lr, schedule.lr(last), "epoch {}", m.epoch);
    }
    assert!(history[2].lr < history[0].lr);
    // a bad schedule is refused before training, whatever the optimiser's own rate
    let bad = FitConfig { schedule: Some(std::sync::Arc::new(Cosine::per_step(-0.1))), ..quiet(1, 8) };
    let e = fit(&mut small_model(3), &mut Sgd::new(1.0, 0.0, 0.0), &data, None, None, &bad, |_, _, _| Ok(())).unwrap_err();
    assert_eq!(e.to_string(), "invalid configuration: the learning rate must be a positive number, got -0.1");
}

#[test]
fn augmented_training_is_deterministic_at_any_thread_count() {
    use cnn_nn::augment::{Compose, HorizontalFlip, RandomCrop};
    let data = toy_data(24, 12);
    let augment: std::sync::Arc<dyn cnn_nn::augment::Transform> =
        std::sync::Arc::new(Compose(vec![Box::new(RandomCrop { padding: 2 }), Box::new(HorizontalFlip { probability: 0.5 })]));
    let train = |threads: usize, augment: Option<std::sync::Arc<dyn cnn_nn::augment::Transform>>| {
        on_threads(threads, || {
            let mut model = small_model(8);
            let config = FitConfig { augment, ..quiet(2, 8) };
            fit(&mut model, &mut Adam::new(1e-2), &data, None, None, &config, |_, _, _| Ok(())).unwrap();
            state(&model)
        })
    };
    let one = train(1, Some(augment.clone()));
    assert_eq!(train(2, Some(augment.clone())), one);
    assert_eq!(train(3, Some(augment)), one);
    assert_ne!(train(1, None), one, "the augmentation changes what is learned");
}

#[test]
fn early_stopping_stops_keeps_the_best_and_returns_the_history() {
    use cnn_nn::callbacks::{EarlyStopping, Monitor};
    let (train, val) = (toy_data(48, 13), toy_data(16, 14));
    let mut model = small_model(5);
    let mut early = EarlyStopping::new(Monitor::ValAccuracy, 2).keep_best_weights();
    let mut best_copy = None;
    let history = fit(&mut model, &mut Adam::new(2e-2), &train, Some(&val), None, &quiet(60, 8), |m, model, _| {
        let control = early.update(m, model);
        if early.improved() {
            best_copy = Some(model.named_params().into_iter().map(|(n, p)| (n, p.value.clone())).collect::<Vec<_>>());
        }
        Ok(control)
    })
    .unwrap();
    // validation accuracy cannot beat 100%: it stops two epochs after its best, long before 60
    let best = early.best_epoch().unwrap();
    assert_eq!(history.len(), best + 2, "{history:?}");
    assert!(history.len() < 60);
    let best_acc = history[best - 1].val_acc.unwrap();
    assert!(history.iter().all(|m| m.val_acc.unwrap() <= best_acc));
    // the weights put back are those of the best epoch
    assert_eq!(early.restore(&mut model), Some(best));
    let restored: Vec<_> = model.named_params().into_iter().map(|(n, p)| (n, p.value.clone())).collect();
    assert_eq!(Some(restored), best_copy);
}

#[test]
fn recipes_build_what_they_document() {
    use cnn_nn::models::{OptimizerKind, Recipe, ScheduleKind};
    use cnn_nn::schedule::Progress;
    let r = Recipe::for_model("resnet20").unwrap();
    assert_eq!((r.optimizer, r.batch, r.epochs, r.schedule, r.crop_flip), (OptimizerKind::Sgd, 128, 15, ScheduleKind::Cosine, true));
    assert_eq!(r.optimizer().state().kind, "sgd");
    let at = |step| Progress { step, steps_per_epoch: 10, total_steps: 100 };
    assert_eq!(r.schedule().lr(at(0)), 0.1);
    assert!(r.schedule().lr(at(50)) < 0.051);
    assert!(r.augment().is_some());
    let reference = Recipe::for_model("reference").unwrap();
    assert_eq!((reference.optimizer().state().kind.as_str(), reference.augment().is_none()), ("adam", true));
    assert!(Recipe::for_model("vgg16").unwrap_err().to_string().contains("not made for 28x28 grey images"));
}

/// `forward_view` is `forward` on a copy, for the layers that read their input in place (a
/// convolution, a chain) and for one left with the default (ReLU); a residual block's
/// inference, whose main path reads the input in place, is that path plus the input, then
/// its last layer.
#[test]
fn forward_on_a_view_is_forward() {
    use cnn_nn::ndarray::IxDyn;
    use cnn_nn::{Init, Layer, ModelRng, Padding};
    use rand::SeedableRng;
    let mut rng = ModelRng::seed_from_u64(5);
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 4, 7, 7]), |i| ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 11) as f32 / 11.0 - 0.5);
    let main = || Chain::new().add(Conv2d::new(4, 3).padding(Padding::Same)).add(BatchNorm::new()).add(ReLU::new()).add(Conv2d::new(4, 3).padding(Padding::Same));
    let layers: Vec<Box<dyn Layer>> = vec![Box::new(Conv2d::new(5, 3)), Box::new(main()), Box::new(ReLU::new()), Box::new(Chain::new())];
    for mut layer in layers {
        layer.build(&[4, 7, 7], &mut Init { rng: &mut rng }).unwrap();
        assert_eq!(layer.forward_view(x.view()), layer.forward(x.clone()), "{}", layer.describe().name);
    }
    let mut block = Residual::new(main()).then(ReLU::new());
    block.build(&[4, 7, 7], &mut Init { rng: &mut rng }).unwrap();
    let (name, main_path) = &block.children()[0];
    assert_eq!(name, "main");
    let want = (main_path.forward(x.clone()) + &x).mapv(|v| v.max(0.0));
    assert_eq!(block.forward(x.clone()), want);
}

/// Inference fuses a convolution with the BatchNorm and the ReLU after it (BatchNorm folded
/// into the filters and the bias, the ReLU applied as the outputs are stored): a chain's
/// forward is its layers' forwards one by one within f32 rounding, for each way they follow
/// each other (with and without a bias, BatchNorm or ReLU; strided, grouped), with BatchNorm's
/// statistics, γ, β and the convolutions' biases away from their defaults.
#[test]
fn inference_fuses_convolution_batchnorm_and_relu() {
    use cnn_nn::ndarray::IxDyn;
    use cnn_nn::{Init, Layer, ModelRng, Padding};
    use rand::SeedableRng;
    let mut rng = ModelRng::seed_from_u64(9);
    let same = Padding::Same;
    let mut chain = Chain::new()
        .add(Conv2d::new(8, 3).padding(same))
        .add(BatchNorm::new())
        .add(ReLU::new())
        .add(Conv2d::new(16, 3).padding(same).stride(2).no_bias())
        .add(BatchNorm::new())
        .add(Conv2d::new(16, 3).padding(same).groups(2))
        .add(ReLU::new())
        .add(Conv2d::new(16, 1).no_bias())
        .add(BatchNorm::new())
        .add(ReLU::new());
    chain.build(&[3, 12, 12], &mut Init { rng: &mut rng }).unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[4, 3, 12, 12]), |i| ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 13) as f32 / 6.0 - 0.7);
    // the running statistics move away from 0 and 1, γ and β from 1 and 0
    for _ in 0..5 {
        chain.forward_train(x.mapv(|v| 2.0 * v + 0.3));
    }
    for (i, (name, p)) in chain.params_mut().into_iter().enumerate() {
        if name.ends_with("1.weight") || name.ends_with("4.weight") || name.ends_with("8.weight") {
            p.value.iter_mut().enumerate().for_each(|(j, g)| *g = 0.5 + 0.1 * j as f32);
        } else if name.ends_with("1.bias") || name.ends_with("4.bias") || name.ends_with("8.bias") {
            p.value.iter_mut().enumerate().for_each(|(j, b)| *b = 0.05 * (j as f32 - 4.0) + 0.01 * i as f32);
        } else if name.ends_with("bias") {
            // the convolutions' biases (zero when built)
            p.value.iter_mut().enumerate().for_each(|(j, b)| *b = 0.1 * (j % 3) as f32 - 0.1);
        }
    }
    let fused = chain.forward(x.clone());
    let unfused = chain.layers().iter().fold(x.clone(), |a, layer| layer.forward(a));
    assert_eq!(fused.shape(), unfused.shape());
    let scale = unfused.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = fused.iter().zip(&unfused).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-5 * scale, "fused inference {err} from the layers one by one (largest value {scale})");
    let zeros = unfused.iter().filter(|v| **v == 0.0).count();
    assert!(zeros > unfused.len() / 10 && zeros < unfused.len(), "{zeros} of {} outputs cut by the last ReLU", unfused.len());
    // with a NaN in the input, the values it reaches are NaN either way
    let mut x_nan = x.clone();
    x_nan[[1, 2, 5, 5]] = f32::NAN;
    let (fused, unfused) = (chain.forward(x_nan.clone()), chain.layers().iter().fold(x_nan, |a, layer| layer.forward(a)));
    let nan = |y: &ArrayD<f32>| y.iter().map(|v| v.is_nan()).collect::<Vec<_>>();
    assert!(nan(&fused).iter().any(|&n| n) && nan(&fused) == nan(&unfused), "NaN where the unfused layers have it");
}

/// Training computes no input gradient for the model's input (the first layer, a convolution
/// or a chain starting with one, runs `backward_params`): the parameters' gradients of
/// `loss_and_gradients` are those of a training forward and `Sequential::backward`, which
/// still returns the input's gradient.
#[test]
fn training_skips_the_input_gradient_and_keeps_the_parameters_gradients() {
    use cnn_nn::Padding;
    skips_the_input_gradient(Conv2d::new(16, 3).padding(Padding::Same), "a convolution");
    skips_the_input_gradient(Chain::new().add(Conv2d::new(16, 3).padding(Padding::Same).no_bias()).add(BatchNorm::new()), "a chain");
}

fn skips_the_input_gradient(stem: impl cnn_nn::Layer + 'static, case: &str) {
    use cnn_nn::loss::softmax_cross_entropy;
    use cnn_nn::ndarray::{Ix2, IxDyn};
    let x = ArrayD::from_shape_fn(IxDyn(&[6, 1, 10, 10]), |i| ((i[0] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 11.0 - 0.4);
    let labels = [0, 2, 1, 1, 0, 2];
    let mut model = Sequential::builder(&[1, 10, 10]).add(stem).add(ReLU::new()).add(Conv2d::new(4, 3)).add(GlobalAvgPool2d::new()).add(Dense::new(3)).seed(2).build().unwrap();
    model.zero_grad();
    model.loss_and_gradients(x.clone(), &labels).unwrap();
    let skipped: Vec<ArrayD<f32>> = model.params_mut().iter().map(|p| p.grad.clone()).collect();
    model.zero_grad();
    let logits = model.forward_train(x.clone()).unwrap().into_dimensionality::<Ix2>().unwrap();
    let (_, dlogits) = softmax_cross_entropy(logits.view(), &labels).unwrap();
    let dx = model.backward(dlogits.into_dyn()).unwrap();
    assert_eq!(dx.shape(), x.shape(), "{case}");
    assert!(dx.iter().any(|v| *v != 0.0), "{case}: an input gradient");
    for (k, (a, p)) in skipped.iter().zip(model.params_mut()).enumerate() {
        let scale = p.grad.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&p.grad).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(scale > 0.0 && err <= 1e-5 * scale, "{case}, parameter {k}: {err} of {scale}");
    }
}

/// `backward_view` is `backward` on a copy, gradients included, for the layers that read `dy`
/// in place (BatchNorm, a chain ending in one) and for one left with the default (ReLU).
#[test]
fn backward_on_a_view_is_backward() {
    use cnn_nn::ndarray::IxDyn;
    use cnn_nn::{Init, Layer, ModelRng, Padding};
    use rand::SeedableRng;
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 4, 6, 6]), |i| ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 11) as f32 / 11.0 - 0.5);
    let dy = ArrayD::from_shape_fn(IxDyn(&[3, 4, 6, 6]), |i| ((i[0] * 3 + i[1] * 7 + i[2] + i[3] * 5) % 13) as f32 / 13.0 - 0.4);
    let layers = || -> Vec<Box<dyn Layer>> {
        vec![Box::new(BatchNorm::new()), Box::new(Chain::new().add(Conv2d::new(4, 3).padding(Padding::Same)).add(BatchNorm::new())), Box::new(ReLU::new())]
    };
    for (mut a, mut b) in layers().into_iter().zip(layers()) {
        a.build(&[4, 6, 6], &mut Init { rng: &mut ModelRng::seed_from_u64(3) }).unwrap();
        b.build(&[4, 6, 6], &mut Init { rng: &mut ModelRng::seed_from_u64(3) }).unwrap();
        a.forward_train(x.clone());
        b.forward_train(x.clone());
        let name = a.describe().name;
        assert_eq!(a.backward_view(dy.view()), b.backward(dy.clone()), "{name}");
        let grads = |l: &dyn Layer| l.params().into_iter().map(|(_, p)| p.grad.clone()).collect::<Vec<_>>();
        assert_eq!(grads(a.as_ref()), grads(b.as_ref()), "{name}");
    }
}
