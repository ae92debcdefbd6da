//! Build your own ResNet block with cnn-nn's public API, and look at the summary.
//!
//! `cargo run -p cnn-nn --example resnet_block`

use cnn_nn::layers::{BatchNorm, Chain, Conv2d, Dense, GlobalAvgPool2d, ReLU, Residual};
use cnn_nn::{Padding, Sequential, WeightInit};

fn main() -> cnn_nn::Result<()> {
    let conv_bn = |c| Chain::new().add(Conv2d::new(c, 3).padding(Padding::Same).no_bias()).add(BatchNorm::new());
    // y = relu(bn2(conv2(relu(bn1(conv1(x))))) + x)
    let block = || Residual::new(conv_bn(16).add(ReLU::new()).add(conv_bn(16))).then(ReLU::new());
    let model = Sequential::builder(&[1, 28, 28])
        .add(conv_bn(16))
        .add(ReLU::new())
        .add(block())
        .add(block())
        .add(GlobalAvgPool2d::new())
        .add(Dense::new(10).init(WeightInit::GlorotUniform))
        .build()?;
    println!("{}", model.summary());
    Ok(())
}
