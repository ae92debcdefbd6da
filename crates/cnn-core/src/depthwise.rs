//! Depthwise convolution by direct loops: every input channel convolved with its own
//! `multiplier` kernels, nothing summed across channels.
//!
//! im2col would lower each channel into a GEMM with `K = kh·kw` (9 for 3x3): far too thin for
//! BLAS. Here each output plane walks the window tap by tap over whole rows, as pooling does:
//!
//! ```text
//! y[n, c·m + j, oy, ox] = b[c·m + j] + Σ_{ky, kx} w[c·m + j, 0, ky, kx] · x[n, c, oy·sh + ky·dh − pt, ox·sw + kx·dw − pl]
//! dx[n, c]              = Σ_j Σ_taps w[c·m + j, ky, kx] · dy[n, c·m + j]   (scattered back to the taps' pixels)
//! dw[o, ky, kx]         = Σ_n Σ_positions dy[n, o] · x[n, o / m] under the tap
//! ```

use crate::threads;
use crate::window::Geometry;
use ndarray::{Array1, Array4, ArrayView1, ArrayView4, Axis};
use rayon::prelude::*;

/// Calls `f(t, oy, iy, xs, ix0)` for every tap `(ky, kx)` (its index `t = ky·kw + kx`) and
/// output row `oy` whose input row `iy` is inside the image; the outputs `xs` read the input
/// row at `ix0, ix0 + sw, ...`.
fn for_each_tap(g: &Geometry, mut f: impl FnMut(usize, usize, usize, std::ops::Range<usize>, usize)) {
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let xs = g.cols_inside(kx);
            if xs.is_empty() {
                continue;
            }
            for oy in g.rows_inside(ky) {
                f(ky * g.kw + kx, oy, g.input_row(oy, ky), xs.clone(), g.input_col(xs.start, kx));
            }
        }
    }
}

/// Depthwise forward, shapes checked by the caller.
///
/// # Shapes
/// `x`: `[n, c, h, w]`, `w`: `[c·m, 1, kh, kw]`, `b`: `[c·m]` → `[n, c·m, oh, ow]`
pub(crate) fn forward(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, g: &Geometry) -> Array4<f32> {
    let (n, c, h, wd) = x.dim();
    let c_out = w.dim().0;
    let m = c_out / c;
    let x = x.as_standard_layout();
    let (x, w) = (x.as_slice().expect("standard layout"), w.as_standard_layout().into_owned());
    let taps = w.as_slice().expect("owned");
    let k = g.kh * g.kw;
    threads::init();
    let mut y = Array4::zeros((n, c_out, g.oh, g.ow));
    let y_s = y.as_slice_mut().expect("new array");
    y_s.par_chunks_mut(g.positions()).enumerate().for_each(|(plane, y_p)| {
        let (i, o) = (plane / c_out, plane % c_out);
        let x_p = &x[(i * c + o / m) * h * wd..][..h * wd];
        if let Some(b) = b {
            y_p.fill(b[o]);
        }
        for_each_tap(g, |t, oy, iy, xs, ix0| {
            let weight = taps[o * k + t];
            let out = &mut y_p[oy * g.ow + xs.start..oy * g.ow + xs.end];
            let row = &x_p[iy * wd + ix0..(iy + 1) * wd];
            out.iter_mut().zip(row.iter().step_by(g.sw)).for_each(|(y, &v)| *y += weight * v);
        });
    });
    y
}

/// Depthwise backward, shapes checked by the caller: `(dx, dw, db)`.
///
/// `dx` runs in parallel over the input planes, `dw` and `db` over the output channels, each
/// summing the batch in order: deterministic for any number of threads.
pub(crate) fn backward(x: ArrayView4<f32>, w: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> (Array4<f32>, Array4<f32>, Array1<f32>) {
    let (n, c, h, wd) = x.dim();
    let c_out = w.dim().0;
    let m = c_out / c;
    let k = g.kh * g.kw;
    let p = g.positions();
    let (x, dy) = (x.as_standard_layout(), dy.as_standard_layout());
    let (x_s, dy_s) = (x.as_slice().expect("standard layout"), dy.as_slice().expect("standard layout"));
    let w = w.as_standard_layout().into_owned();
    let taps = w.as_slice().expect("owned");
    threads::init();

    // dx[n, c]: each output channel of the input channel sends its gradient back through its taps
    let mut dx = threads::par_zeros(ndarray::Dim([n, c, h, wd]));
    dx.as_slice_mut().expect("new array").par_chunks_mut(h * wd).enumerate().for_each(|(plane, dx_p)| {
        let (i, ch) = (plane / c, plane % c);
        for o in ch * m..(ch + 1) * m {
            let dy_p = &dy_s[(i * c_out + o) * p..][..p];
            for_each_tap(g, |t, oy, iy, xs, ix0| {
                let weight = taps[o * k + t];
                let d = &dy_p[oy * g.ow + xs.start..oy * g.ow + xs.end];
                let row = &mut dx_p[iy * wd + ix0..(iy + 1) * wd];
                row.iter_mut().step_by(g.sw).zip(d).for_each(|(dx, &d)| *dx += weight * d);
            });
        }
    });

    // dw[o] and db[o]: the batch summed in order
    let mut dw = Array4::zeros(w.raw_dim());
    let mut db = Array1::zeros(c_out);
    dw.axis_iter_mut(Axis(0)).into_par_iter().zip(db.axis_iter_mut(Axis(0))).enumerate().for_each(|(o, (mut dw_o, mut db_o))| {
        let dw_o = dw_o.as_slice_mut().expect("new array");
        let mut bias = 0.0f32;
        for i in 0..n {
            let dy_p = &dy_s[(i * c_out + o) * p..][..p];
            let x_p = &x_s[(i * c + o / m) * h * wd..][..h * wd];
            bias += dy_p.iter().sum::<f32>();
            for_each_tap(g, |t, oy, iy, xs, ix0| {
                let d = &dy_p[oy * g.ow + xs.start..oy * g.ow + xs.end];
                let row = &x_p[iy * wd + ix0..(iy + 1) * wd];
                dw_o[t] += d.iter().zip(row.iter().step_by(g.sw)).map(|(&d, &v)| d * v).sum::<f32>();
            });
        }
        db_o.fill(bias);
    });
    (dx, dw, db)
}
