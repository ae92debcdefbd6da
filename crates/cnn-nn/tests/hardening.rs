//! What a hostile tester and a new library user found wrong, each pinned by a test that failed
//! before the fix. Only `cnn-nn`'s public API is used, as a downstream crate would.

mod common;

use cnn_nn::checkpoint::{self, Metadata};
use cnn_nn::cnn_core::{conv2d, CnnError};
use cnn_nn::layer::prefixed;
use cnn_nn::layers::{Conv2d, Dense, Flatten, ReLU};
use cnn_nn::loss::softmax_cross_entropy;
use cnn_nn::models::reference_cnn;
use cnn_nn::ndarray::{Array2, Array4, ArrayD};
use cnn_nn::optim::{Adam, Optimizer, Sgd};
use cnn_nn::train::{fit, FitConfig};
use cnn_nn::{BuildError, Describe, Init, Layer, NnError, Padding, Param, Sequential, Window};
use common::{small_model, toy_data};
use std::sync::Arc;

fn quiet(epochs: usize) -> FitConfig {
    FitConfig { epochs, batch_size: 8, seed: 5, progress: false, ..FitConfig::default() }
}

fn set_param(model: &mut Sequential, name: &str, f: impl Fn(&mut ArrayD<f32>)) {
    let (_, p) = model.named_params_mut().into_iter().find(|(n, _)| n == name).expect("the parameter exists");
    f(&mut p.value);
}

// 1. NaN is never swallowed

#[test]
fn an_all_nan_image_gives_a_nan_loss_not_a_number() {
    // it used to be 1.0986 = ln 3... (ReLU's max(0, NaN) = 0, max pooling skipping NaN)
    let mut model = reference_cnn(0);
    let x = ArrayD::from_elem(vec![1, 1, 28, 28], f32::NAN);
    let (loss, _) = model.loss_and_gradients(x.clone(), &[3]).unwrap();
    assert!(loss.is_nan(), "loss {loss}");
    assert!(model.predict(x.clone()).unwrap().iter().all(|v| v.is_nan()));
    let e = model.classify(x.index_axis(cnn_nn::ndarray::Axis(0), 0)).unwrap_err();
    assert!(matches!(e, NnError::NonFinite { .. }), "{e}");
}

#[test]
fn a_checkpoint_holding_nan_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.safetensors");
    let mut model = reference_cnn(0);
    set_param(&mut model, "3.weight", |w| w[[5, 2, 1, 1]] = f32::NAN);
    checkpoint::save(&path, &model, None, &Metadata::new()).unwrap();
    let mut target = reference_cnn(1);
    let before = target.named_params()[0].1.value.clone();
    let e = checkpoint::load(&path, &mut target, None).unwrap_err().to_string();
    assert!(e.contains("tensor `3.weight` holds a non-finite value (NaN)"), "{e}");
    assert_eq!(target.named_params()[0].1.value, before, "nothing loaded");
}

#[test]
fn fit_refuses_non_finite_weights_before_training() {
    let mut model = small_model(1);
    set_param(&mut model, "4.weight", |w| w[[0, 3]] = f32::INFINITY);
    let mut calls = 0;
    let e = fit(&mut model, &mut Adam::new(1e-3), &toy_data(16, 1), None, None, &quiet(1), |_, _, _| {
        calls += 1;
        Ok(())
    })
    .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("parameter `4.weight` is not finite (inf) before training"), "{text}");
    assert_eq!(calls, 0, "no epoch ran");
}

#[test]
fn fit_refuses_nan_in_the_data_naming_the_sample() {
    let mut data = toy_data(16, 2);
    data.images[[11, 0, 3, 4]] = f32::NAN;
    let e = fit(&mut small_model(1), &mut Adam::new(1e-3), &data, None, None, &quiet(1), |_, _, _| Ok(())).unwrap_err();
    assert_eq!(e.to_string(), "training sample 11 is not finite (NaN)");
}

// 2. Divergence is detected long before NaN, and blamed on the right cause

#[test]
fn a_learning_rate_far_too_large_stops_training() {
    for mut optimizer in [Box::new(Adam::new(10.0)) as Box<dyn Optimizer>, Box::new(Sgd::new(10.0, 0.9, 0.0))] {
        let mut saved = 0;
        let e = fit(&mut small_model(3), optimizer.as_mut(), &toy_data(64, 3), None, None, &quiet(20), |_, _, _| {
            saved += 1;
            Ok(())
        })
        .unwrap_err();
        match &e {
            NnError::Diverged { reason, .. } => assert!(reason.contains("exceeds"), "{}: stopped by the rule, long before NaN: {reason}", optimizer.state().kind),
            other => panic!("{}: expected Diverged, got {other}", optimizer.state().kind),
        }
        assert!(e.to_string().ends_with("try a smaller learning rate"), "{e}");
        assert!(saved < 20, "stopped before the end");
    }
}

#[test]
fn a_sane_learning_rate_never_trips_the_rule() {
    let history = fit(&mut small_model(4), &mut Adam::new(1e-2), &toy_data(64, 4), None, None, &quiet(10), |_, _, _| Ok(())).unwrap();
    assert_eq!(history.len(), 10);
    assert!(history[9].train_loss < history[0].train_loss);
}

#[test]
fn weights_that_overflow_the_loss_are_not_blamed_on_the_learning_rate() {
    let mut model = small_model(5);
    set_param(&mut model, "6.weight", |w| w.mapv_inplace(|v| v * 1e37));
    set_param(&mut model, "4.weight", |w| w.mapv_inplace(|v| v * 1e37));
    let e = fit(&mut model, &mut Adam::new(1e-3), &toy_data(16, 5), None, None, &quiet(1), |_, _, _| Ok(())).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, NnError::NonFinite { .. }), "{text}");
    assert!(text.contains("the learning rate is not the cause"), "{text}");
}

// 3. Resume equals training on: the optimiser state travels with the checkpoint

#[test]
fn resuming_from_a_checkpoint_equals_training_on() {
    let data = toy_data(48, 6);
    let config = |epochs, start_epoch| FitConfig { epochs, start_epoch, ..quiet(0) };
    for make in [|| Box::new(Adam::new(5e-3)) as Box<dyn Optimizer>, || Box::new(Sgd::new(0.05, 0.9, 1e-4)) as Box<dyn Optimizer>] {
        let mut straight = small_model(7);
        fit(&mut straight, make().as_mut(), &data, None, None, &config(3, 0), |_, _, _| Ok(())).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut first = small_model(7);
        let mut opt = make();
        fit(&mut first, opt.as_mut(), &data, None, None, &config(2, 0), |_, m, o| checkpoint::save(&path, m, Some(o), &Metadata::new())).unwrap();

        let mut resumed = small_model(99);
        let mut opt = make();
        checkpoint::load(&path, &mut resumed, Some(opt.as_mut())).unwrap();
        fit(&mut resumed, opt.as_mut(), &data, None, None, &config(1, 2), |_, _, _| Ok(())).unwrap();
        assert_eq!(resumed.named_params(), straight.named_params(), "{}", opt.state().kind);

        // a fresh optimiser, what resume used to do, ends elsewhere
        let mut fresh = small_model(99);
        checkpoint::load(&path, &mut fresh, None).unwrap();
        fit(&mut fresh, make().as_mut(), &data, None, None, &config(1, 2), |_, _, _| Ok(())).unwrap();
        assert_ne!(fresh.named_params(), straight.named_params());

        // and the state of another optimiser is refused
        let mut other: Box<dyn Optimizer> = if opt.state().kind == "adam" { Box::new(Sgd::new(0.1, 0.0, 0.0)) } else { Box::new(Adam::new(0.1)) };
        let e = checkpoint::load(&path, &mut small_model(1), Some(other.as_mut())).unwrap_err();
        assert!(e.to_string().contains("holds the state of a"), "{e}");
    }
}

// 4. Settings and data are refused before the first batch

#[test]
fn bad_settings_are_refused_before_any_batch() {
    let data = toy_data(16, 8);
    let cases: [(Box<dyn Optimizer>, FitConfig, &str); 5] = [
        (Box::new(Adam::new(-1.0)), quiet(1), "the learning rate must be a positive number, got -1"),
        (Box::new(Sgd::new(0.0, 0.0, 0.0)), quiet(1), "the learning rate must be a positive number, got 0"),
        (Box::new(Adam::new(f32::NAN)), quiet(1), "the learning rate must be a positive number, got NaN"),
        (Box::new(Adam::new(1e-3)), FitConfig { start_epoch: usize::MAX, ..quiet(2) }, "overflow the epoch counter"),
        (Box::new(Adam::new(1e-3)), FitConfig { batch_size: 0, ..quiet(1) }, "the batch size must be at least 1"),
    ];
    for (mut optimizer, config, expected) in cases {
        let mut calls = 0;
        let e = fit(&mut small_model(1), optimizer.as_mut(), &data, None, None, &config, |_, _, _| {
            calls += 1;
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
        assert_eq!(calls, 0);
    }
}

#[test]
fn a_bad_label_in_the_test_set_is_refused_before_training() {
    let mut test = toy_data(8, 9);
    test.labels[5] = 200;
    let mut epochs = 0;
    let e = fit(&mut small_model(1), &mut Adam::new(1e-3), &toy_data(16, 9), None, Some(&test), &quiet(1), |_, _, _| {
        epochs += 1;
        Ok(())
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "label 200 at index 5 is outside 0..4");
    assert_eq!(epochs, 0);
}

// 5. Layers made of layers: unique hierarchical names, checkpoints that work

/// A user's composite layer: `y = b(relu(a(x)))`, its children named `inner` and `outer`.
struct TwoDense {
    a: Dense,
    relu: ReLU,
    b: Dense,
    names: [&'static str; 2],
}

impl TwoDense {
    fn new(units: usize, names: [&'static str; 2]) -> Self {
        TwoDense { a: Dense::new(units), relu: ReLU::new(), b: Dense::new(units), names }
    }
}

impl Layer for TwoDense {
    fn build(&mut self, input: &[usize], init: &mut Init) -> Result<Vec<usize>, BuildError> {
        let hidden = self.a.build(input, init)?;
        self.b.build(&hidden, init)
    }
    fn forward(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        self.b.forward(self.relu.forward(self.a.forward(x)))
    }
    fn forward_train(&mut self, x: ArrayD<f32>) -> ArrayD<f32> {
        let h = self.relu.forward_train(self.a.forward_train(x));
        self.b.forward_train(h)
    }
    fn backward(&mut self, dy: ArrayD<f32>) -> ArrayD<f32> {
        let dh = self.relu.backward(self.b.backward(dy));
        self.a.backward(dh)
    }
    fn params(&self) -> Vec<(String, &Param)> {
        let mut p = prefixed(self.names[0], self.a.params());
        p.extend(prefixed(self.names[1], self.b.params()));
        p
    }
    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut p = prefixed(self.names[0], self.a.params_mut());
        p.extend(prefixed(self.names[1], self.b.params_mut()));
        p
    }
    fn describe(&self) -> Describe {
        Describe { name: "TwoDense".into(), ..Describe::default() }
    }
}

fn composite_model(names: [&'static str; 2], seed: u64) -> cnn_nn::Result<Sequential> {
    Sequential::builder(&[1, 4, 4]).add(Flatten::new()).add(TwoDense::new(5, names)).add(Dense::new(3)).seed(seed).build()
}

#[test]
fn a_composite_layer_saves_and_loads_under_hierarchical_names() {
    let model = composite_model(["inner", "outer"], 1).unwrap();
    let names: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["1.inner.weight", "1.inner.bias", "1.outer.weight", "1.outer.bias", "2.weight", "2.bias"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("composite.safetensors");
    checkpoint::save(&path, &model, None, &Metadata::new()).unwrap();
    let mut loaded = composite_model(["inner", "outer"], 2).unwrap();
    checkpoint::load(&path, &mut loaded, None).unwrap();
    assert_eq!(loaded.named_params(), model.named_params());
    let x = ArrayD::from_shape_fn(vec![2, 1, 4, 4], |i| (i[2] * 4 + i[3]) as f32 / 16.0);
    assert_eq!(loaded.forward(x.clone()).unwrap(), model.forward(x).unwrap());
}

#[test]
fn duplicate_parameter_names_are_an_error_not_a_panic() {
    let e = composite_model(["same", "same"], 1).err().expect("refused");
    assert_eq!(e.to_string(), "two parameters are named `1.same.weight`: every parameter needs a unique name (give a composite layer's children distinct names)");
}

// 7. No panics from public functions

#[test]
fn replace_layer_out_of_range_is_an_error() {
    let mut model = small_model(1);
    let e = model.replace_layer(7, Box::new(ReLU::new())).unwrap_err();
    assert_eq!(e.to_string(), "invalid configuration: no layer 7 to replace: the model has 7 layers");
}

#[test]
fn backward_without_its_forward_or_with_a_wrong_gradient_is_an_error() {
    let mut model = small_model(1);
    let e = model.backward(ArrayD::zeros(vec![2, 4])).unwrap_err();
    assert_eq!(e.to_string(), "invalid configuration: backward needs a forward_train first");
    model.forward_train(ArrayD::zeros(vec![2, 1, 8, 8])).unwrap();
    let e = model.backward(ArrayD::zeros(vec![3, 4])).unwrap_err();
    assert_eq!(e.to_string(), "output gradient dy: expected shape [2, 4], got [3, 4]");
    let dx = model.backward(ArrayD::ones(vec![2, 4])).unwrap();
    assert_eq!(dx.shape(), [2, 1, 8, 8]);
}

#[test]
fn an_enormous_filter_count_is_a_build_error() {
    for filters in [usize::MAX, 1 << 60] {
        let e = Sequential::builder(&[3, 8, 8]).add(Conv2d::new(filters, 3)).build().err().expect("refused");
        assert!(matches!(e, NnError::Build { reason: BuildError::Core(CnnError::TooLarge { .. }), .. }), "{e}");
    }
}

#[test]
fn a_lowered_matrix_larger_than_memory_is_an_error() {
    // a 1x1 image padded by 10 million on each side: 4e14 lowered values, 1.6 PB
    let x = Array4::<f32>::ones((1, 1, 1, 1));
    let w = Array4::<f32>::ones((1, 1, 1, 1));
    let e = conv2d(x.view(), w.view(), None, &Window::square(1).padding(Padding::uniform(10_000_000))).unwrap_err();
    assert!(matches!(e, CnnError::TooLarge { .. }), "{e}");
}

/// The implicit product and the direct convolution named on four million channels of a 64x64 image (the operands
/// broadcast from one value; strided, so its backward reads phase planes too): one padded
/// sample (about 70 GB) is refused before any work, forward and backward.
#[test]
fn an_implicit_padded_sample_larger_than_memory_is_an_error() {
    use cnn_nn::cnn_core::{conv2d_backward_with, conv2d_with, Algorithm};
    let one = Array4::<f32>::ones((1, 1, 1, 1));
    let (x, w) = (one.broadcast((1, 1 << 22, 64, 64)).unwrap(), one.broadcast((1, 1 << 22, 3, 3)).unwrap());
    let win = Window::square(3).stride(2).padding(Padding::Same);
    let dy = one.broadcast((1, 1, 32, 32)).unwrap();
    for algorithm in [Algorithm::Implicit, Algorithm::Direct] {
        let e = conv2d_with(algorithm, x.clone(), w.clone(), None, &win, 1).unwrap_err();
        assert!(matches!(e, CnnError::TooLarge { .. }) && e.to_string().contains("padded sample"), "{} {e}", algorithm.name());
        let e = conv2d_backward_with(algorithm, x.clone(), w.clone(), dy.clone(), &win, 1).unwrap_err();
        assert!(matches!(e, CnnError::TooLarge { .. }) && e.to_string().contains("padded sample"), "{} {e}", algorithm.name());
    }
}

/// Winograd named on a million channels (the operands broadcast from one value): its
/// transformed tiles (about 70 GB for one sample) are refused before any work.
#[test]
fn winograd_tiles_larger_than_memory_are_an_error() {
    use cnn_nn::cnn_core::{conv2d_with, Algorithm};
    let one = Array4::<f32>::ones((1, 1, 1, 1));
    let x = one.broadcast((1, 1 << 20, 64, 64)).unwrap();
    let w = one.broadcast((1, 1 << 20, 3, 3)).unwrap();
    let e = conv2d_with(Algorithm::Winograd, x, w, None, &Window::square(3).padding(Padding::Same), 1).unwrap_err();
    assert!(matches!(e, CnnError::TooLarge { .. }) && e.to_string().contains("Winograd"), "{e}");
}

#[test]
fn the_loss_of_an_empty_batch_is_an_error() {
    let e = softmax_cross_entropy(Array2::<f32>::zeros((0, 10)).view(), &[]).unwrap_err();
    assert!(e.to_string().contains("a loss needs at least one sample"), "{e}");
}

// 8. Reproducibility

#[test]
fn the_same_seed_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let path = dir.path().join(name);
        let mut model = small_model(3);
        let mut opt = Adam::new(1e-2);
        fit(&mut model, &mut opt, &toy_data(32, 3), None, None, &quiet(2), |_, _, _| Ok(())).unwrap();
        let meta: Metadata = (0..20).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
        checkpoint::save(&path, &model, Some(&opt), &meta).unwrap();
        std::fs::read(path).unwrap()
    };
    assert_eq!(run("a.safetensors"), run("b.safetensors"));
}

#[test]
fn the_weight_stream_is_pinned() {
    // ChaCha8 has a specified stream: these are the first weights of `reference_cnn(0)` and
    // must not change with a dependency update (He uniform, limit sqrt(6/9) = 0.8165).
    let model = reference_cnn(0);
    let w = &model.named_params()[0].1.value;
    let first: Vec<f32> = w.iter().take(3).copied().collect();
    assert_eq!(first, PINNED, "weights of seed 0 changed: {first:?}");
}
const PINNED: [f32; 3] = [0.25261927, 0.34141862, 0.37537587];

#[test]
fn stale_temporary_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("metrics.csv.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("curves.tmp.png"), b"half").unwrap();
    std::fs::write(dir.path().join("metrics.csv"), b"keep").unwrap();
    std::fs::write(dir.path().join("curves.png"), b"keep").unwrap();
    let removed = checkpoint::remove_stale_temporaries(dir.path()).unwrap();
    assert_eq!(removed.len(), 3);
    let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["curves.png", "metrics.csv"]);
}

// The library user's side: a Sync model served from many threads, one image classified

#[test]
fn one_model_serves_many_threads() {
    let model = Arc::new(small_model(2));
    let image = toy_data(1, 3).images.index_axis_move(cnn_nn::ndarray::Axis(0), 0);
    let alone = model.classify(image.view()).unwrap();
    let answers: Vec<_> = (0..4)
        .map(|_| {
            let (model, image) = (Arc::clone(&model), image.clone());
            std::thread::spawn(move || model.classify(image.view()).unwrap())
        })
        .map(|t| t.join().unwrap())
        .collect();
    assert!(answers.iter().all(|a| *a == alone));
    assert!(alone.class < 4);
    let e = model.classify(Array2::<f32>::zeros((8, 8)).view()).unwrap_err();
    assert!(e.to_string().contains("expected shape [0, 1, 8, 8], got [1, 8, 8]"), "{e}");
}

#[test]
fn inconsistent_data_and_augmenting_non_images_are_errors_not_panics() {
    // a Dataset's public fields that disagree: 16 images, 12 labels
    let mut data = toy_data(16, 21);
    data.labels.truncate(12);
    let e = fit(&mut small_model(1), &mut Adam::new(1e-3), &data, None, None, &quiet(1), |_, _, _| Ok(())).unwrap_err();
    assert_eq!(e.to_string(), "invalid configuration: the training set: 16 images but 12 labels");
    // augmentation on samples that are not [c, h, w] images
    let flat = cnn_nn::data::Dataset { images: Array4::zeros((8, 1, 1, 4)), labels: vec![0; 8] };
    let mut model = Sequential::builder(&[1, 1, 4]).add(Flatten::new()).add(Dense::new(4)).build().unwrap();
    let config = FitConfig { augment: Some(std::sync::Arc::new(cnn_nn::augment::HorizontalFlip { probability: 0.5 })), ..quiet(1) };
    assert!(fit(&mut model, &mut Adam::new(1e-3), &flat, None, None, &config, |_, _, _| Ok(())).is_ok(), "[1, 1, 4] is an image");
    struct Signals;
    impl cnn_nn::data::Data for Signals {
        fn len(&self) -> usize {
            4
        }
        fn sample_shape(&self) -> Vec<usize> {
            vec![2, 3]
        }
        fn label(&self, _: usize) -> usize {
            0
        }
        fn samples(&self, indices: &[usize]) -> ArrayD<f32> {
            ArrayD::zeros(vec![indices.len(), 2, 3])
        }
    }
    let mut model = Sequential::builder(&[2, 3]).add(Flatten::new()).add(Dense::new(2)).build().unwrap();
    let e = fit(&mut model, &mut Adam::new(1e-3), &Signals, None, None, &config, |_, _, _| Ok(())).unwrap_err();
    assert_eq!(e.to_string(), "invalid configuration: augmentation transforms images ([c, h, w]); the training samples are [2, 3]");
}
