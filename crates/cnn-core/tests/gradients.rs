//! Finite-difference checks of the naive backward, the adjoint identity of im2col / col2im,
//! and determinism across thread counts.

mod common;

use cnn_core::{col2im, conv2d, conv2d_backward, im2col, reference, Padding, Window};
use common::random;
use ndarray::{Array, Array4, Dimension};

/// `Σ a·b` accumulated in f64.
fn dot<D: Dimension>(a: &Array<f32, D>, b: &Array<f32, D>) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Central difference of `loss` along every entry of `t`, compared with `analytic`.
///
/// The loss `<conv(x, w, b), r>` is linear in each operand, so a large step is exact and only
/// rounding remains: a tolerance of 1e-3 still catches any wrong index or missing term.
fn check_fd<D: Dimension>(t: &Array<f32, D>, analytic: &Array<f32, D>, loss: impl Fn(&Array<f32, D>) -> f64, what: &str) {
    let eps = 0.5f32;
    for (i, &g) in analytic.iter().enumerate() {
        let mut plus = t.clone();
        let mut minus = t.clone();
        plus.as_slice_mut().unwrap()[i] += eps;
        minus.as_slice_mut().unwrap()[i] -= eps;
        let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
        assert!((numeric - g as f64).abs() < 1e-3 * (1.0 + numeric.abs()), "{what}[{i}]: numeric {numeric}, analytic {g}");
    }
}

#[test]
fn naive_backward_matches_finite_differences() {
    for win in [
        Window::square(3),
        Window::new(2, 3).strides(2, 1).padding(Padding::Same),
        Window::square(3).stride(2).padding(Padding::Explicit { top: 1, bottom: 0, left: 2, right: 1 }),
        Window::new(2, 3).dilations(2, 1).padding(Padding::Same),
    ] {
        let x = random((2, 2, 5, 6), 1);
        let w = random((3, 2, win.kh, win.kw), 2);
        let b = random(3, 3);
        let y = reference::conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
        let r = random(y.raw_dim(), 4);
        let g = reference::conv2d_backward(x.view(), w.view(), r.view(), &win).unwrap();
        let loss = |x: &Array4<f32>, w: &Array4<f32>, b: &ndarray::Array1<f32>| {
            dot(&reference::conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap(), &r)
        };
        check_fd(&x, &g.dx, |x| loss(x, &w, &b), "dx");
        check_fd(&w, &g.dw, |w| loss(&x, w, &b), "dw");
        check_fd(&b, &g.db, |b| loss(&x, &w, b), "db");
    }
}

#[test]
fn col2im_is_the_adjoint_of_im2col() {
    // <im2col(x), c> = <x, col2im(c)>: the backward adds the gradients of overlapping windows.
    for (shape, win) in [
        ((2, 3, 7, 7), Window::square(3)),
        ((1, 2, 8, 5), Window::new(3, 2).strides(2, 1).padding(Padding::Same)),
        ((3, 1, 6, 6), Window::square(4).stride(1).padding(Padding::uniform(2))),
        ((2, 2, 9, 9), Window::square(3).stride(3)),
        ((2, 2, 9, 8), Window::new(3, 2).dilations(2, 3).padding(Padding::Same)),
    ] {
        let x = random(shape, 5);
        let cols = im2col(x.view(), &win).unwrap();
        let c = random(cols.raw_dim(), 6);
        let back = col2im(c.view(), [shape.0, shape.1, shape.2, shape.3], &win).unwrap();
        let (lhs, rhs) = (dot(&cols, &c), dot(&x, &back));
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{win:?}: {lhs} vs {rhs}");
    }
}

#[test]
fn same_result_for_any_thread_count() {
    let x = random((13, 8, 11, 11), 7);
    let w = random((16, 8, 3, 3), 8);
    let b = random(16, 9);
    let win = Window::square(3).padding(Padding::Same);
    let dy = random((13, 16, 11, 11), 10);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let y = conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
            (y, conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap())
        })
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        // bit for bit, not within a tolerance
        assert_eq!(run(threads), one, "{threads} threads");
    }
    assert_eq!(run(1), one, "run to run");
}

#[test]
fn grouped_and_depthwise_are_deterministic_for_any_thread_count() {
    let x = random((9, 6, 9, 9), 11);
    let dy = random((9, 12, 9, 9), 12);
    let win = Window::square(3).padding(Padding::Same);
    for groups in [2, 6] {
        let w = random((12, 6 / groups, 3, 3), 13);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = cnn_core::conv2d_groups(x.view(), w.view(), None, &win, groups).unwrap();
                (y, cnn_core::conv2d_groups_backward(x.view(), w.view(), dy.view(), &win, groups).unwrap())
            })
        };
        let one = run(1);
        assert_eq!(run(2), one, "groups {groups}");
        assert_eq!(run(3), one, "groups {groups}");
    }
}
