//! # cnn-nn: layers, models and training on top of cnn-core
//!
//! A small, clear PyTorch/Keras in Rust: [`layers`] with explicit forward/backward pairs, a
//! [`Sequential`] model that infers shapes and prints the course material's [`Sequential::summary`],
//! the fused softmax cross-entropy [`loss`], [`optim`]isers, IDX [`data`] loading (MNIST,
//! Fashion-MNIST), [`train`]ing with progress and metrics, and safetensors [`checkpoint`]s.
//!
//! Depending on `cnn-nn` alone is enough: it re-exports what building, training and
//! compressing a model needs from cnn-core ([`Padding`], [`Window`], [`RankPolicy`], the whole
//! [`cnn_core`] crate) and [`ndarray`] itself.
#![warn(missing_docs)]

pub mod error;
pub mod layer;
pub mod layers;
pub mod loss;
pub mod models;
mod sequential;
mod summary;

pub use cnn_core;
pub use cnn_core::lowrank::RankPolicy;
pub use cnn_core::{Padding, Window};
pub use error::{NnError, Result};
pub use layer::{BuildError, Describe, Init, Layer, ModelRng, Param, WeightInit};
pub use ndarray;
pub use sequential::{Classification, Sequential, SequentialBuilder};
pub use summary::thousands;
pub mod augment;
pub mod callbacks;
pub mod checkpoint;
pub mod compress;
pub mod data;
pub mod distributed;
pub mod optim;
pub mod schedule;
pub mod train;
#[cfg(feature = "plots")]
pub mod plots;
