//! Max and average pooling: no parameters, the channel count unchanged, each channel pooled
//! on its own. The window, stride and padding are the same [`Window`] as convolution's.
//!
//! Max pooling remembers which input won each window (`argmax`, the index `y * w + x` in the
//! channel's plane; the first one on ties) and its backward routes each gradient there —
//! overlapping windows add. A NaN in a window wins it, as in PyTorch: NaN propagates instead
//! of being silently dropped. Average pooling divides by the number of input pixels inside the
//! window (padding is not counted, as in TensorFlow's SAME).

use crate::error::{checked_size, expect_allocatable, expect_nonempty, expect_shape, CnnError, Result};
use crate::threads;
use crate::window::{Geometry, Window};
use ndarray::{Array4, ArrayView4};
use std::hint::select_unpredictable;
use std::ops::Range;
use rayon::prelude::*;

/// Output of [`max_pool2d`]: the pooled values and where each came from.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxPool {
    /// Pooled output, `[n, c, oh, ow]`.
    pub y: Array4<f32>,
    /// For each output, the index `y * w + x` of the winning input in its channel plane.
    pub argmax: Array4<u32>,
}

/// Places a pooling window on an input of shape `x` (`[n, c, h, w]`), refusing padding as
/// wide as the window (a window could then cover padding only). The checks every pooling
/// function makes, for callers that need the output size first.
///
/// # Errors
/// An empty input, a window that does not fit, padding as wide as the window.
pub fn pool_geometry(x: &[usize], win: &Window) -> Result<Geometry> {
    expect_shape("pooling input rank (n, c, h, w)", &[4], &[x.len()])?;
    expect_nonempty("input", x)?;
    checked_size("input", x)?;
    if (win.dh, win.dw) != (1, 1) {
        return Err(CnnError::Invalid { what: "pooling window", reason: format!("pooling windows are not dilated, got {}x{}", win.dh, win.dw) });
    }
    let g = win.geometry(x[2], x[3])?;
    expect_allocatable("pooled output", checked_size("pooled output", &[x[0], x[1], g.oh, g.ow])?)?;
    let pad = [g.pad_top, g.pad_bottom, g.pad_left, g.pad_right];
    if g.pad_top.max(g.pad_bottom) >= g.kh || g.pad_left.max(g.pad_right) >= g.kw {
        return Err(CnnError::PoolPaddingTooLarge { pad, kh: g.kh, kw: g.kw });
    }
    Ok(g)
}


/// Walks the windows tap by tap over whole output rows, as im2col does: for every tap
/// `(ky, kx)` and output row `oy`, calls `f(oy, iy, ix0, xs)` where the outputs `ox` in `xs`
/// read the input row `iy` at columns `ix0, ix0 + sw, ...` (only pixels inside the image).
///
/// Taps come in window order (`ky`, then `kx`) for every output, so "the first maximum" is
/// well defined, and the caller's innermost loop runs along a row: long and branch-free.
fn for_each_tap_row(g: &Geometry, mut f: impl FnMut(usize, usize, usize, Range<usize>)) {
    let cols: Vec<Range<usize>> = (0..g.kw).map(|kx| g.cols_inside(kx)).collect();
    for ky in 0..g.kh {
        for oy in g.rows_inside(ky) {
            let iy = g.input_row(oy, ky);
            for (kx, xs) in cols.iter().enumerate().filter(|(_, xs)| !xs.is_empty()) {
                f(oy, iy, g.input_col(xs.start, kx), xs.clone());
            }
        }
    }
}

/// One tap of the windows along a run of outputs: `best[j] = max(best[j], row[j·sw])`,
/// remembering in `at` the winner's index `base + j·sw`. Strict `>`: the first maximum wins
/// ties. With `NAN`, a NaN also wins (and then stays, since nothing compares greater than
/// NaN), so NaN propagates as in PyTorch; that extra test halves the speed of the loop, so
/// planes without NaN (the usual case) run without it. Selects, not branches: on real data
/// the winner is unpredictable.
#[inline(always)]
fn max_tap<const NAN: bool>(row: &[f32], base: u32, best: &mut [f32], at: &mut [u32], sw: usize) {
    let taps = row.chunks(sw).map(|c| c[0]);
    for (j, ((b, a), v)) in best.iter_mut().zip(at.iter_mut()).zip(taps).enumerate() {
        let better = if NAN { v > *b || v.is_nan() } else { v > *b };
        *b = select_unpredictable(better, v, *b);
        *a = select_unpredictable(better, base + (j * sw) as u32, *a);
    }
}

/// The window of nearly every max pool (VGG's, the reference network's): 2x2, stride 2, no
/// padding.
fn is_2x2_stride_2(g: &Geometry) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_bottom, g.pad_left, g.pad_right) == (2, 2, 2, 2, 0, 0, 0, 0)
}

/// Max pooling with 2x2 windows, stride 2, no padding, on a plane without NaN: each output
/// the largest of `a b` over `c d` (the first on ties, in that order), written once. The
/// general loop walks the four taps over every output row (13 outputs a run in the reference
/// network: its overhead, not the comparisons, was most of the time); here each row of
/// outputs is one pass, and with AVX-512 sixteen windows at a time: the two input rows loaded
/// 32 values each and split into even and odd columns by two permutes, three compares and
/// blends pick the values and their indices.
mod pairs {
    use crate::window::Geometry;

    /// `y_c` and `arg_c` (`oh x ow`) from the plane `x_c` (width `w`).
    pub(super) fn max_pool(x_c: &[f32], w: usize, g: &Geometry, y_c: &mut [f32], arg_c: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(x_c, w, g, y_c, arg_c) };
        }
        portable(x_c, w, g, y_c, arg_c)
    }

    /// The loops the vector version follows, one window at a time.
    pub(super) fn portable(x_c: &[f32], w: usize, g: &Geometry, y_c: &mut [f32], arg_c: &mut [u32]) {
        for (oy, (ys, ats)) in y_c.chunks_exact_mut(g.ow).zip(arg_c.chunks_exact_mut(g.ow)).enumerate() {
            let top = 2 * oy * w;
            for (ox, (y, at)) in ys.iter_mut().zip(ats.iter_mut()).enumerate() {
                let first = top + 2 * ox;
                let (mut best, mut arg) = (x_c[first], first);
                for tap in [first + 1, first + w, first + w + 1] {
                    if x_c[tap] > best {
                        (best, arg) = (x_c[tap], tap);
                    }
                }
                (*y, *at) = (best, arg as u32);
            }
        }
    }

    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(x_c: &[f32], w: usize, g: &Geometry, y_c: &mut [f32], arg_c: &mut [u32]) {
        use std::arch::x86_64::*;
        assert!(x_c.len() >= 2 * g.oh * w && 2 * g.ow <= w && y_c.len() == g.oh * g.ow && arg_c.len() == y_c.len(), "2x2 pooling operands");
        let mask = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (one, below) = (_mm512_set1_epi32(1), _mm512_set1_epi32(w as i32));
        for oy in 0..g.oh {
            for ox in (0..g.ow).step_by(16) {
                let n = g.ow - ox;
                let first = 2 * oy * w + 2 * ox;
                // SAFETY: masked lanes only: 2n values of rows 2oy and 2oy + 1 from column
                // 2ox, inside the plane (asserted), n outputs inside y_c and arg_c.
                unsafe {
                    let row = |at: usize| {
                        let (lo, hi) = (_mm512_maskz_loadu_ps(mask(2 * n), x_c.as_ptr().add(at)), _mm512_maskz_loadu_ps(mask((2 * n).saturating_sub(16)), x_c.as_ptr().wrapping_add(at + 16)));
                        (_mm512_permutex2var_ps(lo, evens, hi), _mm512_permutex2var_ps(lo, odds, hi))
                    };
                    let ((a, b), (c, d)) = (row(first), row(first + w));
                    // the index of a: first + 2j in lane j
                    let ia = _mm512_add_epi32(_mm512_set1_epi32(first as i32), _mm512_slli_epi32::<1>(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
                    let (mut best, mut at) = (a, ia);
                    for (v, i) in [(b, _mm512_add_epi32(ia, one)), (c, _mm512_add_epi32(ia, below)), (d, _mm512_add_epi32(_mm512_add_epi32(ia, below), one))] {
                        let better = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
                        best = _mm512_mask_blend_ps(better, best, v);
                        at = _mm512_mask_blend_epi32(better, at, i);
                    }
                    let out = oy * g.ow + ox;
                    _mm512_mask_storeu_ps(y_c.as_mut_ptr().add(out), mask(n), best);
                    _mm512_mask_storeu_epi32(arg_c.as_mut_ptr().add(out).cast(), mask(n), at);
                }
            }
        }
    }
}

/// Number of image pixels (padding excluded) under each output's window.
fn window_sizes(g: &Geometry) -> Vec<f32> {
    let mut count = vec![0.0f32; g.positions()];
    for_each_tap_row(g, |oy, _, _, xs| {
        count[oy * g.ow + xs.start..oy * g.ow + xs.end].iter_mut().for_each(|c| *c += 1.0);
    });
    count
}

/// The planes (one channel of one sample, `h * w` values) of a tensor, as one slice.
fn planes<'a>(x: &'a ArrayView4<f32>) -> std::borrow::Cow<'a, [f32]> {
    match x.as_slice() {
        Some(s) => s.into(),
        None => x.iter().copied().collect::<Vec<_>>().into(),
    }
}

/// Max pooling forward.
///
/// # Shapes
/// - `x`: `[n, c, h, w]`
/// - returns `y` and `argmax`: `[n, c, oh, ow]`
///
/// # Errors
/// An empty input, a window that does not fit, padding as wide as the window.
///
/// ```
/// use cnn_core::{max_pool2d, Window};
/// use ndarray::Array4;
/// let x = Array4::from_shape_vec((1, 1, 2, 2), vec![1.0, 5.0, 3.0, 2.0]).unwrap();
/// let pool = max_pool2d(x.view(), &Window::square(2).stride(2)).unwrap();
/// assert_eq!((pool.y[[0, 0, 0, 0]], pool.argmax[[0, 0, 0, 0]]), (5.0, 1));
/// ```
pub fn max_pool2d(x: ArrayView4<f32>, win: &Window) -> Result<MaxPool> {
    let g = pool_geometry(x.shape(), win)?;
    let (n, c, h, w) = x.dim();
    threads::init();
    let mut y = Array4::zeros((n, c, g.oh, g.ow));
    let mut argmax = Array4::zeros((n, c, g.oh, g.ow));
    let x = planes(&x);
    let (y_s, arg_s) = (y.as_slice_mut().expect("new array"), argmax.as_slice_mut().expect("new array"));
    x.par_chunks(h * w)
        .zip(y_s.par_chunks_mut(g.positions()))
        .zip(arg_s.par_chunks_mut(g.positions()))
        .for_each(|((x_c, y_c), arg_c)| {
            // one pass to see whether the plane holds NaN (branch-free, so it vectorises)
            let nan = x_c.iter().fold(false, |any, v| any | v.is_nan());
            if !nan && is_2x2_stride_2(&g) {
                return pairs::max_pool(x_c, w, &g, y_c, arg_c);
            }
            // start from the first image pixel of each window, so that a window of -inf
            // (or NaN) values still points inside it
            y_c.fill(f32::NEG_INFINITY);
            for (oy, ats) in arg_c.chunks_mut(g.ow).enumerate() {
                let iy = (oy * g.sh).saturating_sub(g.pad_top);
                for (ox, at) in ats.iter_mut().enumerate() {
                    *at = (iy * w + (ox * g.sw).saturating_sub(g.pad_left)) as u32;
                }
            }
            for_each_tap_row(&g, |oy, iy, ix0, xs| {
                let row = &x_c[iy * w + ix0..(iy + 1) * w];
                let out = oy * g.ow + xs.start..oy * g.ow + xs.end;
                let (best, at) = (&mut y_c[out.clone()], &mut arg_c[out]);
                let base = (iy * w + ix0) as u32;
                // the common strides as constants, so the compiler vectorises the run
                match (g.sw, nan) {
                    (1, false) => max_tap::<false>(row, base, best, at, 1),
                    (2, false) => max_tap::<false>(row, base, best, at, 2),
                    (sw, false) => max_tap::<false>(row, base, best, at, sw),
                    (sw, true) => max_tap::<true>(row, base, best, at, sw),
                }
            });
        });
    Ok(MaxPool { y, argmax })
}

/// Max pooling backward: each output gradient goes to the input that won its window;
/// inputs that won several (overlapping) windows receive the sum.
///
/// # Shapes
/// - `dy`, `argmax`: `[n, c, oh, ow]`, the pooled shape of `x_shape` under `win`
/// - `x_shape`: `[n, c, h, w]`, the forward input's shape
/// - returns `dx`: `[n, c, h, w]`
///
/// # Errors
/// A window that does not fit `x_shape`, a `dy` that is not the pooled shape, an `argmax` of
/// another shape than `dy`, an `argmax` index outside the plane.
pub fn max_pool2d_backward(dy: ArrayView4<f32>, argmax: ArrayView4<u32>, x_shape: [usize; 4], win: &Window) -> Result<Array4<f32>> {
    let g = pool_geometry(&x_shape, win)?;
    let [n, c, h, w] = x_shape;
    expect_shape("output gradient dy", &[n, c, g.oh, g.ow], dy.shape())?;
    expect_shape("max-pool argmax vs dy", dy.shape(), argmax.shape())?;
    expect_allocatable("input gradient", n * c * h * w)?;
    threads::init();
    let argmax = argmax.as_standard_layout();
    let argmax = argmax.as_slice().expect("standard layout");
    // every index inside its plane: the largest, in parallel and branch-free (a serial search
    // for the first bad one, the other thread waiting, was half of the backward's time), then
    // the first bad one if any
    let largest = argmax.par_chunks(1 << 14).map(|c| c.iter().fold(0, |m, &i| m.max(i))).max().unwrap_or(0);
    if largest as usize >= h * w {
        let index = *argmax.iter().find(|&&i| i as usize >= h * w).expect("the largest is one");
        return Err(CnnError::BadArgmax { index, h, w });
    }
    let mut dx = threads::par_zeros(ndarray::Dim(x_shape));
    let positions = g.positions();
    let dy = planes(&dy);
    dx.as_slice_mut()
        .expect("new array")
        .par_chunks_mut(h * w)
        .zip(dy.par_chunks(positions))
        .zip(argmax.par_chunks(positions))
        .for_each(|((dx_c, dy_c), arg_c)| {
            for (&d, &at) in dy_c.iter().zip(arg_c) {
                dx_c[at as usize] += d;
            }
        });
    Ok(dx)
}

/// Average pooling forward: the mean of the input pixels inside each window.
///
/// # Shapes
/// - `x`: `[n, c, h, w]`
/// - returns: `[n, c, oh, ow]`
///
/// # Errors
/// As [`max_pool2d`].
pub fn avg_pool2d(x: ArrayView4<f32>, win: &Window) -> Result<Array4<f32>> {
    let g = pool_geometry(x.shape(), win)?;
    let (n, c, h, w) = x.dim();
    threads::init();
    let mut y = Array4::zeros((n, c, g.oh, g.ow));
    let x = planes(&x);
    let y_s = y.as_slice_mut().expect("new array");
    let count = window_sizes(&g);
    x.par_chunks(h * w).zip(y_s.par_chunks_mut(g.positions())).for_each(|(x_c, y_c)| {
        for_each_tap_row(&g, |oy, iy, ix0, xs| {
            let row = &x_c[iy * w..(iy + 1) * w];
            let sums = &mut y_c[oy * g.ow + xs.start..oy * g.ow + xs.end];
            sums.iter_mut().zip(row[ix0..].iter().step_by(g.sw)).for_each(|(s, &v)| *s += v);
        });
        y_c.iter_mut().zip(&count).for_each(|(y, n)| *y /= n);
    });
    Ok(y)
}

/// Average pooling backward: each output gradient is shared equally by the pixels of its
/// window; overlapping windows add.
///
/// # Shapes
/// - `dy`: `[n, c, oh, ow]`
/// - `x_shape`: `[n, c, h, w]`
/// - returns `dx`: `[n, c, h, w]`
///
/// # Errors
/// A window that does not fit `x_shape`, or a `dy` that is not the pooled shape.
pub fn avg_pool2d_backward(dy: ArrayView4<f32>, x_shape: [usize; 4], win: &Window) -> Result<Array4<f32>> {
    let g = pool_geometry(&x_shape, win)?;
    expect_shape("output gradient dy", &[x_shape[0], x_shape[1], g.oh, g.ow], dy.shape())?;
    let [_, _, h, w] = x_shape;
    expect_allocatable("input gradient", x_shape.iter().product())?;
    threads::init();
    let mut dx = threads::par_zeros(ndarray::Dim(x_shape));
    let dy = planes(&dy);
    let dx_s = dx.as_slice_mut().expect("new array");
    let count = window_sizes(&g);
    dx_s.par_chunks_mut(h * w).zip(dy.par_chunks(g.positions())).for_each(|(dx_c, dy_c)| {
        let share: Vec<f32> = dy_c.iter().zip(&count).map(|(d, n)| d / n).collect();
        for_each_tap_row(&g, |oy, iy, ix0, xs| {
            let row = &mut dx_c[iy * w..(iy + 1) * w];
            let shares = &share[oy * g.ow + xs.start..oy * g.ow + xs.end];
            row[ix0..].iter_mut().step_by(g.sw).zip(shares).for_each(|(d, &s)| *d += s);
        });
    });
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Padding;
    use ndarray::{array, Array};

    fn image(rows: ndarray::Array2<f32>) -> Array4<f32> {
        let (h, w) = rows.dim();
        rows.into_shape_with_order((1, 1, h, w)).unwrap()
    }

    fn material() -> Array4<f32> {
        image(array![[1., 3., 2., 9.], [7., 4., 1., 5.], [8., 5., 2., 3.], [4., 2., 1., 4.]])
    }

    #[test]
    fn material_max_pool() {
        let pool = max_pool2d(material().view(), &Window::square(2).stride(2)).unwrap();
        assert_eq!(pool.y, image(array![[7., 9.], [8., 4.]]));
        // winners: 7 at (1,0) -> 4, 9 at (0,3) -> 3, 8 at (2,0) -> 8, 4 at (3,3) -> 15
        assert_eq!(pool.argmax.iter().copied().collect::<Vec<_>>(), [4, 3, 8, 15]);
        // swapping 7 and 1 inside the top-left window changes nothing
        let mut swapped = material();
        swapped[[0, 0, 1, 0]] = 1.0;
        swapped[[0, 0, 0, 0]] = 7.0;
        assert_eq!(max_pool2d(swapped.view(), &Window::square(2).stride(2)).unwrap().y, pool.y);
    }

    #[test]
    fn material_max_pool_backward() {
        let x = material();
        let pool = max_pool2d(x.view(), &Window::square(2).stride(2)).unwrap();
        let dy = image(array![[1., 2.], [3., 4.]]);
        let dx = max_pool2d_backward(dy.view(), pool.argmax.view(), [1, 1, 4, 4], &Window::square(2).stride(2)).unwrap();
        let expected = image(array![[0., 0., 0., 2.], [1., 0., 0., 0.], [3., 0., 0., 0.], [0., 0., 0., 4.]]);
        assert_eq!(dx, expected);
    }

    /// The 2x2 / stride 2 path (portable and, where the CPU has it, AVX-512) against windows
    /// searched one by one: values with many ties (first wins), -inf, odd sizes (the last row
    /// and column dropped), rows of more than 16 windows, and through `max_pool2d`.
    #[test]
    fn two_by_two_windows_agree_with_a_search_of_each_window() {
        let mut seed = 3u64;
        for (h, w) in [(26, 26), (11, 13), (2, 2), (7, 70), (40, 35)] {
            let x: Vec<f32> = (0..h * w)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    match seed >> 60 {
                        0 => f32::NEG_INFINITY,
                        k => (k % 5) as f32,
                    }
                })
                .collect();
            let g = Window::square(2).stride(2).geometry(h, w).unwrap();
            assert!(is_2x2_stride_2(&g));
            let (mut want_y, mut want_at) = (vec![], vec![]);
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let taps = [(2 * oy) * w + 2 * ox, (2 * oy) * w + 2 * ox + 1, (2 * oy + 1) * w + 2 * ox, (2 * oy + 1) * w + 2 * ox + 1];
                    let winner = taps.into_iter().fold(taps[0], |best, t| if x[t] > x[best] { t } else { best });
                    want_y.push(x[winner]);
                    want_at.push(winner as u32);
                }
            }
            let run = |f: &dyn Fn(&mut [f32], &mut [u32])| {
                let (mut y, mut at) = (vec![f32::NAN; g.positions()], vec![u32::MAX; g.positions()]);
                f(&mut y, &mut at);
                (y, at)
            };
            assert_eq!(run(&|y, at| pairs::portable(&x, w, &g, y, at)), (want_y.clone(), want_at.clone()), "portable {h}x{w}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                assert_eq!(run(&|y, at| unsafe { pairs::avx512(&x, w, &g, y, at) }), (want_y.clone(), want_at.clone()), "avx512 {h}x{w}");
            }
            let pooled = max_pool2d(Array::from_shape_vec((1, 1, h, w), x.clone()).unwrap().view(), &Window::square(2).stride(2)).unwrap();
            assert_eq!((pooled.y.into_raw_vec_and_offset().0, pooled.argmax.into_raw_vec_and_offset().0), (want_y, want_at), "max_pool2d {h}x{w}");
        }
    }

    #[test]
    fn max_pool_ties_go_to_the_first() {
        let x = image(array![[2., 2.], [2., 2.]]);
        let pool = max_pool2d(x.view(), &Window::square(2)).unwrap();
        assert_eq!(pool.argmax[[0, 0, 0, 0]], 0);
        let dx = max_pool2d_backward(image(array![[1.]]).view(), pool.argmax.view(), [1, 1, 2, 2], &Window::square(2)).unwrap();
        assert_eq!(dx, image(array![[1., 0.], [0., 0.]]));
    }

    #[test]
    fn overlapping_max_pool_adds() {
        // 3x3 window, stride 2 on 5x5 with the maximum in the centre of the shared column/row.
        let mut x = Array::zeros((1, 1, 5, 5));
        x[[0, 0, 2, 2]] = 9.0;
        let pool = max_pool2d(x.view(), &Window::square(3).stride(2)).unwrap();
        assert_eq!(pool.y, image(array![[9., 9.], [9., 9.]]));
        let dx = max_pool2d_backward(Array4::ones((1, 1, 2, 2)).view(), pool.argmax.view(), [1, 1, 5, 5], &Window::square(3).stride(2)).unwrap();
        assert_eq!(dx[[0, 0, 2, 2]], 4.0);
        assert_eq!(dx.sum(), 4.0);
    }

    #[test]
    fn material_avg_pool() {
        let y = avg_pool2d(material().view(), &Window::square(2).stride(2)).unwrap();
        // (1+3+7+4)/4, (2+9+1+5)/4, (8+5+4+2)/4, (2+3+1+4)/4
        assert_eq!(y, image(array![[3.75, 4.25], [4.75, 2.5]]));
        let dx = avg_pool2d_backward(image(array![[4., 8.], [12., 16.]]).view(), [1, 1, 4, 4], &Window::square(2).stride(2)).unwrap();
        assert_eq!(dx, image(array![[1., 1., 2., 2.], [1., 1., 2., 2.], [3., 3., 4., 4.], [3., 3., 4., 4.]]));
    }

    #[test]
    fn same_pooling_ignores_padding() {
        // 3x3 input, 2x2 window, stride 2, SAME: out 2x2, one row/column of padding at the end.
        let x = image(array![[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]]);
        let win = Window::square(2).stride(2).padding(Padding::Same);
        assert_eq!(max_pool2d(x.view(), &win).unwrap().y, image(array![[5., 6.], [8., 9.]]));
        // means of [1,2,4,5], [3,6], [7,8], [9]
        assert_eq!(avg_pool2d(x.view(), &win).unwrap(), image(array![[3., 4.5], [7.5, 9.]]));
        let dx = avg_pool2d_backward(Array4::ones((1, 1, 2, 2)).view(), [1, 1, 3, 3], &win).unwrap();
        assert_eq!(dx, image(array![[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [0.5, 0.5, 1.]]));
        // negative values: the padding must not win as a zero
        let neg = x.mapv(|v| -v);
        assert_eq!(max_pool2d(neg.view(), &win).unwrap().y, image(array![[-1., -3.], [-7., -9.]]));
    }

    #[test]
    fn pooling_keeps_channels_and_checks_input() {
        let x = Array4::<f32>::ones((3, 5, 6, 6));
        assert_eq!(max_pool2d(x.view(), &Window::square(2).stride(2)).unwrap().y.dim(), (3, 5, 3, 3));
        let e = max_pool2d(x.view(), &Window::square(2).padding(Padding::uniform(2))).unwrap_err();
        assert!(matches!(e, CnnError::PoolPaddingTooLarge { .. }), "{e}");
        let e = max_pool2d(Array4::<f32>::zeros((0, 1, 4, 4)).view(), &Window::square(2)).unwrap_err();
        assert_eq!(e.to_string(), "input is empty: shape [0, 1, 4, 4]");
        let bad = Array4::<u32>::from_elem((1, 1, 1, 1), 99);
        let e = max_pool2d_backward(Array4::ones((1, 1, 1, 1)).view(), bad.view(), [1, 1, 2, 2], &Window::square(2)).unwrap_err();
        assert_eq!(e.to_string(), "argmax index 99 is outside the 2x2 input plane");
        // in a large argmax (several chunks), the first bad index is named, not the largest
        let mut big = Array4::<u32>::zeros((1, 1, 200, 200));
        (big[[0, 0, 100, 3]], big[[0, 0, 150, 0]]) = (160_007, 200_000);
        let e = max_pool2d_backward(Array4::ones((1, 1, 200, 200)).view(), big.view(), [1, 1, 400, 400], &Window::square(2).stride(2)).unwrap_err();
        assert_eq!(e.to_string(), "argmax index 160007 is outside the 400x400 input plane");
    }

    #[test]
    fn max_pool_backward_refuses_what_does_not_fit() {
        let win = Window::square(2).stride(2);
        let empty = Array4::<f32>::zeros((0, 1, 2, 2));
        let e = max_pool2d_backward(empty.view(), Array4::zeros((0, 1, 2, 2)).view(), [1, 1, 4, 4], &win).unwrap_err();
        assert_eq!(e.to_string(), "shape mismatch for output gradient dy: expected [1, 1, 2, 2], got [0, 1, 2, 2]");
        // a dy of the right batch and channels but not the pooled size of x_shape
        let dy = Array4::<f32>::ones((1, 1, 2, 2));
        let e = max_pool2d_backward(dy.view(), Array4::zeros((1, 1, 2, 2)).view(), [1, 1, 6, 6], &win).unwrap_err();
        assert!(matches!(e, CnnError::ShapeMismatch { what: "output gradient dy", .. }), "{e}");
        // an x_shape whose size overflows: an error, not a panic or an abort
        let e = max_pool2d_backward(dy.view(), Array4::zeros((1, 1, 2, 2)).view(), [usize::MAX, 2, 4, 4], &win).unwrap_err();
        assert!(matches!(e, CnnError::TooLarge { .. }), "{e}");
        // one that does not overflow but cannot be allocated
        let e = max_pool2d_backward(dy.view(), Array4::zeros((1, 1, 2, 2)).view(), [1 << 40, 1, 4, 4], &win).unwrap_err();
        assert!(matches!(e, CnnError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn nan_wins_its_window_and_propagates() {
        // PyTorch: max_pool2d of a window holding NaN is NaN
        let x = image(array![[1., f32::NAN, 3., 4.], [5., 6., 7., 8.]]);
        let pool = max_pool2d(x.view(), &Window::square(2).stride(2)).unwrap();
        assert!(pool.y[[0, 0, 0, 0]].is_nan());
        assert_eq!(pool.argmax[[0, 0, 0, 0]], 1);
        assert_eq!(pool.y[[0, 0, 0, 1]], 8.0);
        // a NaN before a larger value stays the winner
        let x = image(array![[f32::NAN, 9.], [9., 9.]]);
        assert!(max_pool2d(x.view(), &Window::square(2)).unwrap().y[[0, 0, 0, 0]].is_nan());
        // an all-NaN window is NaN (it used to be -inf)
        let x = image(array![[f32::NAN, f32::NAN], [f32::NAN, f32::NAN]]);
        assert!(max_pool2d(x.view(), &Window::square(2)).unwrap().y[[0, 0, 0, 0]].is_nan());
    }

    #[test]
    fn max_pool_backward_with_padding() {
        // 3x3 input, 2x2 window, stride 2, explicit padding 1 on every side: out 2x2, windows
        // (rows, cols) = ([-1,0], [-1,0]), ([-1,0], [1,2]), ([1,2], [-1,0]), ([1,2], [1,2])
        let x = image(array![[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]]);
        let win = Window::square(2).stride(2).padding(Padding::uniform(1));
        let pool = max_pool2d(x.mapv(|v| -v).view(), &win).unwrap();
        // negative values: padding must not win as a zero; winners -1 (0), -2 (1), -4 (3), -5 (4)
        assert_eq!(pool.y, image(array![[-1., -2.], [-4., -5.]]));
        assert_eq!(pool.argmax.iter().copied().collect::<Vec<_>>(), [0, 1, 3, 4]);
        let dx = max_pool2d_backward(image(array![[1., 2.], [3., 4.]]).view(), pool.argmax.view(), [1, 1, 3, 3], &win).unwrap();
        assert_eq!(dx, image(array![[1., 2., 0.], [3., 4., 0.], [0., 0., 0.]]));
    }
}
