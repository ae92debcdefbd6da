//! # cnn-nn: layers, models and training on top of cnn-core
//!
//! A small, clear PyTorch/Keras in Rust: [`layers`] with explicit forward/backward pairs, a
//! [`Sequential`] model that infers shapes and prints the course material's [`Sequential::summary`],
//! the fused softmax cross-entropy [`loss`], [`optim`]isers, IDX [`data`] loading (MNIST,
//! Fashion-MNIST), [`train`]ing with progress and metrics, and safetensors [`checkpoint`]s.
#![warn(missing_docs)]

pub mod error;
pub mod layer;
pub mod layers;
pub mod loss;
pub mod models;
mod sequential;
mod summary;

pub use error::{NnError, Result};
pub use layer::{Describe, Init, Layer, Param};
pub use sequential::{argmax_rows, Sequential, SequentialBuilder};
pub use summary::{material_shape, thousands};
pub mod optim;
pub mod data;
pub mod checkpoint;
pub mod compress;
pub mod train;
#[cfg(feature = "plots")]
pub mod plots;
