//! Xception (Chollet, 2017), as Keras' `Xception(include_top=True)`: depthwise-separable
//! convolutions in residual blocks.

use crate::layer::WeightInit;
use crate::layers::{BatchNorm, Chain, Conv2d, Dense, GlobalAvgPool2d, MaxPool2d, ReLU, Residual, SeparableConv2d};
use crate::sequential::Sequential;
use crate::{Padding, Window};

/// A 3x3 SAME separable convolution without bias, then BatchNorm (Keras' eps 1e-3).
fn sep_bn(filters: usize) -> Chain {
    Chain::new().add(SeparableConv2d::new(filters, 3).padding(Padding::Same).no_bias()).add(BatchNorm::new().eps(1e-3))
}

/// An entry- or exit-flow block: two separable convolutions (the first preceded by a ReLU
/// unless `relu_first` is false), 3x3/2 max pooling, and a strided 1x1 projection shortcut.
fn down_block(filters: [usize; 2], relu_first: bool) -> Residual {
    let mut main = Chain::new();
    if relu_first {
        main = main.add(ReLU::new());
    }
    let main = main
        .add(sep_bn(filters[0]))
        .add(ReLU::new())
        .add(sep_bn(filters[1]))
        .add(MaxPool2d::with_window(Window::square(3).stride(2).padding(Padding::Same)));
    let shortcut = Chain::new()
        .add(Conv2d::new(filters[1], 1).stride(2).padding(Padding::Same).no_bias())
        .add(BatchNorm::new().eps(1e-3));
    Residual::new(main).shortcut(shortcut)
}

/// A middle-flow block: three times ReLU and a separable convolution of 728, identity shortcut.
fn middle_block() -> Residual {
    let mut main = Chain::new();
    for _ in 0..3 {
        main = main.add(ReLU::new()).add(sep_bn(728));
    }
    Residual::new(main)
}

/// Xception for 3x299x299 images, 1000 classes: 22,855,952 trainable parameters and 54,528
/// non-trainable ones (the BatchNorm running statistics).
pub fn xception(seed: u64) -> Sequential {
    let conv_bn_relu = |filters: usize, stride: usize| {
        Chain::new()
            .add(Conv2d::new(filters, 3).stride(stride).no_bias())
            .add(BatchNorm::new().eps(1e-3))
            .add(ReLU::new())
    };
    let mut middle = Chain::new();
    for _ in 0..8 {
        middle = middle.add(middle_block());
    }
    Sequential::builder(&[3, 299, 299])
        .add(conv_bn_relu(32, 2))
        .add(conv_bn_relu(64, 1))
        .add(down_block([128, 128], false))
        .add(down_block([256, 256], true))
        .add(down_block([728, 728], true))
        .add(middle)
        .add(down_block([728, 1024], true))
        .add(sep_bn(1536))
        .add(ReLU::new())
        .add(sep_bn(2048))
        .add(ReLU::new())
        .add(GlobalAvgPool2d::new())
        .add(Dense::new(1000).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .expect("Xception's shapes fit")
}
