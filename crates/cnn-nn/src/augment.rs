//! Data augmentation: seeded transforms of one sample, applied on the fly to every batch.
//!
//! A transform maps a sample `[c, h, w]` to a new one, drawing its randomness from the
//! generator it is handed. [`augment_batch`] gives every sample its own generator, seeded by
//! the run's seed, the epoch and the sample's index in the data set, so the result does not
//! depend on the batch it lands in or on the number of threads. Adding a transform is one
//! struct and one `impl Transform`.

use crate::layer::ModelRng;
use ndarray::{s, Array3, Array4, ArrayView3, Axis};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// A random transformation of one sample.
pub trait Transform: std::fmt::Debug + Send + Sync {
    /// `sample` (`[c, h, w]`) transformed, of the same shape.
    fn apply(&self, sample: ArrayView3<f32>, rng: &mut ModelRng) -> Array3<f32>;
}

/// A random `h x w` crop of the sample zero-padded by `padding` on every side: the image
/// shifted by up to `padding` pixels each way (the CIFAR ResNets' augmentation). A padding
/// beyond the image's larger side acts as that side (a shift that far leaves only zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomCrop {
    /// Zero pixels added on each side before cropping.
    pub padding: usize,
}

impl Transform for RandomCrop {
    fn apply(&self, sample: ArrayView3<f32>, rng: &mut ModelRng) -> Array3<f32> {
        let (c, h, w) = sample.dim();
        let p = self.padding.min(h.max(w)) as isize;
        // the crop's corner in the padded image, as a shift of the original: -p..=p
        let (dy, dx) = (rng.gen_range(-p..=p), rng.gen_range(-p..=p));
        let mut out = Array3::zeros((c, h, w));
        // output (y, x) reads input (y + dy, x + dx) where that is inside the image
        let range = |d: isize, len: usize| (0isize.max(-d) as usize, (len as isize).min(len as isize - d).max(0) as usize);
        let ((y0, y1), (x0, x1)) = (range(dy, h), range(dx, w));
        if y0 < y1 && x0 < x1 {
            let src = sample.slice(s![.., (y0 as isize + dy) as usize..(y1 as isize + dy) as usize, (x0 as isize + dx) as usize..(x1 as isize + dx) as usize]);
            out.slice_mut(s![.., y0..y1, x0..x1]).assign(&src);
        }
        out
    }
}

/// Mirrors the sample left to right with probability `probability`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HorizontalFlip {
    /// The chance of a flip (0.5 is usual).
    pub probability: f32,
}

impl Transform for HorizontalFlip {
    fn apply(&self, sample: ArrayView3<f32>, rng: &mut ModelRng) -> Array3<f32> {
        if rng.gen::<f32>() < self.probability {
            sample.slice(s![.., .., ..;-1]).to_owned()
        } else {
            sample.to_owned()
        }
    }
}

/// Transforms applied one after the other.
#[derive(Debug, Default)]
pub struct Compose(pub Vec<Box<dyn Transform>>);

impl Transform for Compose {
    fn apply(&self, sample: ArrayView3<f32>, rng: &mut ModelRng) -> Array3<f32> {
        let mut out = sample.to_owned();
        for t in &self.0 {
            out = t.apply(out.view(), rng);
        }
        out
    }
}

/// The generator of sample `index` in `epoch`: a stream of its own, so that every sample's
/// randomness is fixed by (seed, epoch, index) alone.
pub fn sample_rng(seed: u64, epoch: usize, index: usize) -> ModelRng {
    let mut rng = ModelRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(index as u64);
    rng
}

/// Applies `transform` to every sample of the batch `x` (`[b, c, h, w]`), in parallel, sample
/// `i` being the data set's sample `indices[i]`.
///
/// # Panics
/// If `indices` does not have one index per sample (a bug in the caller).
pub fn augment_batch(transform: &dyn Transform, x: &mut Array4<f32>, indices: &[usize], seed: u64, epoch: usize) {
    assert_eq!(x.dim().0, indices.len(), "one index per sample");
    x.axis_iter_mut(Axis(0)).into_par_iter().zip(indices.par_iter()).for_each(|(mut sample, &index)| {
        let out = transform.apply(sample.view(), &mut sample_rng(seed, epoch, index));
        sample.assign(&out);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    fn image() -> Array3<f32> {
        Array::from_shape_vec((1, 3, 3), (1..=9).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn crops_are_shifts_of_the_padded_image() {
        // every crop of 1..9 padded by 1 is the image shifted by dy, dx in -1..=1, zeros coming in
        let x = image();
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let out = RandomCrop { padding: 1 }.apply(x.view(), &mut sample_rng(1, 0, i));
            let shift = (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dy, dx))).find(|&(dy, dx)| {
                (0..3).all(|y| (0..3).all(|x_| {
                    let (sy, sx) = (y as isize + dy, x_ as isize + dx);
                    let expected = if (0..3).contains(&sy) && (0..3).contains(&sx) { x[[0, sy as usize, sx as usize]] } else { 0.0 };
                    out[[0, y, x_]] == expected
                }))
            });
            seen.insert(shift.expect("a shifted image"));
        }
        assert_eq!(seen.len(), 9, "all nine shifts occur");
        // no padding: the image itself
        assert_eq!(RandomCrop { padding: 0 }.apply(x.view(), &mut sample_rng(1, 0, 0)), x);
        // an absurd padding is no panic: the shape stays, the values are the image's or 0
        let far = RandomCrop { padding: usize::MAX }.apply(x.view(), &mut sample_rng(1, 0, 1));
        assert_eq!(far.dim(), x.dim());
        assert!(far.iter().all(|v| *v == 0.0 || x.iter().any(|u| u == v)));
    }

    #[test]
    fn flips_mirror_the_rows() {
        let x = image();
        let always = HorizontalFlip { probability: 1.0 }.apply(x.view(), &mut sample_rng(0, 0, 0));
        assert_eq!(always.slice(s![0, 0, ..]).to_vec(), [3.0, 2.0, 1.0]);
        assert_eq!(HorizontalFlip { probability: 0.0 }.apply(x.view(), &mut sample_rng(0, 0, 0)), x);
        let flips = (0..1000).filter(|&i| HorizontalFlip { probability: 0.5 }.apply(x.view(), &mut sample_rng(3, 0, i)) != x).count();
        assert!((400..600).contains(&flips), "{flips}");
    }

    #[test]
    fn a_sample_gets_the_same_augmentation_in_any_batch_and_thread_count() {
        let t = Compose(vec![Box::new(RandomCrop { padding: 2 }), Box::new(HorizontalFlip { probability: 0.5 })]);
        let data = Array::from_shape_fn((12, 2, 6, 6), |(i, c, y, x)| (i * 100 + c * 36 + y * 6 + x) as f32);
        let run = |threads: usize, order: &[usize]| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut x = data.select(Axis(0), order);
            pool.install(|| augment_batch(&t, &mut x, order, 7, 3));
            x
        };
        let order: Vec<usize> = (0..12).collect();
        let one = run(1, &order);
        assert_eq!(run(2, &order), one);
        // sample 5 alone, in another batch, on 3 threads: the same result
        assert_eq!(run(3, &[5, 2]).index_axis(Axis(0), 0), one.index_axis(Axis(0), 5));
        // another epoch, another augmentation
        let mut other = data.clone();
        augment_batch(&t, &mut other, &order, 7, 4);
        assert_ne!(other, one);
    }
}
