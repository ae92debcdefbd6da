//! Data: the IDX format of MNIST and Fashion-MNIST (plain or gzip), data sets and batches.
//!
//! An IDX file is a header — two zero bytes, a type byte (`0x08` = unsigned byte), the number
//! of dimensions — then each dimension as a big-endian `u32`, then the values, row-major.

use crate::error::{NnError, Result};
use flate2::read::GzDecoder;
use ndarray::{s, Array4, ArrayD, Axis};
use crate::layer::ModelRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// An IDX array of unsigned bytes: its dimensions and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions, e.g. `[60000, 28, 28]`.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<u8>,
}

impl Idx {
    /// The IDX file of these values (uncompressed), for writing data sets of one's own.
    ///
    /// ```
    /// use cnn_nn::data::Idx;
    /// let bytes = Idx { dims: vec![2], data: vec![7, 1] }.to_bytes().unwrap();
    /// assert_eq!(bytes, [0, 0, 8, 1, 0, 0, 0, 2, 7, 1]);
    /// ```
    ///
    /// # Errors
    /// No dimensions or more than 255, a dimension above `u32::MAX`, data of another size
    /// than the dimensions say.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bad = |reason: String| NnError::Config(format!("IDX dims {:?}: {reason}", self.dims));
        let ndims = u8::try_from(self.dims.len()).ok().filter(|&n| n > 0).ok_or_else(|| bad("an IDX file has 1 to 255 dimensions".into()))?;
        let size = self.dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if size != Some(self.data.len()) {
            return Err(bad(format!("they do not describe the {} values given", self.data.len())));
        }
        let mut bytes = vec![0, 0, 0x08, ndims];
        for &d in &self.dims {
            bytes.extend(u32::try_from(d).map_err(|_| bad(format!("{d} does not fit an IDX dimension (u32)")))?.to_be_bytes());
        }
        bytes.extend(&self.data);
        Ok(bytes)
    }
}

fn data_error(path: &Path, reason: String) -> NnError {
    NnError::Data { path: path.to_path_buf(), reason }
}

/// Reads an IDX file of unsigned bytes, gzip-compressed or not.
///
/// # Errors
/// A file that cannot be read, a bad magic number, a type other than unsigned byte, a
/// truncated header, data shorter or longer than the dimensions say. A header that claims more
/// data than the file holds is refused without allocating that much.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let file = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    let mut head = [0u8; 2];
    let mut raw = std::io::BufReader::new(file);
    let peeked = raw.read(&mut head).map_err(|e| NnError::io(path, e))?;
    let chained = std::io::Cursor::new(head[..peeked].to_vec()).chain(raw);
    let mut reader: Box<dyn Read> = if head == [0x1f, 0x8b] { Box::new(GzDecoder::new(chained)) } else { Box::new(chained) };

    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).map_err(|_| data_error(path, "file too short for the IDX magic number (4 bytes at offset 0)".into()))?;
    if magic[..2] != [0, 0] {
        return Err(data_error(path, format!("bad IDX magic number {magic:02x?} at offset 0 (expected 00 00 08 <dims>)")));
    }
    if magic[2] != 0x08 {
        return Err(data_error(path, format!("IDX type 0x{:02x} at offset 2 is not unsigned byte (0x08)", magic[2])));
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        return Err(data_error(path, "IDX header at offset 3 declares zero dimensions".into()));
    }
    let mut dims = Vec::with_capacity(ndims);
    for d in 0..ndims {
        let mut b = [0u8; 4];
        reader
            .read_exact(&mut b)
            .map_err(|_| data_error(path, format!("header truncated: dimension {d} missing at offset {}", 4 + 4 * d)))?;
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let header_len = 4 + 4 * ndims;
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| data_error(path, format!("dimensions {dims:?} overflow")))?;
    // Read at most one byte more than promised: memory grows with the data actually there.
    let mut data = Vec::new();
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| data_error(path, format!("reading data at offset {header_len}: {e}")))?;
    if data.len() < expected {
        return Err(data_error(
            path,
            format!("header (dims {dims:?}) promises {expected} bytes of data from offset {header_len}, the file holds {}", data.len()),
        ));
    }
    if data.len() > expected {
        return Err(data_error(path, format!("trailing data after the {expected} bytes that dims {dims:?} describe (offset {})", header_len + expected)));
    }
    Ok(Idx { dims, data })
}

/// Labelled samples, as training and evaluation read them: users feed their own data by
/// implementing it (in-memory arrays, their own files); [`Dataset`] is the in-memory one that
/// IDX files load into.
pub trait Data: Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// No samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one sample, e.g. `[1, 28, 28]`.
    fn sample_shape(&self) -> Vec<usize>;

    /// The class of sample `index`.
    fn label(&self, index: usize) -> usize;

    /// The samples at `indices`, stacked: `[indices.len(), ...sample_shape]`.
    fn samples(&self, indices: &[usize]) -> ArrayD<f32>;

    /// The samples at `indices` and their labels: a batch.
    fn batch(&self, indices: &[usize]) -> (ArrayD<f32>, Vec<usize>) {
        (self.samples(indices), indices.iter().map(|&i| self.label(i)).collect())
    }

    /// Why the data set is inconsistent, if it is (checked before training or evaluation).
    fn check(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Images and labels in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `[n, c, h, w]`, pixels scaled to `[0, 1]` (or standardised).
    pub images: Array4<f32>,
    /// `n` class labels.
    pub labels: Vec<usize>,
}

impl Data for Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn sample_shape(&self) -> Vec<usize> {
        self.images.shape()[1..].to_vec()
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    fn samples(&self, indices: &[usize]) -> ArrayD<f32> {
        self.images.select(Axis(0), indices).into_dyn()
    }

    /// Its two public fields must hold as many images as labels.
    fn check(&self) -> std::result::Result<(), String> {
        let images = self.images.dim().0;
        (images == self.labels.len()).then_some(()).ok_or_else(|| format!("{images} images but {} labels", self.labels.len()))
    }
}

impl Dataset {
    /// Reads an images file and a labels file, checking that they agree and that every label
    /// is one of `classes`.
    ///
    /// # Errors
    /// Any [`read_idx`] fault, images that are not `[n, h, w]`, labels that are not `[n]`,
    /// different counts, a label of `classes` or more (naming the file and the sample).
    pub fn from_idx(images: &Path, labels: &Path, classes: usize) -> Result<Dataset> {
        let img = read_idx(images)?;
        let lab = read_idx(labels)?;
        let [n, h, w] = img.dims[..] else {
            return Err(data_error(images, format!("images must have 3 dimensions (n, h, w), header says {:?}", img.dims)));
        };
        let [m] = lab.dims[..] else {
            return Err(data_error(labels, format!("labels must have 1 dimension, header says {:?}", lab.dims)));
        };
        if n != m {
            return Err(data_error(labels, format!("{m} labels for {n} images in {}", images.display())));
        }
        if let Some((index, label)) = lab.data.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            let offset = 8 + index;
            return Err(data_error(labels, format!("label {label} of sample {index} (offset {offset}) is outside the {classes} classes 0..{classes}")));
        }
        let pixels = img.data.iter().map(|&p| p as f32 / 255.0).collect();
        let images = Array4::from_shape_vec((n, 1, h, w), pixels).expect("size checked by read_idx");
        Ok(Dataset { images, labels: lab.data.iter().map(|&l| l as usize).collect() })
    }

    /// The standard MNIST layout: `train-images-idx3-ubyte[.gz]` and the three others in `dir`,
    /// with labels checked against `classes`. Returns `(train, test)`.
    ///
    /// # Errors
    /// A missing file (naming the paths tried) or any [`Dataset::from_idx`] fault.
    pub fn load_mnist_dir(dir: &Path, classes: usize) -> Result<(Dataset, Dataset)> {
        let find = |stem: &str| -> Result<PathBuf> {
            let plain = dir.join(stem);
            let gz = dir.join(format!("{stem}.gz"));
            [plain.clone(), gz.clone()].into_iter().find(|p| p.exists()).ok_or_else(|| {
                data_error(&plain, format!("not found (nor {}); expected the four MNIST-format files here", gz.display()))
            })
        };
        let train = Dataset::from_idx(&find("train-images-idx3-ubyte")?, &find("train-labels-idx1-ubyte")?, classes)?;
        let test = Dataset::from_idx(&find("t10k-images-idx3-ubyte")?, &find("t10k-labels-idx1-ubyte")?, classes)?;
        Ok((train, test))
    }

    /// The first `n` samples (all if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset { images: self.images.slice(s![..n, .., .., ..]).to_owned(), labels: self.labels[..n].to_vec() }
    }

    /// Splits off the last `n` samples (for validation): `(rest, last n)`.
    pub fn split_off(&self, n: usize) -> (Dataset, Dataset) {
        let k = self.len() - n.min(self.len());
        let head = Dataset { images: self.images.slice(s![..k, .., .., ..]).to_owned(), labels: self.labels[..k].to_vec() };
        let tail = Dataset { images: self.images.slice(s![k.., .., .., ..]).to_owned(), labels: self.labels[k..].to_vec() };
        (head, tail)
    }

}

/// The indices `0..n` in a seeded random order.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ModelRng::seed_from_u64(seed));
    order
}
