//! Shapes and inputs shared by the benchmarks.

// Convolution outputs and activations are megabytes each; glibc's malloc maps and unmaps them
// on every call (page faults, TLB shootdowns across cores). mimalloc keeps them. The training
// binary uses it too, so the benches measure what training sees.
pub use mimalloc::MiMalloc;

use cnn_core::{Padding, Window};
use ndarray::{Array, Dimension, ShapeBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One convolution layer to benchmark.
#[derive(Clone, Copy, Debug)]
pub struct ConvCase {
    /// Benchmark id, named after the layer: `ref_conv2_n64`.
    pub name: &'static str,
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input side (square images).
    pub side: usize,
    /// Filters.
    pub c_out: usize,
    /// Kernel side.
    pub k: usize,
    /// Padding rule.
    pub padding: Padding,
    /// Stride (both ways).
    pub stride: usize,
}

impl ConvCase {
    /// The window of this layer.
    pub fn window(&self) -> Window {
        Window::square(self.k).padding(self.padding).stride(self.stride)
    }

    /// Output side.
    pub fn out_side(&self) -> usize {
        self.window().geometry(self.side, self.side).expect("benchmark shapes are valid").oh
    }

    /// `K = c_in * k * k`, the length of one receptive field.
    pub fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Floating-point operations of the forward pass (a multiply-add counts 2).
    pub fn flops(&self) -> u64 {
        let p = self.out_side().pow(2);
        2 * (self.n * self.c_out * p * self.patch()) as u64
    }
}

/// The reference network's three conv layers at batch `n` (1, 64 or 256), 3x3 VALID.
pub fn reference_layers(n: usize) -> [ConvCase; 3] {
    let case = |name, c_in, side, c_out| ConvCase { name, n, c_in, side, c_out, k: 3, padding: Padding::Valid, stride: 1 };
    match n {
        1 => [case("ref_conv1_n1", 1, 28, 32), case("ref_conv2_n1", 32, 13, 64), case("ref_conv3_n1", 64, 5, 128)],
        64 => [case("ref_conv1_n64", 1, 28, 32), case("ref_conv2_n64", 32, 13, 64), case("ref_conv3_n64", 64, 5, 128)],
        256 => [case("ref_conv1_n256", 1, 28, 32), case("ref_conv2_n256", 32, 13, 64), case("ref_conv3_n256", 64, 5, 128)],
        _ => panic!("benchmarks use batch 1, 64 or 256"),
    }
}

/// A larger layer where the algorithm matters more: 64 channels at 56x56 → 64 filters, SAME, batch 16.
pub fn big_layer() -> ConvCase {
    ConvCase { name: "big_64x56x56_n16", n: 16, c_in: 64, side: 56, c_out: 64, k: 3, padding: Padding::Same, stride: 1 }
}

/// Uniform values in [-1, 1) from a fixed seed.
pub fn random<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim>
where
    Sh::Dim: Dimension,
{
    let mut rng = StdRng::seed_from_u64(seed);
    Array::from_shape_simple_fn(shape, || rng.gen_range(-1.0..1.0))
}

/// ResNet-20's three kinds of stride-1 layer (3x3 SAME, 16/32/64 channels on 28/14/7 pixels)
/// at batch `n`.
pub fn resnet20_layers(n: usize) -> [ConvCase; 3] {
    let case = |name, c, side| ConvCase { name, n, c_in: c, side, c_out: c, k: 3, padding: Padding::Same, stride: 1 };
    match n {
        128 => [case("resnet20_stage1_n128", 16, 28), case("resnet20_stage2_n128", 32, 14), case("resnet20_stage3_n128", 64, 7)],
        _ => panic!("resnet20_layers: add the names for batch {n}"),
    }
}

/// ResNet-20's two downsampling layers (3x3 SAME, stride 2: 16 → 32 channels from 28x28,
/// 32 → 64 from 14x14) at batch 128.
pub fn resnet20_downsampling() -> [ConvCase; 2] {
    let case = |name, c, side| ConvCase { name, n: 128, c_in: c, side, c_out: 2 * c, k: 3, padding: Padding::Same, stride: 2 };
    [case("resnet20_down2_n128", 16, 28), case("resnet20_down3_n128", 32, 14)]
}

/// Matrix products the convolutions run (`c_out x positions x K`), named after their layer.
pub const GEMM_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("ref_conv2_sample_64x121x288", 64, 121, 288),
    ("ref_conv3_group_128x252x576", 128, 252, 576),
    ("resnet20_stage1_sample_16x784x144", 16, 784, 144),
    ("resnet20_stage2_sample_32x196x288", 32, 196, 288),
    ("resnet20_stage3_group_64x294x576", 64, 294, 576),
    ("square_1024", 1024, 1024, 1024),
];
