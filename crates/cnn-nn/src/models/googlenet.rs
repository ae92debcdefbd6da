//! GoogLeNet (Szegedy et al., 2014): inception modules, pooling instead of big dense layers.

use crate::layer::WeightInit;
use crate::layers::{Chain, Concat, Conv2d, Dense, Dropout, GlobalAvgPool2d, LocalResponseNorm, MaxPool2d, ReLU};
use crate::sequential::Sequential;
use crate::{Padding, Window};

/// A convolution (with bias) and its ReLU.
fn conv(filters: usize, k: usize) -> Chain {
    Chain::new().add(Conv2d::new(filters, k).padding(Padding::Same)).add(ReLU::new())
}

fn max_pool(stride: usize) -> MaxPool2d {
    MaxPool2d::with_window(Window::square(3).stride(stride).padding(Padding::Same))
}

/// An inception module: 1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max pooling then 1x1 —
/// concatenated. The arguments are the paper's table 1 columns.
fn inception(c1: usize, r3: usize, c3: usize, r5: usize, c5: usize, pool_proj: usize) -> Concat {
    Concat::new()
        .branch(conv(c1, 1))
        .branch(conv(r3, 1).add(conv(c3, 3)))
        .branch(conv(r5, 1).add(conv(c5, 5)))
        .branch(Chain::new().add(max_pool(1)).add(conv(pool_proj, 1)))
}

/// GoogLeNet for 3x224x224 images, 1000 classes, as in the paper's table 1: without the
/// auxiliary classifiers, with biases, local response normalisation and 5x5 branches (no
/// BatchNorm). 6,998,552 parameters.
pub fn googlenet(seed: u64) -> Sequential {
    let lrn = || LocalResponseNorm::new(5).constants(1e-4, 0.75, 1.0);
    Sequential::builder(&[3, 224, 224])
        .add(Chain::new().add(Conv2d::new(64, 7).stride(2).padding(Padding::Same)).add(ReLU::new()))
        .add(max_pool(2))
        .add(lrn())
        .add(conv(64, 1))
        .add(conv(192, 3))
        .add(lrn())
        .add(max_pool(2))
        .add(inception(64, 96, 128, 16, 32, 32))
        .add(inception(128, 128, 192, 32, 96, 64))
        .add(max_pool(2))
        .add(inception(192, 96, 208, 16, 48, 64))
        .add(inception(160, 112, 224, 24, 64, 64))
        .add(inception(128, 128, 256, 24, 64, 64))
        .add(inception(112, 144, 288, 32, 64, 64))
        .add(inception(256, 160, 320, 32, 128, 128))
        .add(max_pool(2))
        .add(inception(256, 160, 320, 32, 128, 128))
        .add(inception(384, 192, 384, 48, 128, 128))
        .add(GlobalAvgPool2d::new())
        .add(Dropout::new(0.4))
        .add(Dense::new(1000).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .expect("GoogLeNet's shapes fit")
}
