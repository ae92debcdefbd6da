//! Data and models shared by the integration tests.
#![allow(dead_code)]

use cnn_nn::data::Dataset;
use cnn_nn::layers::{Conv2d, Dense, Flatten, MaxPool2d, ReLU};
use cnn_nn::ndarray::{Array4, ArrayD};
use cnn_nn::{ModelRng, Padding, Sequential, WeightInit};
use rand::{Rng, SeedableRng};
use std::io::Write;

/// The bytes of an IDX file of unsigned bytes, with `dims` as given even when they do not
/// describe `data` (to test the reader; [`cnn_nn::data::Idx::to_bytes`] writes valid files).
pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    bytes.extend(dims.iter().flat_map(|d| d.to_be_bytes()));
    bytes.extend(data);
    bytes
}

/// `bytes`, gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Four classes of 8x8 images: a bright bar in one of four places, plus noise.
pub fn toy_data(n: usize, seed: u64) -> Dataset {
    let mut rng = ModelRng::seed_from_u64(seed);
    let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let mut images = Array4::from_shape_simple_fn((n, 1, 8, 8), || rng.gen_range(0.0f32..0.3));
    for (i, &l) in labels.iter().enumerate() {
        for t in 0..8 {
            let (y, x) = [(1, t), (6, t), (t, 1), (t, 6)][l];
            images[[i, 0, y, x]] += 0.7;
        }
    }
    Dataset { images, labels }
}

/// Conv(`filters`, 3x3, SAME) → ReLU → MaxPool(2) → Flatten → Dense(16) → ReLU → Dense(4), for
/// [`toy_data`].
pub fn small_model_with(filters: usize, seed: u64) -> Sequential {
    Sequential::builder(&[1, 8, 8])
        .add(Conv2d::new(filters, 3).padding(Padding::Same))
        .add(ReLU::new())
        .add(MaxPool2d::new(2))
        .add(Flatten::new())
        .add(Dense::new(16))
        .add(ReLU::new())
        .add(Dense::new(4).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .unwrap()
}

/// What a model has learned: its weights and buffers, by name (to compare two runs).
pub fn state(model: &Sequential) -> (Vec<(String, ArrayD<f32>)>, Vec<(String, ArrayD<f32>)>) {
    let params = model.named_params().into_iter().map(|(n, p)| (n, p.value.clone())).collect();
    (params, model.named_buffers().into_iter().map(|(n, b)| (n, b.clone())).collect())
}

/// `f` run on a rayon pool of `threads` threads.
pub fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// [`small_model_with`] six filters.
pub fn small_model(seed: u64) -> Sequential {
    small_model_with(6, seed)
}
