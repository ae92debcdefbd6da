//! OpenBLAS runs on one thread inside rayon's tasks, whatever convolution a program calls
//! first (its own process: the policy is applied once per process).

use cnn_core::{conv2d_backward_with, threads, Algorithm, Padding, Window};
use ndarray::Array4;

/// A direct convolution's backward on a 6x6 SAME layer (its filter gradient by the lowering's
/// OpenBLAS products, outside the lowered convolution's own scaffold) as the program's first
/// call leaves OpenBLAS on one thread.
#[test]
fn the_first_convolution_puts_openblas_on_one_thread() {
    let x = Array4::from_shape_fn((4, 8, 6, 6), |(n, c, i, j)| (n + c + i * j) as f32 / 10.0);
    let w = Array4::from_shape_fn((32, 8, 3, 3), |(o, c, i, j)| (o + c + i + j) as f32 / 100.0);
    let dy = Array4::from_elem((4, 32, 6, 6), 0.5f32);
    let grads = conv2d_backward_with(Algorithm::Direct, x.view(), w.view(), dy.view(), &Window::square(3).padding(Padding::Same), 1).unwrap();
    assert!(grads.dw.iter().all(|v| v.is_finite()));
    assert_eq!(threads::blas_threads(), 1);
}
