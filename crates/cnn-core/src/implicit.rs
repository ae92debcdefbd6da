//! Implicit GEMM for stride-1 convolutions: the product of the lowered matrix, without the
//! lowered matrix.
//!
//! With stride 1, neighbouring output pixels see neighbouring input pixels. Pad each sample
//! once (`[c_in, hp, wp]`) and number the outputs along the *padded* width, `q = oy·wp + ox`:
//! then row `(ci, ky, kx)` of the lowered matrix is simply the padded sample read from
//!
//! ```text
//! offset(ci, ky, kx) = ci·hp·wp + ky·dh·wp + kx·dw        cols[(ci, ky, kx), q] = padded[offset + q]
//! ```
//!
//! on. The micro-kernel of [`crate::gemm`] reads each row of its B sliver through a table of
//! offsets, so it reads these rows where they are: the product `w_mat · cols` runs, the
//! `kh·kw` copies of the input are never written. The price is `wp − ow` extra output columns
//! per row (whose windows wrap into the next row), computed and dropped: 7% more
//! multiply-adds for a 28x28 3x3 SAME layer, 14% at 14x14, 29% at 7x7.
//!
//! Each sample's padded copy (a few tens of KiB for ResNet-20) stays in L1/L2 while every
//! filter sweeps it; the filters are packed once per call, for all samples.

use crate::gemm::{pack, store, Kernel, Rows};
use crate::threads::Scratch;
use crate::window::Geometry;
use ndarray::{Array4, ArrayView1, ArrayView3, ArrayView4};
use rayon::prelude::*;

/// Padded samples up to this many values (1 MiB) go implicit; the B slivers of a larger one
/// would not stay in cache, and the lowering by bands serves it better.
const MAX_PADDED: usize = 1 << 18;

/// Whether a convolution of this geometry (one group, `c_in` channels) is computed here: stride
/// 1, a window larger than one pixel (a 1x1 convolution is its own lowered matrix already), and
/// a padded sample that fits in cache.
pub(crate) fn suits(g: &Geometry, c_in: usize) -> bool {
    let (hp, wp) = padded(g);
    g.sh == 1 && g.sw == 1 && !g.is_identity() && c_in * hp * wp <= MAX_PADDED
}

fn padded(g: &Geometry) -> (usize, usize) {
    (g.h + g.pad_top + g.pad_bottom, g.w + g.pad_left + g.pad_right)
}

/// `y = w ⊛ x + b` for a geometry that [`suits`] (shapes checked by the caller).
pub(crate) fn forward(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, g: &Geometry) -> Array4<f32> {
    let kernel = Kernel::best();
    let (n, c_in, _, _) = x.dim();
    let (c_out, k) = (w.dim().0, c_in * g.kh * g.kw);
    let (hp, wp) = padded(g);
    // where row (ci, ky, kx) of the lowered matrix starts in the padded sample
    let rows = Rows::new(
        (0..c_in).flat_map(|ci| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| ci * hp * wp + ky * g.dh * wp + kx * g.dw))).collect(),
    );
    // the filters, packed once: A of every sample's product
    let w_mat = w.to_shape((c_out, k)).expect("filters reshape to [c_out, c_in*kh*kw]");
    let mut filters = vec![];
    pack(&mut filters, &w_mat.view(), (0, 0), false, c_out, kernel.mr, k);
    // outputs on the padded width; the last sliver reads up to kernel.nr values past them
    let q = g.oh * wp;
    let sample_len = c_in * hp * wp + g.kw * g.dw + kernel.nr;
    let mut y = Array4::zeros((n, c_out, g.oh, g.ow));
    y.outer_iter_mut().into_par_iter().zip(x.outer_iter()).for_each_init(
        || (Scratch::matrix(1, sample_len), Scratch::matrix(c_out, q), vec![0.0; kernel.mr * kernel.nr]),
        |(sample, out, tile), (mut y_i, x_i)| {
            let mut sample = sample.view_mut();
            let sample = sample.as_slice_mut().expect("a new buffer is contiguous");
            pad_into(x_i, g, (hp, wp), sample);
            let mut out = out.view_mut();
            for jc in (0..q).step_by(kernel.nr) {
                for (ir, a) in filters.chunks_exact(kernel.mr * k).enumerate() {
                    kernel.run(k, a, &sample[jc..], &rows, tile);
                    store(tile, kernel.nr, 1.0, 0.0, &mut out, (ir * kernel.mr, jc), (c_out, q));
                }
            }
            // drop the wrapped columns, add the bias
            let computed = out.as_slice().expect("a new buffer is contiguous");
            let y_i = y_i.as_slice_mut().expect("y is standard layout");
            for (co, (plane, computed)) in y_i.chunks_exact_mut(g.oh * g.ow).zip(computed.chunks_exact(q)).enumerate() {
                let bias = b.map_or(0.0, |b| b[co]);
                for (row, computed) in plane.chunks_exact_mut(g.ow).zip(computed.chunks_exact(wp)) {
                    row.iter_mut().zip(computed).for_each(|(y, &v)| *y = v + bias);
                }
            }
        },
    );
    y
}

/// Writes `x` (`[c_in, h, w]`) into `padded` as `[c_in, hp, wp]` with the geometry's zero
/// borders, and zeros after it.
fn pad_into(x: ArrayView3<f32>, g: &Geometry, (hp, wp): (usize, usize), padded: &mut [f32]) {
    padded.fill(0.0);
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    for (plane, x_c) in padded.chunks_exact_mut(hp * wp).zip(x.chunks_exact(g.h * g.w)) {
        for (row, x_row) in plane[g.pad_top * wp..].chunks_exact_mut(wp).zip(x_c.chunks_exact(g.w)) {
            row[g.pad_left..g.pad_left + g.w].copy_from_slice(x_row);
        }
    }
}
