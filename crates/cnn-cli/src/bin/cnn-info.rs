//! What cnn-nn makes of this machine: threads, the BLAS kernels it selected, and how fast a
//! matrix product runs through a `Dense` layer. Run it with `cargo xtask info`.
//!
//! Like any program that depends on cnn-nn, it sets nothing up: the library selects the best
//! OpenBLAS kernels for the CPU on first use (see `cnn_core::threads`).

use cnn_cli::main_with;
use cnn_nn::cnn_core::threads;
use cnn_nn::layers::Dense;
use cnn_nn::ndarray::ArrayD;
use cnn_nn::{Result, Sequential};
use std::time::Instant;

/// The product's size: a batch of `N` inputs of `N` values through `N` units.
const N: usize = 512;

fn run(_: ()) -> Result<()> {
    let model = Sequential::builder(&[N]).add(Dense::new(N)).build()?;
    let x = ArrayD::from_shape_fn(vec![N, N], |i| ((i[0] * 7 + i[1]) % 13) as f32 / 13.0);
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let start = Instant::now();
        std::hint::black_box(model.forward(x.clone())?);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (N * N * N) as f64 / best / 1e9;
    println!("rayon threads: {}", threads::rayon_threads());
    println!("OpenBLAS kernels: {} (best for this CPU: {})", threads::blas_core(), threads::suggested_coretype().unwrap_or("none known"));
    println!("convolution micro-kernel (implicit products): {}", cnn_nn::cnn_core::gemm::kernel_name());
    println!("dense {N}x{N}x{N} on one BLAS thread: {gflops:.1} GFLOP/s (best of 7)");
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_with((), run)
}
