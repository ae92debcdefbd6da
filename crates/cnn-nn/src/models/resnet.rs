//! The CIFAR ResNets of He et al. (2015), section 4.2: depth `6n + 2`.

use crate::layer::WeightInit;
use crate::layers::{BatchNorm, Chain, Conv2d, Dense, GlobalAvgPool2d, ReLU, Residual, SubsampleZeroPad};
use crate::sequential::Sequential;
use crate::{NnError, Padding, Result};

/// A 3x3 SAME convolution without bias, then BatchNorm.
fn conv_bn(filters: usize, stride: usize) -> Chain {
    Chain::new().add(Conv2d::new(filters, 3).stride(stride).padding(Padding::Same).no_bias()).add(BatchNorm::new())
}

/// `relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`, the shortcut the identity or, when the
/// block halves the size and doubles the channels, "option A": subsampled and zero-padded.
fn basic_block(in_channels: usize, filters: usize, stride: usize) -> Residual {
    let main = conv_bn(filters, stride).add(ReLU::new()).add(conv_bn(filters, 1));
    let block = Residual::new(main);
    let block = if stride != 1 || in_channels != filters {
        block.shortcut(Chain::new().add(SubsampleZeroPad::new(stride, filters)))
    } else {
        block
    };
    block.then(ReLU::new())
}

/// A CIFAR ResNet of depth `6n + 2` on `input` (`[3, 32, 32]` in the paper; `[1, 28, 28]` fits
/// Fashion-MNIST): a 3x3 stem of 16 filters, three stages of `n` basic blocks with 16, 32 and
/// 64 filters (the last two starting with stride 2 and an option-A shortcut), global average
/// pooling and a dense layer to `classes`.
///
/// # Errors
/// `n = 0`, or an input that the stages cannot take.
pub fn resnet_cifar(n: usize, input: &[usize], classes: usize, seed: u64) -> Result<Sequential> {
    if n == 0 {
        return Err(NnError::Config("a CIFAR ResNet needs at least one block per stage (depth 6n + 2, n >= 1)".into()));
    }
    let mut stages = Chain::new();
    let mut channels = 16;
    for (stage, filters) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            stages = stages.add(basic_block(channels, filters, stride));
            channels = filters;
        }
    }
    Sequential::builder(input)
        .add(conv_bn(16, 1))
        .add(ReLU::new())
        .add(stages)
        .add(GlobalAvgPool2d::new())
        .add(Dense::new(classes).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
}

/// ResNet-20 (`n = 3`) for 3x32x32 images, 10 classes: 269,722 parameters.
pub fn resnet20(seed: u64) -> Sequential {
    resnet_cifar(3, &[3, 32, 32], 10, seed).expect("ResNet-20's shapes fit")
}

/// ResNet-1202 (`n = 200`) for 3x32x32 images, 10 classes: 19,421,274 parameters.
pub fn resnet1202(seed: u64) -> Sequential {
    resnet_cifar(200, &[3, 32, 32], 10, seed).expect("ResNet-1202's shapes fit")
}
