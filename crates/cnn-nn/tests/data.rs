//! The IDX reader: good files written here, every fault, and a few hundred real images.

mod common;

use cnn_nn::data::{read_idx, shuffled, Data, Dataset, FASHION_MNIST_DIR};
use cnn_nn::NnError;
use common::{gzip, idx_bytes};
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn reason(e: NnError) -> String {
    e.to_string()
}

#[test]
fn reads_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|v| (v * 10) as u8).collect();
    let plain = write(dir.path(), "img", &idx_bytes(&[2, 3, 4], &pixels));
    let gz = write(dir.path(), "img.gz", &gzip(&idx_bytes(&[2, 3, 4], &pixels)));
    for path in [&plain, &gz] {
        let idx = read_idx(path).unwrap();
        assert_eq!(idx.dims, [2, 3, 4]);
        assert_eq!(idx.data, pixels);
    }
    let labels = write(dir.path(), "lab", &idx_bytes(&[2], &[7, 1]));
    let data = Dataset::from_idx(&plain, &labels, 10).unwrap();
    assert_eq!(data.images.dim(), (2, 1, 3, 4));
    assert_eq!(data.images[[1, 0, 2, 3]], 230.0 / 255.0);
    assert_eq!(data.labels, [7, 1]);
}

#[test]
fn every_fault_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = reason(read_idx(&d.join("missing")).unwrap_err());
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");

    let e = reason(read_idx(&write(d, "short", &[0, 0])).unwrap_err());
    assert!(e.ends_with("file too short for the IDX magic number (4 bytes at offset 0)"), "{e}");

    let e = reason(read_idx(&write(d, "magic", &[1, 2, 8, 1, 0, 0, 0, 0])).unwrap_err());
    assert!(e.contains("bad IDX magic number [01, 02, 08, 01] at offset 0"), "{e}");

    let e = reason(read_idx(&write(d, "type", &[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0])).unwrap_err());
    assert!(e.ends_with("IDX type 0x0d at offset 2 is not unsigned byte (0x08)"), "{e}");

    let e = reason(read_idx(&write(d, "header", &[0, 0, 8, 3, 0, 0, 0, 2, 0, 0])).unwrap_err());
    assert!(e.ends_with("header truncated: dimension 1 missing at offset 8"), "{e}");

    let e = reason(read_idx(&write(d, "data", &idx_bytes(&[2, 2, 2], &[1, 2, 3]))).unwrap_err());
    assert!(e.ends_with("header (dims [2, 2, 2]) promises 8 bytes of data from offset 16, the file holds 3"), "{e}");

    let e = reason(read_idx(&write(d, "trailing", &idx_bytes(&[2], &[1, 2, 3]))).unwrap_err());
    assert!(e.ends_with("trailing data after the 2 bytes that dims [2] describe (offset 10)"), "{e}");

    // a header claiming 4 Gi x 4 Gi bytes (16 EiB, no overflow): refused without allocating
    // them (the test would abort otherwise)
    let e = reason(read_idx(&write(d, "huge", &idx_bytes(&[u32::MAX, u32::MAX], &[0; 10]))).unwrap_err());
    assert!(e.ends_with("promises 18446744065119617025 bytes of data from offset 12, the file holds 10"), "{e}");
    // and one whose size does not even fit in a usize
    let e = reason(read_idx(&write(d, "overflow", &idx_bytes(&[u32::MAX, u32::MAX, 16], &[0; 10]))).unwrap_err());
    assert!(e.ends_with("dimensions [4294967295, 4294967295, 16] overflow"), "{e}");
    let e = reason(read_idx(&write(d, "huge.gz", &gzip(&idx_bytes(&[60000, 28, 28], &[0; 100])))).unwrap_err());
    assert!(e.ends_with("promises 47040000 bytes of data from offset 16, the file holds 100"), "{e}");
}

#[test]
fn images_and_labels_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = write(d, "img", &idx_bytes(&[3, 2, 2], &[0; 12]));
    let lab = write(d, "lab", &idx_bytes(&[2], &[0, 1]));
    let e = reason(Dataset::from_idx(&img, &lab, 10).unwrap_err());
    assert!(e.contains("2 labels for 3 images"), "{e}");
    let nine = write(d, "nine", &idx_bytes(&[3], &[0, 9, 1]));
    let img3 = write(d, "img3", &idx_bytes(&[3, 2, 2], &[0; 12]));
    let e = reason(Dataset::from_idx(&img3, &nine, 9).unwrap_err());
    assert!(e.ends_with("nine: label 9 of sample 1 (offset 9) is outside the 9 classes 0..9"), "{e}");
    let flat = write(d, "flat", &idx_bytes(&[12], &[0; 12]));
    let e = reason(Dataset::from_idx(&flat, &lab, 10).unwrap_err());
    assert!(e.ends_with("images must have 3 dimensions (n, h, w), header says [12]"), "{e}");
    let e = reason(Dataset::load_mnist_dir(d, 10).unwrap_err());
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("not found"), "{e}");
}

#[test]
fn splits_batches_and_shuffles() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "img", &idx_bytes(&[10, 1, 1], &(0..10).collect::<Vec<u8>>()));
    let lab = write(dir.path(), "lab", &idx_bytes(&[10], &(0..10).collect::<Vec<u8>>()));
    let data = Dataset::from_idx(&img, &lab, 10).unwrap();
    let (train, val) = data.split_off(3);
    assert_eq!((train.len(), val.labels.clone()), (7, vec![7, 8, 9]));
    let order = shuffled(data.len(), 1);
    assert_eq!(order, shuffled(data.len(), 1));
    assert_ne!(order, shuffled(data.len(), 2));
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    let (x, labels) = data.batch(&[4, 2]);
    assert_eq!(x.shape(), &[2, 1, 1, 1]);
    assert_eq!((x[[0, 0, 0, 0]] * 255.0, labels), (4.0, vec![4, 2]));
}

/// A few hundred real Fashion-MNIST images (the Debian package `cargo xtask test` installs).
#[test]
fn fashion_mnist_trains_on_a_few_hundred_images() {
    use cnn_nn::models::reference_cnn;
    use cnn_nn::optim::Adam;
    use cnn_nn::train::{evaluate, fit, FitConfig};
    let dir = Path::new(FASHION_MNIST_DIR);
    let test_images = dir.join("t10k-images-idx3-ubyte.gz");
    assert!(test_images.exists(), "{} is missing: run `cargo xtask test`, which installs dataset-fashion-mnist", test_images.display());
    let data = Dataset::from_idx(&test_images, &dir.join("t10k-labels-idx1-ubyte.gz"), 10).unwrap();
    assert_eq!((data.len(), data.images.dim().2), (10_000, 28));
    assert!(data.labels.iter().all(|&l| l < 10));
    let (train, held_out) = data.take(600).split_off(200);
    let mut model = reference_cnn(1);
    let config = FitConfig { epochs: 3, batch_size: 32, seed: 1, progress: false, ..FitConfig::default() };
    fit(&mut model, &mut Adam::new(2e-3), &train, None, None, &config, |_, _, _| Ok(())).unwrap();
    let acc = evaluate(&model, &held_out, 100).unwrap().accuracy;
    assert!(acc > 0.55, "10 classes, chance is 0.10; got {acc}");
}
