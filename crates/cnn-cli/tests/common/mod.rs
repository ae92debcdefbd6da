//! What the programs' tests share.
#![allow(dead_code)]

use cnn_nn::data::Idx;
use std::path::{Path, PathBuf};

/// An MNIST-format directory: `train` and `test` images of 28x28 (a class-dependent bar plus
/// a pattern), with `bad_test_label` replacing test label 3 when given.
pub fn data_dir(dir: &Path, train: usize, test: usize, bad_test_label: Option<u8>) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let images = |n: usize| -> Vec<u8> {
        (0..n * 784).map(|i| {
            let (s, p) = (i / 784, i % 784);
            let (y, x) = (p / 28, p % 28);
            if y == 2 + 2 * (s % 10) { 255 } else { ((x * 7 + y * 3 + s) % 50) as u8 }
        }).collect()
    };
    let labels = |n: usize| -> Vec<u8> { (0..n).map(|s| (s % 10) as u8).collect() };
    let mut test_labels = labels(test);
    if let Some(bad) = bad_test_label {
        test_labels[3] = bad;
    }
    let write = |name: &str, dims: Vec<usize>, values: Vec<u8>| std::fs::write(data.join(name), Idx { dims, data: values }.to_bytes().unwrap()).unwrap();
    write("train-images-idx3-ubyte", vec![train, 28, 28], images(train));
    write("train-labels-idx1-ubyte", vec![train], labels(train));
    write("t10k-images-idx3-ubyte", vec![test, 28, 28], images(test));
    write("t10k-labels-idx1-ubyte", vec![test], test_labels);
    data
}
