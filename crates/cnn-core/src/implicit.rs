//! Implicit GEMM: the product of the lowered matrix, without the lowered matrix.
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
//! A larger stride is the same once the padded sample is split into `sh·sw` phase planes
//! ([`Planes`]: padded value `(y, x)` in plane `(y mod sh, x mod sw)` at `(y/sh)·wq + x/sw`):
//! tap `(ky, kx)` of output `(oy, ox)` is then plane `(ky·dh mod sh, kx·dw mod sw)` at
//! `(oy + ky·dh/sh)·wq + ox + kx·dw/sw`, again a run along the outputs numbered `oy·wq + ox`.
//! For a strided layer the filter gradient reads the same phase planes ([`filter_gradient`]);
//! its input gradient is the lowering's adjoint alone (`w_matᵀ·dy`, col2im), not a
//! convolution of stride 1.
//!
//! Each sample's padded copy (a few tens of KiB for ResNet-20) stays in L1/L2 while every
//! filter sweeps it; the filters are packed once per call, for all samples.
//!
//! The backward needs no lowered matrix either: the input gradient is one more implicit
//! convolution ([`input_gradient`]), and the filter gradient `dy · colsᵀ` takes each of its
//! values as a dot product of a row of `dy` with a row of the lowered matrix read from the
//! padded sample ([`filter_gradient`], on the [`crate::gemm::Dots`] kernels).

use crate::conv::{clip, filter_gradient_tasks, Epilogue};
use crate::gemm::{pack, store, Dots, Kernel, Rows, DOT_LEN};
use crate::threads::Scratch;
use crate::vector;
use crate::window::{Geometry, Padding, Window};
use ndarray::{s, Array1, Array2, Array4, ArrayView3, ArrayView4};
use rayon::prelude::*;

/// Padded samples up to this many values (1 MiB) go implicit; the B slivers of a larger one
/// would not stay in cache, and the lowering by bands serves it better.
pub(crate) const MAX_PADDED: usize = 1 << 18;

/// At most this many outputs computed per output kept (`wp / ow`): 1.07 (28x28, 3x3 SAME) to
/// 1.29 (7x7) were faster than the lowering in every stage of ResNet-20; the reference
/// network's conv3 (5x5 VALID, 1.67) was 1.3x slower forward.
const MAX_WASTE: f64 = 1.3;

/// At least this long a receptive field (`c_in·kh·kw`) with AVX-512: with fewer steps per
/// tile the micro-kernel spends its time storing tiles; the reference network's conv1
/// (`K = 9`) was slower implicit. AVX2's kernel has no minimum: on Zen 3 (batch 128, forward)
/// it beat the lowering from a field of 9 on — 1 → 8 filters at 28x28 0.44 against 0.45 ms,
/// 3 → 8 at 32x32 0.83 against 1.11, 3 → 12 0.90 against 1.41, 3 → 32 2.71 against 3.02.
const MIN_FIELD: usize = 32;

/// At least this many output channels: fewer leave most of the kernel's 8 (AVX-512) rows of
/// filters empty (conv1's input gradient, 1 channel, was 2x slower).
const MIN_FILTERS: usize = 8;

/// Whether a convolution of this geometry (one group, `c_in` → `c_out` channels) is computed
/// here: a window larger than one pixel (a 1x1 convolution is its own lowered matrix
/// already), a padded sample that fits in cache, and the shape limits above (measured with
/// `cargo bench --bench conv` and the `layer_times` example).
pub(crate) fn suits(g: &Geometry, c_in: usize, c_out: usize) -> bool {
    let planes = Planes::of(g);
    g.kh * g.kw > 1
        && c_in * planes.channel() <= MAX_PADDED
        && planes.wq as f64 <= MAX_WASTE * g.ow as f64
        && (c_in * g.kh * g.kw >= MIN_FIELD || Kernel::best().name() == "avx2+fma")
        && c_out >= MIN_FILTERS
}

/// Values of one padded sample (its [`Planes`]), for the caller to check before any work: a
/// padding of millions would otherwise fail to allocate mid-way.
pub(crate) fn padded_values(g: &Geometry, c_in: usize) -> usize {
    c_in.saturating_mul(Planes::of(g).channel())
}

/// Where the padded sample's values lie: `sh·sw` phase planes per channel (one plane for
/// stride 1), each `hq x wq`, padded value `(y, x)` in plane `(y mod sh, x mod sw)` at
/// `(y / sh)·wq + x / sw`. Output `(oy, ox)` reads padded `(oy·sh + ky·dh, ox·sw + kx·dw)`,
/// which is `at(ky·dh, kx·dw) + oy·wq + ox`: with the outputs numbered `q = oy·wq + ox`, a
/// strided convolution's lowered rows are runs too, one phase plane each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Planes {
    hq: usize,
    pub(crate) wq: usize,
    sh: usize,
    sw: usize,
}

impl Planes {
    pub(crate) fn of(g: &Geometry) -> Planes {
        let (hp, wp) = (g.h + g.pad_top + g.pad_bottom, g.w + g.pad_left + g.pad_right);
        Planes { hq: hp.div_ceil(g.sh), wq: wp.div_ceil(g.sw), sh: g.sh, sw: g.sw }
    }

    /// Values per channel.
    pub(crate) fn channel(&self) -> usize {
        (self.sh * self.sw).saturating_mul(self.hq).saturating_mul(self.wq)
    }

    /// Where padded value `(y, x)` of channel `ci` lies.
    fn at(&self, ci: usize, y: usize, x: usize) -> usize {
        ci * self.channel() + ((y % self.sh) * self.sw + x % self.sw) * self.hq * self.wq + (y / self.sh) * self.wq + x / self.sw
    }
}

/// `y = w ⊛ x + b` for any geometry (shapes checked by the caller); fast where it [`suits`],
/// correct everywhere (`conv2d_with` may name it for any shape of one group).
pub(crate) fn forward(x: ArrayView4<f32>, w: ArrayView4<f32>, out: Epilogue, g: &Geometry) -> Array4<f32> {
    let kernel = Kernel::best();
    let (n, c_in, _, _) = x.dim();
    let (c_out, k) = (w.dim().0, c_in * g.kh * g.kw);
    let planes = Planes::of(g);
    let offsets = lowered_rows(g, c_in, &planes);
    // the filters, packed once: A of every sample's product
    let w_mat = w.to_shape((c_out, k)).expect("filters reshape to [c_out, c_in*kh*kw]");
    let mut filters = vec![];
    pack(&mut filters, &w_mat.view(), (0, 0), false, c_out, kernel.mr, k);
    // outputs on the planes' width; the last sliver reads up to kernel.nr values past them
    let wq = planes.wq;
    let q = g.oh * wq;
    let sample_len = (offsets.iter().max().map_or(0, |&last| last + q) + kernel.nr).max(c_in * planes.channel());
    let rows = Rows::new(offsets);
    // every value is written below, once: no zeroing first
    let mut y = Array4::<f32>::uninit((n, c_out, g.oh, g.ow));
    y.outer_iter_mut().into_par_iter().zip(x.outer_iter()).for_each_init(
        || (Scratch::matrix(1, sample_len), Scratch::matrix(c_out, q), vec![0.0; kernel.mr * kernel.nr]),
        |(sample, computed, tile), (mut y_i, x_i)| {
            let mut sample = sample.view_mut();
            let sample = sample.as_slice_mut().expect("a new buffer is contiguous");
            pad_into(x_i, g, &planes, sample);
            let mut computed = computed.view_mut();
            for jc in (0..q).step_by(kernel.nr) {
                for (ir, a) in filters.chunks_exact(kernel.mr * k).enumerate() {
                    kernel.run(k, a, &sample[jc..], &rows, tile);
                    store(tile, kernel.nr, 1.0, 0.0, &mut computed, (ir * kernel.mr, jc), (c_out, q));
                }
            }
            // drop the wrapped columns, add the bias, apply the activation
            let computed = computed.as_slice().expect("a new buffer is contiguous");
            let y_i = y_i.as_slice_mut().expect("y is standard layout");
            for (co, (plane, computed)) in y_i.chunks_exact_mut(g.oh * g.ow).zip(computed.chunks_exact(q)).enumerate() {
                let (bias, floor) = (out.bias_of(co), out.floor);
                for (row, computed) in plane.chunks_exact_mut(g.ow).zip(computed.chunks_exact(wq)) {
                    row.iter_mut().zip(computed).for_each(|(y, &v)| {
                        y.write(clip(v + bias, floor));
                    });
                }
            }
        },
    );
    // SAFETY: each sample's c_out planes, and each plane's oh rows of ow values, were written
    // from the computed rows above (c_out·q values per sample, wq ≥ ow per row)
    unsafe { y.assume_init() }
}

/// Where row `(ci, ky, kx)` of the lowered matrix starts in the padded sample.
pub(crate) fn lowered_rows(g: &Geometry, c_in: usize, planes: &Planes) -> Vec<usize> {
    (0..c_in).flat_map(|ci| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| planes.at(ci, ky * g.dh, kx * g.dw)))).collect()
}

/// Padded samples and output gradients per task of [`filter_gradient`], in values (512 KiB:
/// they are read once per block of filters, so they should stay in L2).
const GRADIENT_TASK_VALUES: usize = 1 << 17;

/// The filter and bias gradients of a stride-1 convolution, with the lowered matrix read from
/// the padded samples as in [`forward`]:
///
/// ```text
/// dw[co, (ci, ky, kx)] = Σ_samples Σ_q  dy'[co, q] · padded[offset(ci, ky, kx) + q]
/// ```
///
/// where `dy'` is `dy` on the padded width (zeros in the `wp − ow` wrapped columns, so they
/// add nothing) and the sum over `q` is padded with zeros to a multiple of [`DOT_LEN`]. Each
/// value is a dot product of two rows that are both contiguous ([`Dots`]): no lowered matrix,
/// no transposition. Samples go in tasks of a fixed count (from the shapes alone) whose partial
/// gradients are added in batch order: the same sums for any number of threads.
///
/// A non-finite input value reaches, through the wrapped columns (`0 · ∞`), a few more
/// filter gradients than the loops' sums would: they are non-finite either way.
pub(crate) fn filter_gradient(x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> (Array4<f32>, Array1<f32>) {
    let dots = Dots::best();
    let (n, c_in, _, _) = x.dim();
    let c_out = dy.dim().1;
    let k = c_in * g.kh * g.kw;
    let planes = Planes::of(g);
    let wp = planes.wq;
    let len = (g.oh * wp).next_multiple_of(DOT_LEN);
    let x_rows = lowered_rows(g, c_in, &planes);
    // each padded sample, with the zeros its last row reads past the image
    let x_stride = x_rows.iter().max().map_or(0, |&last| last + len).max(c_in * planes.channel());
    let dy_stride = c_out * len;
    let task = (GRADIENT_TASK_VALUES / (x_stride + dy_stride)).clamp(1, n.max(1));
    let dy = dy.as_standard_layout();
    let (dw, db) = filter_gradient_tasks(
        x,
        dy.view(),
        task,
        (c_out, k),
        || (Scratch::matrix(task, x_stride), Scratch::matrix(task, dy_stride), vec![0.0; dots.nd * dots.nx]),
        |(xs, ds, out), x_task, dy_task| {
            let (mut xs, mut ds) = (xs.view_mut(), ds.view_mut());
            // the bias gradient: each channel's sum, sample by sample in batch order
            let mut db = Array1::zeros(c_out);
            for ((x_i, dy_i), (mut padded, mut spread)) in x_task.outer_iter().zip(dy_task.outer_iter()).zip(xs.outer_iter_mut().zip(ds.outer_iter_mut())) {
                pad_into(x_i, g, &planes, padded.as_slice_mut().expect("a scratch row is contiguous"));
                let spread = spread.as_slice_mut().expect("a scratch row is contiguous");
                spread_rows(dy_i, wp, len, spread);
                db.iter_mut().zip(spread.chunks_exact(len)).for_each(|(db, row)| *db += vector::sum(row));
            }
            let (xs, ds) = (xs.as_slice().expect("scratch is contiguous"), ds.as_slice().expect("scratch is contiguous"));
            let samples = x_task.dim().0;
            let mut dw = Array2::zeros((c_out, k));
            let (mut a_rows, mut b_rows) = ([0; 8], [0; 8]);
            for a0 in (0..c_out).step_by(dots.nd) {
                // a block past the last row repeats it (computed, not stored)
                a_rows.iter_mut().enumerate().for_each(|(i, r)| *r = (a0 + i).min(c_out - 1) * len);
                for b0 in (0..k).step_by(dots.nx) {
                    b_rows.iter_mut().enumerate().for_each(|(j, r)| *r = x_rows[(b0 + j).min(k - 1)]);
                    dots.run(ds, xs, samples, (dy_stride, x_stride), &a_rows[..dots.nd], &b_rows[..dots.nx], len, out);
                    for (i, out) in out.chunks_exact(dots.nx).take(c_out - a0).enumerate() {
                        for (j, &v) in out.iter().take(k - b0).enumerate() {
                            dw[[a0 + i, b0 + j]] = v;
                        }
                    }
                }
            }
            (dw, db)
        },
    );
    (dw.into_shape_with_order((c_out, c_in, g.kh, g.kw)).expect("dw has the filters' size"), db)
}

/// Values per task of [`filter_gradient_channels_last`] (512 KiB: fifteen samples' 64-channel
/// 9x9 padded copies and their packed `dy`). Measured on ResNet-20's 7x7 layer (batch 128,
/// Zen 3): 2¹⁵, 2¹⁶, 2¹⁷, 2¹⁸ values took 4.9, 4.7, 3.9, 5.1 ms.
const CHANNELS_LAST_TASK_VALUES: usize = 1 << 17;

/// Values of a task's buffers in [`filter_gradient_channels_last`] (one sample at least), for
/// the caller to check before any work.
pub(crate) fn channels_last_values(g: &Geometry, c_in: usize, c_out: usize) -> usize {
    let c = c_in.next_multiple_of(Kernel::best().nr);
    let sample = (g.h + g.pad_top + g.pad_bottom).saturating_mul(g.w + g.pad_left + g.pad_right).saturating_mul(c);
    sample.saturating_add(c_out.next_multiple_of(Kernel::best().mr).saturating_mul(g.positions())).max(CHANNELS_LAST_TASK_VALUES)
}

/// The filter and bias gradients as one GEMM per task on the micro-kernel, `dw[co, (ci, ky, kx)]
/// = Σ_q dy[co, q] · padded[base(q) + tap(ky, kx) + ci]`, with each sample padded
/// **channels-last** (`[hp, wp, c]`, the channels rounded up to the kernel's `nr`): for a tap,
/// the `nr` channels a step of the kernel needs are contiguous, at the output position's
/// base plus the tap's offset — the kernel's table of row offsets holds the positions' bases,
/// and one call computes every channel of a tap for `mr` filters. `dy` is packed into the
/// kernel's `mr`-row slivers. Any stride, dilation and padding; for outputs too small for the
/// dot products' rows (7x7: `oh·wp` = 63 values) it replaces the lowering and OpenBLAS.
pub(crate) fn filter_gradient_channels_last(x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> (Array4<f32>, Array1<f32>) {
    filter_gradient_channels_last_on(Kernel::best(), x, dy, g)
}

/// [`filter_gradient_channels_last`] on the micro-kernel given (the tests run every one).
fn filter_gradient_channels_last_on(kernel: Kernel, x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> (Array4<f32>, Array1<f32>) {
    let (n, c_in, _, _) = x.dim();
    let c_out = dy.dim().1;
    let (hp, wp) = (g.h + g.pad_top + g.pad_bottom, g.w + g.pad_left + g.pad_right);
    let c = c_in.next_multiple_of(kernel.nr);
    let (sample_len, p) = (hp * wp * c, g.positions());
    let task = (CHANNELS_LAST_TASK_VALUES / (sample_len + c_out * p)).clamp(1, n.max(1));
    // where tap (ky, kx) of an output reads, from the output's base (taps in filter order)
    let taps: Vec<usize> = (0..g.kh).flat_map(|ky| (0..g.kw).map(move |kx| (ky * g.dh * wp + kx * g.dw) * c)).collect();
    let panels = c_out.div_ceil(kernel.mr);
    let dy = dy.as_standard_layout();
    let k = c_in * g.kh * g.kw;
    let (dw, db) = filter_gradient_tasks(
        x,
        dy.view(),
        task,
        (c_out, k),
        || (vec![0.0f32; task * sample_len], vec![0.0f32; panels * kernel.mr * task * p], vec![0.0f32; kernel.mr * c]),
        |(padded, packed, tiles), x_task, dy_task| {
            let samples = x_task.dim().0;
            let steps = samples * p;
            // each sample channels-last inside its zero border (the border and the
            // channels past c_in are never written: they stay zero)
            for (x_i, padded) in x_task.outer_iter().zip(padded.chunks_exact_mut(sample_len)) {
                for (ci, x_c) in x_i.outer_iter().enumerate() {
                    for (iy, x_row) in x_c.outer_iter().enumerate() {
                        let start = ((g.pad_top + iy) * wp + g.pad_left) * c + ci;
                        padded[start..].iter_mut().step_by(c).zip(x_row).for_each(|(p, &v)| *p = v);
                    }
                }
            }
            // dy in the kernel's slivers: step s·p + q of sliver k holds filters k·mr.. of
            // output q of sample s (the last sliver's rows past c_out are computed, not kept)
            let mut db = Array1::zeros(c_out);
            for (s, dy_i) in dy_task.outer_iter().enumerate() {
                let dy_i = dy_i.to_shape((c_out, p)).expect("dy is standard layout");
                for (co, row) in dy_i.outer_iter().enumerate() {
                    let row = row.to_slice().expect("a row of a standard layout");
                    let (sliver, i) = (co / kernel.mr, co % kernel.mr);
                    let out = &mut packed[sliver * kernel.mr * steps + s * p * kernel.mr + i..];
                    out.iter_mut().step_by(kernel.mr).zip(row).for_each(|(o, &v)| *o = v);
                    db[co] += vector::sum(row);
                }
            }
            // where each output of the task reads its tap (0, 0), channel 0
            let bases: Vec<usize> = (0..samples).flat_map(|s| (0..g.oh).flat_map(move |oy| (0..g.ow).map(move |ox| s * sample_len + (oy * g.sh * wp + ox * g.sw) * c))).collect();
            let rows = Rows::new(bases);
            // dw[co, (ci, ky, kx)]: a tile's row is filter co's channels block·nr.. of one tap
            let mut dw = Array2::zeros((c_out, k));
            let dw_s = dw.as_slice_mut().expect("a new array");
            for (sliver, a) in packed.chunks_exact(kernel.mr * steps).take(panels).enumerate() {
                for (t, &tap) in taps.iter().enumerate() {
                    kernel.run_blocks(steps, a, &padded[tap..samples * sample_len], &rows, tiles);
                    for (block, tile) in tiles.chunks_exact(kernel.mr * kernel.nr).enumerate() {
                        let channels = kernel.nr.min(c_in.saturating_sub(block * kernel.nr));
                        for (co, row) in (sliver * kernel.mr..c_out).zip(tile.chunks_exact(kernel.nr)) {
                            let first = co * k + block * kernel.nr * g.kh * g.kw + t;
                            dw_s[first..].iter_mut().step_by(g.kh * g.kw).zip(&row[..channels]).for_each(|(d, &v)| *d = v);
                        }
                    }
                }
            }
            (dw, db)
        },
    );
    (dw.into_shape_with_order((c_out, c_in, g.kh, g.kw)).expect("dw has the filters' size"), db)
}

/// Writes `dy` (`[c_out, oh, ow]`) into `spread` as `c_out` rows of `len` values, each the
/// output plane on the padded width `wp`, zeros in the wrapped columns and after the plane
/// (each value written once: a fill first, then the copy, was a tenth of the filter gradient).
fn spread_rows(dy: ArrayView3<f32>, wp: usize, len: usize, spread: &mut [f32]) {
    let (oh, ow) = (dy.dim().1, dy.dim().2);
    for (row, plane) in spread.chunks_exact_mut(len).zip(dy.outer_iter()) {
        let (lines, tail) = row.split_at_mut(oh * wp);
        for (line, dy_line) in lines.chunks_exact_mut(wp).zip(plane.outer_iter()) {
            let (values, wrapped) = line.split_at_mut(ow);
            values.copy_from_slice(dy_line.as_slice().expect("dy is standard layout"));
            wrapped.fill(0.0);
        }
        tail.fill(0.0);
    }
}

/// The input gradient of a stride-1 convolution that [`suits`], as one more stride-1
/// convolution: each input pixel gathers the output gradients of the windows that saw it,
/// so `dx` is `dy` convolved with the filters turned half a turn in space and transposed in
/// channels, `w'[ci, co, ky, kx] = w[co, ci, kh−1−ky, kw−1−kx]`, with the padding that
/// brings `oh x ow` back to `h x w` (`(kh−1)·dh − top` on top, and so on: the kernel's reach
/// minus the forward padding).
///
/// ```text
/// dx[ci, iy, ix] = Σ_co Σ_ky,kx  w[co, ci, ky, kx] · dy[co, iy + top − ky·dh, ix + left − kx·dw]
/// ```
///
/// Replaces `w_matᵀ · dy` and col2im (a scatter-add of `kh·kw` copies) with the implicit
/// product. Only for a geometry with a [`transposed`] one (the caller checks
/// [`transposed_suits`]).
pub(crate) fn input_gradient(dy: ArrayView4<f32>, w: ArrayView4<f32>, g: &Geometry) -> Array4<f32> {
    let (turned, g_t) = transposed_operands(w, g).expect("checked by transposed_suits");
    forward(dy, turned, Epilogue::bias(None), &g_t)
}

/// The filters and geometry of the input gradient's convolution (see [`input_gradient`]):
/// `w` turned half a turn in space and transposed in channels, and [`transposed`]'s
/// geometry; `None` where the padding is beyond the kernel's reach.
pub(crate) fn transposed_operands<'a>(w: ArrayView4<'a, f32>, g: &Geometry) -> Option<(ArrayView4<'a, f32>, Geometry)> {
    Some((turned(w), transposed(g)?))
}

/// Filters `[c_out, c_in, kh, kw]` as the input gradient's convolution takes them: turned
/// half a turn in space, input and output channels swapped (`[c_in, c_out, kh, kw]`).
pub(crate) fn turned(w: ArrayView4<f32>) -> ArrayView4<f32> {
    w.slice_move(s![.., .., ..;-1, ..;-1]).permuted_axes([1, 0, 2, 3])
}

/// The geometry of [`input_gradient`]'s convolution, if the forward padding is within the
/// kernel's reach on every side (true of VALID, SAME and the usual explicit paddings).
fn transposed(g: &Geometry) -> Option<Geometry> {
    let (reach_y, reach_x) = ((g.kh - 1) * g.dh, (g.kw - 1) * g.dw);
    let pad = |reach: usize, p: usize| reach.checked_sub(p);
    let padding = Padding::Explicit { top: pad(reach_y, g.pad_top)?, bottom: pad(reach_y, g.pad_bottom)?, left: pad(reach_x, g.pad_left)?, right: pad(reach_x, g.pad_right)? };
    let g_t = Window::new(g.kh, g.kw).dilations(g.dh, g.dw).padding(padding).geometry(g.oh, g.ow).ok()?;
    (g_t.oh == g.h && g_t.ow == g.w).then_some(g_t)
}

/// Whether [`input_gradient`] applies to a convolution of `c_in` → `c_out` channels: its own
/// convolution (`c_out` → `c_in`, on the output's size) [`suits`] the implicit product.
pub(crate) fn transposed_suits(g: &Geometry, c_in: usize, c_out: usize) -> bool {
    transposed(g).is_some_and(|g_t| suits(&g_t, c_out, c_in))
}

/// Writes `x` (`[c_in, h, w]`) into `padded` as its [`Planes`], with the geometry's zero
/// borders, and zeros after them.
pub(crate) fn pad_into(x: ArrayView3<f32>, g: &Geometry, planes: &Planes, padded: &mut [f32]) {
    padded.fill(0.0);
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    // `Planes::at` without its divisions (a quarter of this function's time on 7x7 images):
    // where each phase of a row starts in its row of phase planes, computed once, and the
    // row's plane and place counted along
    let plane = planes.hq * planes.wq;
    let phases: Vec<usize> = (0..planes.sw.min(g.w)).map(|p| (g.pad_left + p) % planes.sw * plane + (g.pad_left + p) / planes.sw).collect();
    for (ci, x_c) in x.chunks_exact(g.h * g.w).enumerate() {
        let (mut yq, mut yr) = (g.pad_top / planes.sh, g.pad_top % planes.sh);
        for x_row in x_c.chunks_exact(g.w) {
            let row = ci * planes.channel() + yr * planes.sw * plane + yq * planes.wq;
            if planes.sw == 1 {
                // stride 1 (in x): the row is one run
                let start = row + phases[0];
                padded[start..start + g.w].copy_from_slice(x_row);
            } else {
                // every sw-th value of the row is one run in its phase plane
                for (phase, &start) in phases.iter().enumerate() {
                    let run = x_row[phase..].iter().step_by(planes.sw);
                    padded[row + start..].iter_mut().zip(run).for_each(|(p, &v)| *p = v);
                }
            }
            yr += 1;
            if yr == planes.sh {
                (yq, yr) = (yq + 1, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::test_data::filled;

    /// The implicit forward and input gradient against the naive loops, on geometries where
    /// both apply: SAME, VALID (its input gradient pads by the whole reach), asymmetric
    /// padding, dilation, a kernel wider than tall.
    #[test]
    fn forward_and_input_gradient_agree_with_the_naive_loops() {
        let windows = [
            Window::square(3).padding(Padding::Same),
            Window::square(3),
            Window::new(2, 3).padding(Padding::Explicit { top: 1, bottom: 0, left: 2, right: 1 }),
            Window::square(3).dilation(2).padding(Padding::Same),
        ];
        for (case, win) in windows.iter().enumerate() {
            let (x, w) = (filled([3, 5, 9, 11], case), filled([7, 5, win.kh, win.kw], case + 10));
            let g = win.geometry(9, 11).unwrap();
            let y = forward(x.view(), w.view(), Epilogue::bias(None), &g);
            let want = reference::conv2d(x.view(), w.view(), None, win).unwrap();
            assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4), "forward, case {case}");
            let dy = filled([3, 7, g.oh, g.ow], case + 20);
            let dx = input_gradient(dy.view(), w.view(), &g);
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), win).unwrap().dx;
            assert_eq!(dx.dim(), want.dim());
            assert!(dx.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4), "input gradient, case {case}");
        }
    }

    /// Strided forwards read from phase planes, against the naive loops: SAME and VALID with
    /// stride 2 on even and odd sizes, stride 3 with padding 2, different strides down and
    /// across, stride with dilation; and the whole backward of a strided layer (the lowered
    /// one) through `conv2d_backward_with`.
    #[test]
    fn strided_forward_agrees_with_the_naive_loops() {
        let windows = [
            (Window::square(3).stride(2).padding(Padding::Same), 12, 12),
            (Window::square(3).stride(2), 11, 13),
            (Window::square(5).stride(3).padding(Padding::uniform(2)), 14, 10),
            (Window::new(3, 2).strides(2, 1).padding(Padding::Explicit { top: 1, bottom: 0, left: 0, right: 1 }), 9, 8),
            (Window::square(3).strides(1, 3).dilation(2), 13, 14),
            // ResNet-20's first downsampling shape: its phase planes end past the last lowered
            // row read (the filter gradient's padded samples must hold the whole planes)
            (Window::square(3).stride(2).padding(Padding::Same), 28, 28),
        ];
        for (case, (win, h, w_)) in windows.into_iter().enumerate() {
            let (x, w) = (filled([3, 5, h, w_], case), filled([7, 5, win.kh, win.kw], case + 10));
            let b = Array1::from_shape_fn(7, |i| i as f32 - 3.0);
            let g = win.geometry(h, w_).unwrap();
            let y = forward(x.view(), w.view(), Epilogue::bias(Some(b.view())), &g);
            let want = reference::conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
            assert_eq!(y.dim(), want.dim(), "case {case}");
            assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4), "forward, case {case}");
            let dy = filled([3, 7, g.oh, g.ow], case + 20);
            let grads = crate::conv2d_backward_with(crate::Algorithm::Implicit, x.view(), w.view(), dy.view(), &win, 1).unwrap();
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap();
            assert!(grads.dx.iter().zip(&want.dx).all(|(a, b)| (a - b).abs() < 1e-4), "input gradient, case {case}");
            assert!(grads.dw.iter().zip(&want.dw).all(|(a, b)| (a - b).abs() < 1e-3), "filter gradient, case {case}");
        }
    }

    /// Both ways of computing the filter and bias gradients without a lowered matrix (dot
    /// products of rows, a GEMM on channels-last copies) against the naive loops on the same
    /// geometries, strided too, and a batch cut into several tasks giving the same sums, bit
    /// for bit, on 1, 2 and 3 threads. The channel counts leave the kernels' tiles part empty.
    #[test]
    fn filter_gradient_agrees_with_the_naive_loops_at_any_thread_count() {
        let windows = [
            (Window::square(3).padding(Padding::Same), 9, 11),
            (Window::square(3), 9, 11),
            (Window::new(2, 3).padding(Padding::Explicit { top: 1, bottom: 0, left: 2, right: 1 }), 9, 11),
            (Window::square(3).dilation(2).padding(Padding::Same), 9, 11),
            (Window::square(3).stride(2).padding(Padding::Same), 9, 11),
            // 15k values per sample: tasks of 8 samples, three of them for 20 (one sample a
            // task channels-last)
            (Window::square(3).padding(Padding::Same), 60, 60),
        ];
        type Gradient = Box<dyn Fn(ArrayView4<f32>, ArrayView4<f32>, &Geometry) -> (Array4<f32>, Array1<f32>) + Sync>;
        let mut ways: Vec<(String, Gradient)> = vec![("dot products".into(), Box::new(filter_gradient))];
        for kernel in Kernel::available() {
            let name = format!("channels-last on {} ({} x {})", kernel.name(), kernel.mr, kernel.nr);
            ways.push((name, Box::new(move |x, dy, g| filter_gradient_channels_last_on(kernel, x, dy, g))));
        }
        for (name, gradient) in &ways {
            for (case, (win, h, w_)) in windows.iter().enumerate() {
                let (n, c_in, c_out) = if *h == 60 { (20, 2, 2) } else { (3, 21, 9) };
                let (x, w) = (filled([n, c_in, *h, *w_], case), filled([c_out, c_in, win.kh, win.kw], case + 10));
                let g = win.geometry(*h, *w_).unwrap();
                let dy = filled([n, c_out, g.oh, g.ow], case + 20);
                let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), win).unwrap();
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| gradient(x.view(), dy.view(), &g))
                };
                let (dw, db) = run(1);
                assert_eq!(dw.dim(), want.dw.dim());
                let close = |a: f32, b: f32| (a - b).abs() < 1e-4 * (1.0 + b.abs());
                assert!(dw.iter().zip(&want.dw).all(|(&a, &b)| close(a, b)), "{name}: filter gradient, case {case}");
                assert!(db.iter().zip(&want.db).all(|(&a, &b)| close(a, b)), "{name}: bias gradient, case {case}");
                for threads in [2, 3] {
                    assert_eq!(run(threads), (dw.clone(), db.clone()), "{name}: case {case}, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn the_shapes_that_go_implicit() {
        let same = Window::square(3).padding(Padding::Same);
        // ResNet-20's stride-1 layers, all three stages
        for (side, c) in [(28, 16), (14, 32), (7, 64)] {
            assert!(suits(&same.geometry(side, side).unwrap(), c, c), "{side}x{side}x{c}");
        }
        let valid = Window::square(3);
        assert!(suits(&valid.geometry(13, 13).unwrap(), 32, 64), "the reference network's conv2");
        assert!(!suits(&valid.geometry(5, 5).unwrap(), 64, 128), "conv3: 5 outputs computed per 3 kept");
        let avx2 = Kernel::best().name() == "avx2+fma";
        assert_eq!(suits(&valid.geometry(28, 28).unwrap(), 1, 32), avx2, "conv1: a receptive field of 9, AVX2 only");
        assert!(!transposed_suits(&valid.geometry(28, 28).unwrap(), 1, 32), "conv1's input gradient: 1 filter");
        assert!(suits(&same.stride(2).geometry(28, 28).unwrap(), 16, 32), "ResNet-20's stride-2 layers");
        assert!(!suits(&Window::square(1).geometry(28, 28).unwrap(), 64, 64), "1x1");
    }

    #[test]
    fn padding_beyond_the_kernels_reach_has_no_transposed_convolution() {
        let g = Window::square(2).padding(Padding::uniform(2)).geometry(6, 6).unwrap();
        assert!(transposed(&g).is_none());
        assert!(!transposed_suits(&g, 16, 16));
    }
}
