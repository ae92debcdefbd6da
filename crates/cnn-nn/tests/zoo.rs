//! The architecture table, built: every model's parameter count equals its reference
//! implementation's (the papers' tables, torchvision, Keras). Only the weights are allocated.

use cnn_nn::models::{alexnet, googlenet, lenet5, resnet1202, resnet20, resnet_cifar, vgg, xception, Vgg};
use cnn_nn::Sequential;

/// (trainable, non-trainable) values of a model.
fn counts(model: &Sequential) -> (usize, usize) {
    (model.num_params(), model.num_buffers())
}

#[test]
fn lenet5_has_61_706_parameters() {
    let model = lenet5(0);
    assert_eq!(counts(&model), (61_706, 0));
    // C1 150·784 + C3 2,400·100 + C5 48,000·1 + F6 10,080 + 840 multiply-adds
    assert_eq!(model.macs(), 150 * 784 + 2_400 * 100 + 48_000 + 10_080 + 840);
    // C1 and its tanh 2·4,704, S2 1,176, C3 and tanh 2·1,600, S4 400, C5 and tanh 240,
    // flatten 120, F6 and tanh 168, output 10
    assert_eq!(model.activation_values(), 2 * 4_704 + 1_176 + 2 * 1_600 + 400 + 240 + 120 + 168 + 10);
    assert_eq!(model.shapes()[0], [6, 28, 28], "C1 on the 28x28 image padded to 32x32");
}

#[test]
fn alexnet_has_60_965_224_parameters() {
    let model = alexnet(0);
    assert_eq!(counts(&model), (60_965_224, 0));
    assert_eq!(model.output_shape(), [1000]);
}

#[test]
fn vgg_11_16_19() {
    for (config, expected) in [(Vgg::A11, 132_863_336), (Vgg::D16, 138_357_544), (Vgg::E19, 143_667_240)] {
        assert_eq!(counts(&vgg(config, 0)), (expected, 0), "{config:?}");
    }
    // VGG-16's often quoted 15.5 G multiply-adds (15,470,264,320 by the count of torchvision's
    // profilers: convolutions and dense layers)
    assert_eq!(vgg(Vgg::D16, 0).macs(), 15_470_264_320);
}

#[test]
fn resnet_20_and_1202() {
    // trainable as the paper counts them; BatchNorm's running mean and variance apart
    assert_eq!(counts(&resnet20(0)), (269_722, 1_376));
    assert_eq!(resnet1202(0).num_params(), 19_421_274);
    // the Fashion-MNIST variant: one input channel, 28x28
    let small = resnet_cifar(3, &[1, 28, 28], 10, 0).unwrap();
    assert_eq!(small.num_params(), 269_722 - 2 * 16 * 9);
    assert!(resnet_cifar(0, &[3, 32, 32], 10, 0).is_err());
}

#[test]
fn googlenet_has_6_998_552_parameters() {
    assert_eq!(counts(&googlenet(0)), (6_998_552, 0));
}

#[test]
fn xception_has_keras_counts() {
    let model = xception(0);
    assert_eq!(counts(&model), (22_855_952, 54_528));
    // the totals as Keras' summary prints them
    let summary = model.summary();
    assert!(summary.contains("Total parameters: 22,910,480\nTrainable parameters: 22,855,952\nNon-trainable parameters: 54,528\n"), "{summary}");
    let row = |name: &str, filters: &str| summary.lines().any(|l| l.contains(name) && l.split_whitespace().any(|w| w == filters));
    assert!(row("SeparableConv2d(f=3,s=1)", "1536") && row("Conv2d(f=1,s=2)", "128"), "{summary}");
}
