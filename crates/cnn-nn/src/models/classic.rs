//! The plain chains of the architecture table: LeNet-5, AlexNet, VGG.

use crate::layer::WeightInit;
use crate::layers::{AvgPool2d, Chain, Conv2d, Dense, Dropout, Flatten, LocalResponseNorm, MaxPool2d, ReLU, Tanh};
use crate::sequential::Sequential;
use crate::Padding;
use crate::Window;

/// LeNet-5 (LeCun et al., 1998) for 28x28 grey images, 10 classes: C1 6@5x5 (padded by 2,
/// which makes the paper's 32x32 input), S2 average pooling, C3 16@5x5 on all maps, S4, C5
/// 120@5x5, F6 84, 10 outputs; tanh activations. 61,706 parameters.
pub fn lenet5(seed: u64) -> Sequential {
    let glorot = WeightInit::GlorotUniform; // tanh, not ReLU, follows every layer
    Sequential::builder(&[1, 28, 28])
        .add(Conv2d::new(6, 5).padding(Padding::uniform(2)).init(glorot))
        .add(Tanh::new())
        .add(AvgPool2d::new(2))
        .add(Conv2d::new(16, 5).init(glorot))
        .add(Tanh::new())
        .add(AvgPool2d::new(2))
        .add(Conv2d::new(120, 5).init(glorot))
        .add(Tanh::new())
        .add(Flatten::new())
        .add(Dense::new(84).init(glorot))
        .add(Tanh::new())
        .add(Dense::new(10).init(glorot))
        .seed(seed)
        .build()
        .expect("LeNet-5's shapes fit")
}

/// AlexNet (Krizhevsky et al., 2012) for 3x227x227 images, 1000 classes, as in the paper: two
/// groups (the two GPUs) in conv2, conv4 and conv5, local response normalisation after conv1
/// and conv2, overlapping 3x3/2 max pooling, dropout 0.5 before the first two dense layers.
/// 60,965,224 parameters.
pub fn alexnet(seed: u64) -> Sequential {
    let lrn = || LocalResponseNorm::new(5).constants(1e-4, 0.75, 2.0);
    let pool = || MaxPool2d::with_window(Window::square(3).stride(2));
    Sequential::builder(&[3, 227, 227])
        .add(Conv2d::new(96, 11).stride(4))
        .add(ReLU::new())
        .add(lrn())
        .add(pool())
        .add(Conv2d::new(256, 5).padding(Padding::uniform(2)).groups(2))
        .add(ReLU::new())
        .add(lrn())
        .add(pool())
        .add(Conv2d::new(384, 3).padding(Padding::uniform(1)))
        .add(ReLU::new())
        .add(Conv2d::new(384, 3).padding(Padding::uniform(1)).groups(2))
        .add(ReLU::new())
        .add(Conv2d::new(256, 3).padding(Padding::uniform(1)).groups(2))
        .add(ReLU::new())
        .add(pool())
        .add(Flatten::new())
        .add(Dropout::new(0.5))
        .add(Dense::new(4096))
        .add(ReLU::new())
        .add(Dropout::new(0.5))
        .add(Dense::new(4096))
        .add(ReLU::new())
        .add(Dense::new(1000).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .expect("AlexNet's shapes fit")
}

/// The VGG configurations of Simonyan & Zisserman's table 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vgg {
    /// Configuration A: 8 convolutions (VGG-11), 132,863,336 parameters.
    A11,
    /// Configuration D: 13 convolutions (VGG-16), 138,357,544 parameters.
    D16,
    /// Configuration E: 16 convolutions (VGG-19), 143,667,240 parameters.
    E19,
}

impl Vgg {
    /// Convolutions per stage (each stage ends with a 2x2 max pooling).
    fn stages(self) -> [usize; 5] {
        match self {
            Vgg::A11 => [1, 1, 2, 2, 2],
            Vgg::D16 => [2, 2, 3, 3, 3],
            Vgg::E19 => [2, 2, 4, 4, 4],
        }
    }
}

/// A VGG-style network for 28x28 grey images and 10 classes (Fashion-MNIST): three stages of
/// two 3x3 convolutions (SAME, ReLU) with 32, 64 and 128 filters, each stage ending with a 2x2
/// max pooling, then Dense(256) and the 10 logits. About 29 million multiply-adds per image,
/// nearly all in the convolutions: the network where low-rank convolutions can pay
/// (`cargo xtask lowrank --arch vgg-fashion`).
pub fn vgg_fashion(seed: u64) -> Sequential {
    let mut features = Chain::new();
    for filters in [32, 64, 128] {
        for _ in 0..2 {
            features = features.add(Conv2d::new(filters, 3).padding(Padding::Same)).add(ReLU::new());
        }
        features = features.add(MaxPool2d::new(2));
    }
    Sequential::builder(&[1, 28, 28])
        .add(features)
        .add(Flatten::new())
        .add(Dense::new(256))
        .add(ReLU::new())
        .add(Dense::new(10).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .expect("the VGG-style network's shapes fit")
}

/// VGG for 3x224x224 images, 1000 classes, without BatchNorm: stacked 3x3 convolutions (SAME,
/// ReLU) in five stages of 64, 128, 256, 512, 512 filters, then 4096, 4096 and 1000 units.
pub fn vgg(config: Vgg, seed: u64) -> Sequential {
    let mut features = Chain::new();
    for (convs, filters) in config.stages().into_iter().zip([64, 128, 256, 512, 512]) {
        for _ in 0..convs {
            features = features.add(Conv2d::new(filters, 3).padding(Padding::Same)).add(ReLU::new());
        }
        features = features.add(MaxPool2d::new(2));
    }
    Sequential::builder(&[3, 224, 224])
        .add(features)
        .add(Flatten::new())
        .add(Dense::new(4096))
        .add(ReLU::new())
        .add(Dropout::new(0.5))
        .add(Dense::new(4096))
        .add(ReLU::new())
        .add(Dropout::new(0.5))
        .add(Dense::new(1000).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .expect("VGG's shapes fit")
}
