//! A user's own data: anything that implements `Data` trains and evaluates, with as many
//! classes as it likes (not limited to 256).

use cnn_nn::data::Data;
use cnn_nn::layers::{Dense, Flatten};
use cnn_nn::ndarray::ArrayD;
use cnn_nn::optim::Adam;
use cnn_nn::train::{evaluate, fit, FitConfig};
use cnn_nn::{NnError, Sequential};

/// 600 samples of 1x2x2 generated on demand: sample `i` has class `i % 300` and carries it
/// in its pixels.
struct Generated {
    classes: usize,
}

impl Data for Generated {
    fn len(&self) -> usize {
        600
    }

    fn sample_shape(&self) -> Vec<usize> {
        vec![1, 2, 2]
    }

    fn label(&self, index: usize) -> usize {
        index % self.classes
    }

    fn samples(&self, indices: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_fn(vec![indices.len(), 1, 2, 2], |i| {
            let c = (indices[i[0]] % self.classes) as f32 / self.classes as f32;
            if i[3] == 0 { c } else { 1.0 - c }
        })
    }
}

#[test]
fn a_generated_data_set_of_300_classes_trains() {
    let data = Generated { classes: 300 };
    let mut model = Sequential::builder(&[1, 2, 2]).add(Flatten::new()).add(Dense::new(300)).seed(1).build().unwrap();
    let config = FitConfig { epochs: 2, batch_size: 60, progress: false, ..FitConfig::default() };
    let history = fit(&mut model, &mut Adam::new(1e-2), &data, Some(&data), None, &config, |_, _, _| Ok(())).unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[1].train_loss < history[0].train_loss);
    let e = evaluate(&model, &data, 128).unwrap();
    assert!(e.loss.is_finite() && (0.0..=1.0).contains(&e.accuracy));
    // labels beyond the model's classes are refused before training, naming the sample
    let mut small = Sequential::builder(&[1, 2, 2]).add(Flatten::new()).add(Dense::new(256)).build().unwrap();
    let e = fit(&mut small, &mut Adam::new(1e-2), &data, None, None, &config, |_, _, _| Ok(())).unwrap_err();
    assert!(matches!(e, NnError::Label { label: 256, index: 256, classes: 256 }), "{e}");
}
