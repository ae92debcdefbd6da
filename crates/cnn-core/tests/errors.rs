//! Bad input gets a typed error naming the shapes, never a panic.

use cnn_core::{conv1d, conv2d, conv2d_backward, im2col, CnnError, Padding, Window};
use ndarray::{Array1, Array3, Array4};

#[test]
fn channel_mismatch() {
    let x = Array4::<f32>::zeros((2, 3, 8, 8));
    let w = Array4::<f32>::zeros((4, 2, 3, 3));
    let e = conv2d(x.view(), w.view(), None, &Window::square(3)).unwrap_err();
    assert_eq!(e.to_string(), "channel mismatch: input [2, 3, 8, 8] has 3 channels but filters [4, 2, 3, 3] expect 2");
    let e = conv1d(Array3::zeros((1, 3, 8)).view(), Array3::zeros((1, 1, 3)).view(), None, &Window::row(3)).unwrap_err();
    assert!(matches!(e, CnnError::ChannelMismatch { .. }));
    // a 1-D window that would pad or stride rows
    let (x, w) = (Array3::<f32>::zeros((1, 1, 8)), Array3::<f32>::zeros((1, 1, 3)));
    for win in [Window::row(3).padding(Padding::uniform(1)), Window::row(3).stride(2)] {
        let e = conv1d(x.view(), w.view(), None, &win).unwrap_err();
        assert!(matches!(e, CnnError::Invalid { what: "1-D window", .. }), "{win:?}: {e}");
    }
    let e = conv1d(x.view(), w.view(), None, &Window::square(3)).unwrap_err();
    assert!(matches!(e, CnnError::KernelTooLarge { .. }), "{e}");
}

#[test]
fn kernel_larger_than_input() {
    let x = Array4::<f32>::zeros((1, 1, 2, 2));
    let w = Array4::<f32>::zeros((1, 1, 3, 3));
    let e = conv2d(x.view(), w.view(), None, &Window::square(3)).unwrap_err();
    assert_eq!(e.to_string(), "kernel 3x3 is larger than the padded input 2x2 (input 2x2)");
}

#[test]
fn zero_stride_and_empty_batch() {
    let x = Array4::<f32>::zeros((1, 1, 4, 4));
    let w = Array4::<f32>::zeros((1, 1, 3, 3));
    let e = conv2d(x.view(), w.view(), None, &Window::square(3).strides(0, 1)).unwrap_err();
    assert_eq!(e.to_string(), "stride must be at least 1, got 0x1");
    let empty = Array4::<f32>::zeros((0, 1, 4, 4));
    let e = conv2d(empty.view(), w.view(), None, &Window::square(3)).unwrap_err();
    assert_eq!(e.to_string(), "input is empty: shape [0, 1, 4, 4]");
    assert!(matches!(im2col(empty.view(), &Window::square(3)), Err(CnnError::Empty { .. })));
}

#[test]
fn mismatched_window_bias_and_gradient() {
    let x = Array4::<f32>::zeros((1, 1, 5, 5));
    let w = Array4::<f32>::zeros((2, 1, 3, 3));
    let e = conv2d(x.view(), w.view(), None, &Window::square(2)).unwrap_err();
    assert_eq!(e.to_string(), "shape mismatch for filter kernel (kh, kw) vs window: expected [2, 2], got [3, 3]");
    let b = Array1::<f32>::zeros(3);
    let e = conv2d(x.view(), w.view(), Some(b.view()), &Window::square(3)).unwrap_err();
    assert_eq!(e.to_string(), "shape mismatch for bias: expected [2], got [3]");
    let dy = Array4::<f32>::zeros((1, 2, 2, 3));
    let e = conv2d_backward(x.view(), w.view(), dy.view(), &Window::square(3)).unwrap_err();
    assert_eq!(e.to_string(), "shape mismatch for output gradient dy: expected [1, 2, 3, 3], got [1, 2, 2, 3]");
}
