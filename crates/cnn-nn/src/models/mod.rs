//! Ready-made models: the course material's reference network and the architecture table,
//! LeNet-5 to Xception, each with the parameter count of its reference implementation.

mod classic;
mod googlenet;
mod recipe;
mod resnet;
mod xception;

pub use classic::{alexnet, lenet5, vgg, vgg_fashion, Vgg};
pub use googlenet::googlenet;
pub use recipe::{OptimizerKind, Recipe, ScheduleKind};
pub use resnet::{resnet1202, resnet20, resnet_cifar};
pub use xception::xception;

use crate::layer::WeightInit;
use crate::layers::{Conv2d, Dense, Flatten, MaxPool2d, ReLU};
use crate::sequential::Sequential;
use cnn_core::Padding;

/// The course material's reference network for 28x28 grey images and 10 classes:
///
/// Conv(3x3, 32, VALID) → ReLU → MaxPool(2,2) → Conv(64) → ReLU → MaxPool → Conv(128) → ReLU →
/// MaxPool → Flatten → Dense(64) → ReLU → Dense(10), whose 10 outputs are the logits: the
/// softmax is applied by the loss in training and by [`Sequential::predict`].
pub fn reference_cnn(seed: u64) -> Sequential {
    Sequential::builder(&[1, 28, 28])
        .add(Conv2d::new(32, 3).padding(Padding::Valid))
        .add(ReLU::new())
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(64, 3))
        .add(ReLU::new())
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(128, 3))
        .add(ReLU::new())
        .add(MaxPool2d::new(2))
        .add(Flatten::new())
        .add(Dense::new(64))
        .add(ReLU::new())
        .add(Dense::new(10).init(WeightInit::GlorotUniform))
        .seed(seed)
        .build()
        .expect("the reference network's shapes fit")
}

/// The models for 1x28x28 images and 10 classes (Fashion-MNIST), which `cargo xtask train`
/// trains.
pub const NAMES: [&str; 4] = ["reference", "lenet5", "resnet20", "vgg-fashion"];

/// Every model [`by_name`] builds: [`NAMES`], then the architecture table at its own input
/// sizes (`resnet20-cifar` is ResNet-20 on 3x32x32).
pub const ALL_NAMES: [&str; 12] =
    ["reference", "lenet5", "resnet20", "vgg-fashion", "resnet20-cifar", "resnet1202", "alexnet", "vgg11", "vgg16", "vgg19", "googlenet", "xception"];

/// A model of the zoo by name (see [`ALL_NAMES`]): what a checkpoint records to be rebuilt
/// from the file alone.
///
/// # Errors
/// An unknown name, listing the known ones.
pub fn by_name(name: &str, seed: u64) -> crate::Result<Sequential> {
    match name {
        "reference" => Ok(reference_cnn(seed)),
        "lenet5" => Ok(lenet5(seed)),
        "resnet20" => resnet_cifar(3, &[1, 28, 28], 10, seed),
        "vgg-fashion" => Ok(vgg_fashion(seed)),
        "resnet20-cifar" => Ok(resnet20(seed)),
        "resnet1202" => Ok(resnet1202(seed)),
        "alexnet" => Ok(alexnet(seed)),
        "vgg11" => Ok(vgg(Vgg::A11, seed)),
        "vgg16" => Ok(vgg(Vgg::D16, seed)),
        "vgg19" => Ok(vgg(Vgg::E19, seed)),
        "googlenet" => Ok(googlenet(seed)),
        "xception" => Ok(xception(seed)),
        other => Err(crate::NnError::Config(format!("unknown model `{other}`; the models are {}", ALL_NAMES.join(", ")))),
    }
}
