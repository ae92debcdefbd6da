//! Direct convolution, the way oneDNN computes it on CPUs: vectors along the output
//! channels, each output pixel's input values broadcast from where they lie.
//!
//! It is the same matrix product as the lowering's, transposed: `yᵀ = colsᵀ · w_matᵀ`, whose
//! rows are the output pixels and whose columns are the filters. A tile of the product is
//! `MP` output pixels by `NF` filters; for each of the `c_in·kh·kw` steps the micro-kernel
//! loads one row of the packed filters (`NF` values, vectors) and broadcasts, for each of
//! its pixels, the input value that step reads — found, as in [`crate::implicit`], at the
//! pixel's place in the padded sample plus the step's offset:
//!
//! ```text
//! yᵀ[pixel, f] += padded[base(pixel) + offset(ci, ky, kx)] · w[f, (ci, ky, kx)]
//! ```
//!
//! Any set of pixels makes a tile: pixels of the next sample continue the tile, so no
//! column is computed and dropped (the implicit product computes the `wp − ow` wrapped
//! columns of every row, 18% more for a 13x13 VALID layer, 67% at 5x5). The price is
//! turning each tile filter-major before it goes to `[c_out, oh·ow]` (each filter's pixels
//! are a run there) and filters in whole vectors (16 filters fill half an AVX-512 tile).
//!
//! The micro-kernel is chosen at run time: AVX-512 (8 pixels x 32 filters, the tile turned
//! filter-major in registers), AVX2 + FMA (6 x 16) or portable loops (4 x 8).

use crate::conv::{clip, Epilogue};
use crate::gemm::Rows;
use crate::threads::Scratch;
use crate::implicit::{self, lowered_rows, pad_into, Planes};
use crate::window::Geometry;
use ndarray::{Array4, ArrayView4, Axis};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output pixels per task, at least: the filters (`k x 32` values per sliver) are read once
/// per tile from L2, so a task should have a few tiles per sliver.
const TASK_PIXELS: usize = 64;

/// At most this many input pixels per output pixel for the input gradient to be a direct
/// convolution too (of `dy`, padded by the kernel's reach): 1 for SAME, 1.4 for the reference
/// network's conv2 (13x13 → 11x11); its conv3 (5x5 → 3x3, 2.8) spends less by col2im.
const MAX_INPUT_PER_OUTPUT: f64 = 1.5;

/// At most this many filters computed per filter kept: a layer of 16 filters leaves half of
/// each 32-filter vector tile empty (ResNet-20's first stage: 2.3 ms forward against the
/// implicit product's 1.3).
const MAX_FILTER_WASTE: f64 = 1.15;

/// At least this long a receptive field (`c_in·kh·kw`) for a kernel that turns its tiles
/// through memory: with fewer steps per tile, the tile's turn and store cost as much as its
/// products. A kernel that stores [`Straight`] has no minimum: AVX2's beat the lowering and the
/// implicit product from a field of 9 (one channel, 3x3) on 28x28 images (Zen 3, batch 128,
/// forward: 1 → 16 filters 0.54 ms against 0.80 and 0.71, 1 → 32 0.98 against 1.48 and 1.42,
/// 3 → 16 0.83 against 1.36 and 1.05).
const MIN_FIELD: usize = 32;

/// Output planes of a multiple of this many values are not for the direct convolution: a
/// tile's stores, one per filter at the same pixel of each plane, fall a multiple of 2 KiB
/// apart, so that half or all of them share one set of the 8-way L1 cache and evict each
/// other. ResNet on CIFAR's 32x32 stem (3 → 16, batch 128, Zen 3): 1.51 ms against the
/// implicit product's 1.30, where 31x31 and 33x33 took 1.03 and 1.17 (the implicit product
/// 1.36 and 1.46).
const ALIASED_PLANE: usize = 512;

/// Whether [`forward`] is the algorithm for a convolution of this geometry, `c_in` → `c_out`
/// channels: a field and filters that fill its tiles, a padded sample that stays in cache
/// (as for the implicit product), and a vector kernel: AVX-512 (32 filters a tile) or AVX2 +
/// FMA (16). On an AVX2 AMD EPYC (Zen 3) the AVX2 kernel beat the implicit product in all
/// three stages of ResNet-20 (`layer_times`, three alternate rounds: a step 251.7 → 230.9 ms
/// median, stage 3 forward 24.4 → 20.4) and on the reference network's conv2 and conv3
/// (forward 2.4–3.1 → 2.0–2.1 and 0.99–1.10 → 0.61–0.67 ms at batch 64); the portable one
/// was never measured faster.
pub(crate) fn suits(g: &Geometry, c_in: usize, c_out: usize) -> bool {
    let kernel = Broadcasts::best();
    kernel.name != Broadcasts::PORTABLE.name
        && (kernel.straight.is_some() || c_in * g.kh * g.kw >= MIN_FIELD)
        && fills(&kernel, c_out)
        && !(g.oh * g.ow).is_multiple_of(ALIASED_PLANE)
        && implicit::padded_values(g, c_in) <= implicit::MAX_PADDED
}

/// Whether `filters` fill the kernel's tiles, but for [`MAX_FILTER_WASTE`].
fn fills(kernel: &Broadcasts, filters: usize) -> bool {
    filters.next_multiple_of(kernel.nf) as f64 <= MAX_FILTER_WASTE * filters as f64
}

/// Whether the input gradient of a layer computed by [`forward`] is a direct convolution too:
/// stride 1, an input not much larger than the output, and input channels that fill the tiles
/// (they are its filters: the stem of ResNet-20, one channel, would compute 16 for 1 and took
/// 3.5 ms against the lowering's 1.4); else the caller uses the lowering's backward.
pub(crate) fn suits_transposed(g: &Geometry, c_in: usize) -> bool {
    (g.sh, g.sw) == (1, 1) && (g.h * g.w) as f64 <= MAX_INPUT_PER_OUTPUT * g.positions() as f64 && fills(&Broadcasts::best(), c_in)
}

/// `y = w ⊛ x + b`, one group (shapes checked by the caller).
pub(crate) fn forward(x: ArrayView4<f32>, w: ArrayView4<f32>, out: Epilogue, g: &Geometry) -> Array4<f32> {
    forward_on(Broadcasts::best(), x, w, out, g)
}

/// [`forward`] on the given micro-kernel (the tests run every one the CPU has).
fn forward_on(kernel: Broadcasts, x: ArrayView4<f32>, w: ArrayView4<f32>, out: Epilogue, g: &Geometry) -> Array4<f32> {
    let (n, c_in, _, _) = x.dim();
    let (c_out, k) = (w.dim().0, c_in * g.kh * g.kw);
    let planes = Planes::of(g);
    let offsets = Rows::new(lowered_rows(g, c_in, &planes));
    let w_mat = w.to_shape((c_out, k)).expect("filters reshape to [c_out, c_in*kh*kw]");
    let mut filters = vec![];
    crate::gemm::pack(&mut filters, &w_mat.view(), (0, 0), false, c_out, kernel.nf, k);
    let sample_len = c_in * planes.channel();
    let pixels = g.oh * g.ow;
    // the bias of every filter, and zeros to fill the last sliver
    let biases: Vec<f32> = (0..c_out.next_multiple_of(kernel.nf)).map(|f| if f < c_out { out.bias_of(f) } else { 0.0 }).collect();
    // where each output pixel of a sample reads (its top-left tap) in the padded sample
    let bases: Vec<usize> = (0..g.oh).flat_map(|oy| (0..g.ow).map(move |ox| oy * planes.wq + ox)).collect();
    let task = TASK_PIXELS.div_ceil(pixels.max(1)).clamp(1, n.max(1));
    // every value is written below, once: no zeroing first
    let mut y = Array4::<f32>::uninit((n, c_out, g.oh, g.ow));
    let tasks = y.axis_chunks_iter_mut(Axis(0), task).into_par_iter().zip(x.axis_chunks_iter(Axis(0), task));
    let scratch = || (Scratch::matrix(task, sample_len), vec![0.0f32; kernel.mp * kernel.nf], Vec::new());
    tasks.for_each_init(scratch, |(padded, tile, reads), (mut y_t, x_t)| {
        let samples = x_t.dim().0;
        let mut padded = padded.view_mut();
        for (x_i, mut p) in x_t.outer_iter().zip(padded.outer_iter_mut()) {
            pad_into(x_i, g, &planes, p.as_slice_mut().expect("a scratch row is contiguous"));
        }
        let padded = &padded.as_slice().expect("scratch is contiguous")[..samples * sample_len];
        let y_t = y_t.as_slice_mut().expect("y is standard layout");
        let total = samples * pixels;
        // where each pixel of the task reads, once for every sliver of filters (no division
        // per pixel and tile: they were a third of this loop's time outside the kernel), the
        // last one repeated to fill the last tile
        reads.clear();
        reads.extend((0..samples).flat_map(|s| bases.iter().map(move |&base| s * sample_len + base)));
        reads.resize(total.next_multiple_of(kernel.mp), reads.last().copied().unwrap_or(0));
        for (s, sliver) in filters.chunks_exact(kernel.nf * k).enumerate() {
            let f0 = s * kernel.nf;
            let filters = kernel.nf.min(c_out - f0);
            for t0 in (0..total).step_by(kernel.mp) {
                // a tile inside one run of a plane, with a register's room after it, may go
                // straight to y (the values past the tile's are written by later tiles)
                let (s0, p0) = (t0 / pixels, t0 % pixels);
                let straight = kernel.straight.filter(|room| p0 + room <= pixels).map(|_| Straight {
                    y: &mut y_t[(s0 * c_out + f0) * pixels + p0..],
                    plane: pixels,
                    bias: &biases[f0..f0 + kernel.nf],
                    floor: out.floor,
                    filters,
                });
                if kernel.run(k, padded, &reads[t0..t0 + kernel.mp], &offsets, sliver, tile, straight) {
                    continue;
                }
                // the tile's pixels are one run of a sample's output, or two where it crosses
                // into the next sample: each filter's values of a run are consecutive in y
                let mut i = 0;
                while i < kernel.mp.min(total - t0) {
                    let (s0, p0) = ((t0 + i) / pixels, (t0 + i) % pixels);
                    let len = (pixels - p0).min(kernel.mp - i);
                    let y_s = &mut y_t[s0 * c_out * pixels + p0..];
                    for (j, run) in tile.chunks_exact(kernel.mp).enumerate().take(filters) {
                        let (bias, floor) = (out.bias_of(f0 + j), out.floor);
                        let dst = &mut y_s[(f0 + j) * pixels..][..len];
                        dst.iter_mut().zip(&run[i..]).for_each(|(y, &v)| {
                            y.write(clip(v + bias, floor));
                        });
                    }
                    i += len;
                }
            }
        }
    });
    // SAFETY: the tiles cover every pixel of every sample (t0 runs over all of them) for every
    // block of filters (the packed slivers cover c_out), and each tile wrote all of its values
    unsafe { y.assume_init() }
}

/// `(x, at, offsets, w, tile, straight)`: see [`Broadcasts::run`].
type TileFn = fn(&[f32], &[usize], &[usize], &[f32], &mut [f32], Option<Straight>) -> bool;

/// Where a tile can go straight, with the epilogue applied: filter `j`'s values to
/// `y[j·plane ..]`, plus `bias[j]`, clipped at `floor`, for the first `filters` filters; `y`
/// has room for a whole register of pixels at each.
pub(crate) struct Straight<'a> {
    y: &'a mut [MaybeUninit<f32>],
    plane: usize,
    bias: &'a [f32],
    floor: f32,
    filters: usize,
}

/// A micro-kernel of the direct convolution: the `mp x nf` tile
/// `Σ_p x[at[i] + offsets[p]] · w[p·nf + j]` (pixels `i`, filters `j`).
#[derive(Clone, Copy)]
pub(crate) struct Broadcasts {
    name: &'static str,
    mp: usize,
    nf: usize,
    /// The pixels of a whole register, if the kernel stores tiles [`Straight`] into the output
    /// where a plane has that much room after them (AVX2's 6-pixel tiles as 8-lane stores).
    straight: Option<usize>,
    tile: TileFn,
}

impl Broadcasts {
    const PORTABLE: Broadcasts = Broadcasts { name: "portable", mp: 4, nf: 8, straight: None, tile: portable };
    #[cfg(target_arch = "x86_64")]
    const AVX2: Broadcasts = Broadcasts { name: "avx2+fma", mp: 6, nf: 16, straight: Some(8), tile: avx2 };
    #[cfg(target_arch = "x86_64")]
    const AVX512: Broadcasts = Broadcasts { name: "avx512", mp: 8, nf: 32, straight: None, tile: avx512 };

    /// The kernels this CPU runs, widest first (its features checked at run time).
    fn available() -> Vec<Broadcasts> {
        let mut kernels = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                kernels.push(Broadcasts::AVX512);
            }
            if has!("avx2") && has!("fma") {
                kernels.push(Broadcasts::AVX2);
            }
        }
        kernels.push(Broadcasts::PORTABLE);
        kernels
    }

    fn best() -> Broadcasts {
        static BEST: std::sync::OnceLock<Broadcasts> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Broadcasts::available()[0])
    }

    /// Stores the tile [`Straight`] into the output where given one and the kernel does that
    /// (returns true), else writes it filter-major, as computed: `tile[j·mp + i]` for filter
    /// `j`, pixel `i` (returns false).
    ///
    /// # Panics
    /// If the operands do not have the kernel's shape, a pixel's reads end outside `x`, or a
    /// straight store would end outside its `y`.
    #[allow(clippy::too_many_arguments)]
    fn run(&self, k: usize, x: &[f32], at: &[usize], rows: &Rows, w: &[f32], tile: &mut [f32], straight: Option<Straight>) -> bool {
        let (offsets, reach) = rows.parts();
        assert!(at.len() == self.mp && offsets.len() == k && w.len() >= k * self.nf && tile.len() == self.mp * self.nf);
        assert!(at.iter().all(|&a| a + reach < x.len()), "a pixel's input is outside the padded samples");
        let straight = straight.filter(|_| self.straight.is_some());
        if let (Some(out), Some(room)) = (&straight, self.straight) {
            assert!(out.bias.len() == self.nf && (1..=self.nf).contains(&out.filters), "a straight store's bias and filters");
            assert!((out.filters - 1) * out.plane + room <= out.y.len() && room <= out.plane, "a straight store outside y");
        }
        (self.tile)(x, at, offsets, w, tile, straight)
    }
}

/// Plain loops over a 4 x 8 tile (any CPU).
fn portable(x: &[f32], at: &[usize], offsets: &[usize], w: &[f32], tile: &mut [f32], _: Option<Straight>) -> bool {
    const MP: usize = 4;
    const NF: usize = 8;
    let mut acc = [[0.0f32; NF]; MP];
    for (w, &o) in w.chunks_exact(NF).zip(offsets) {
        for i in 0..MP {
            let v = x[at[i] + o];
            for j in 0..NF {
                acc[i][j] += v * w[j];
            }
        }
    }
    for (j, run) in tile.chunks_exact_mut(MP).enumerate() {
        run.iter_mut().enumerate().for_each(|(i, t)| *t = acc[i][j]);
    }
    false
}

#[cfg(target_arch = "x86_64")]
fn avx512(x: &[f32], at: &[usize], offsets: &[usize], w: &[f32], tile: &mut [f32], _: Option<Straight>) -> bool {
    // SAFETY: chosen only where the CPU has AVX-512F; `run` checked every read inside `x`.
    unsafe { direct_avx512(x, at, offsets, w, tile) };
    false
}

#[cfg(target_arch = "x86_64")]
fn avx2(x: &[f32], at: &[usize], offsets: &[usize], w: &[f32], tile: &mut [f32], straight: Option<Straight>) -> bool {
    // SAFETY: chosen only where the CPU has AVX2 and FMA; `run` checked every read inside `x`
    // and a straight store's room in its `y`.
    unsafe { direct_avx2(x, at, offsets, w, tile, straight) }
}

/// AVX2 + FMA: 6 pixels x 16 filters in 12 ymm registers. Straight into the output: the bias
/// added and the floor applied in registers, each half turned filter-major by an 8x8
/// transpose (two rows of zeros), each filter's 6 pixels stored as one 8-lane register (its
/// last two lanes land on pixels a later tile writes); else turned through memory into the
/// tile.
///
/// # Safety
/// `x[at[i] + offsets[p]]` must lie inside `x` for every pixel and step; a straight store's
/// `y` must hold `(filters − 1)·plane + 8` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_avx2(x: &[f32], at: &[usize], offsets: &[usize], w: &[f32], tile: &mut [f32], straight: Option<Straight>) -> bool {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    // SAFETY (every read): the caller's promise, each pixel's reads inside `x`.
    let px: [*const f32; 6] = std::array::from_fn(|i| unsafe { x.as_ptr().add(at[i]) });
    for (w, &o) in w.chunks_exact(16).zip(offsets) {
        let (w0, w1) = unsafe { (_mm256_loadu_ps(w.as_ptr()), _mm256_loadu_ps(w.as_ptr().add(8))) };
        for i in 0..6 {
            let v = _mm256_set1_ps(unsafe { *px[i].add(o) });
            acc[i][0] = _mm256_fmadd_ps(v, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(v, w1, acc[i][1]);
        }
    }
    if let Some(out) = straight {
        let floor = _mm256_set1_ps(out.floor);
        for (h, bias) in out.bias.chunks_exact(8).enumerate() {
            // SAFETY: a chunk holds 8 values.
            let bias = unsafe { _mm256_loadu_ps(bias.as_ptr()) };
            let r: [__m256; 8] = std::array::from_fn(|i| if i < 6 { _mm256_max_ps(floor, _mm256_add_ps(acc[i][h], bias)) } else { _mm256_setzero_ps() });
            // pairs of pixels, fours within 128-bit halves, then the halves: column j is filter 8h + j
            let t: [__m256; 8] = std::array::from_fn(|m| if m % 2 == 0 { _mm256_unpacklo_ps(r[m], r[m + 1]) } else { _mm256_unpackhi_ps(r[m - 1], r[m]) });
            let u: [__m256; 8] = std::array::from_fn(|m| {
                let (a, b) = (t[4 * (m / 4) + (m % 4) / 2], t[4 * (m / 4) + (m % 4) / 2 + 2]);
                if m % 2 == 0 { _mm256_shuffle_ps::<0x44>(a, b) } else { _mm256_shuffle_ps::<0xEE>(a, b) }
            });
            for j in 0..8 {
                let f = 8 * h + j;
                if f < out.filters {
                    let column = if j < 4 { _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]) } else { _mm256_permute2f128_ps::<0x31>(u[j - 4], u[j]) };
                    // SAFETY: the caller's promise, room for 8 values at f·plane.
                    unsafe { _mm256_storeu_ps(out.y.as_mut_ptr().add(f * out.plane).cast(), column) };
                }
            }
        }
        return true;
    }
    let mut rows = [[0.0f32; 16]; 6];
    for (row, acc) in rows.iter_mut().zip(acc) {
        // SAFETY: a row holds 16 values.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[1]);
        }
    }
    for (j, run) in tile.chunks_exact_mut(6).enumerate() {
        run.iter_mut().zip(&rows).for_each(|(t, row)| *t = row[j]);
    }
    false
}

/// AVX-512: 8 pixels x 32 filters in 16 zmm registers; each step loads a row of the packed
/// filters (two registers) and broadcasts the 8 pixels' input values, 16 fused multiply-adds.
///
/// # Safety
/// `x[at[i] + offsets[p]]` must lie inside `x` for every pixel and step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn direct_avx512(x: &[f32], at: &[usize], offsets: &[usize], w: &[f32], tile: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    // SAFETY (every read): the caller's promise, each pixel's reads inside `x`.
    let px: [*const f32; 8] = std::array::from_fn(|i| unsafe { x.as_ptr().add(at[i]) });
    for (w, &o) in w.chunks_exact(32).zip(offsets) {
        let (w0, w1) = unsafe { (_mm512_loadu_ps(w.as_ptr()), _mm512_loadu_ps(w.as_ptr().add(16))) };
        for i in 0..8 {
            let v = _mm512_set1_ps(unsafe { *px[i].add(o) });
            acc[i][0] = _mm512_fmadd_ps(v, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(v, w1, acc[i][1]);
        }
    }
    // the tile turned filter-major (tile[f·8 + pixel]) in registers, 16 filters at a time
    for h in 0..2 {
        let r: [__m512; 8] = acc.map(|pair| pair[h]);
        // per 128-bit lane (filters 4L..4L+4): pairs of pixels, then fours
        let t: [__m512; 8] = std::array::from_fn(|m| {
            let (a, b) = (r[m / 2 * 2], r[m / 2 * 2 + 1]);
            if m.is_multiple_of(2) { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
        });
        // u[q] / v[q]: in lane L, pixels 0..4 / 4..8 of filter 4L + q
        let four = |lo: __m512, hi: __m512, q: usize| if q.is_multiple_of(2) { _mm512_shuffle_ps::<0x44>(lo, hi) } else { _mm512_shuffle_ps::<0xEE>(lo, hi) };
        let u: [__m512; 4] = std::array::from_fn(|q| four(t[q / 2], t[2 + q / 2], q));
        let v: [__m512; 4] = std::array::from_fn(|q| four(t[4 + q / 2], t[6 + q / 2], q));
        let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        for q in 0..4 {
            // filters q and 4 + q (first), 8 + q and 12 + q (second): 8 pixels each
            for (pair, idx) in [first, second].into_iter().enumerate() {
                let both = _mm512_permutex2var_ps(u[q], idx, v[q]);
                let f = 16 * h + 8 * pair + q;
                // SAFETY: the tile holds 32 x 8 values; filters f and f + 4 are inside it.
                unsafe {
                    _mm256_storeu_ps(tile.as_mut_ptr().add(f * 8), _mm512_castps512_ps256(both));
                    _mm256_storeu_ps(tile.as_mut_ptr().add((f + 4) * 8), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(both))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::test_data::filled;
    use crate::window::{Padding, Window};
    use ndarray::Array1;

    /// Every kernel the CPU runs against the naive loops: tiles that straddle samples and end
    /// part empty, filters that leave the last sliver part empty, SAME, VALID, strided,
    /// asymmetric padding, dilation, a kernel wider than tall.
    #[test]
    fn forward_agrees_with_the_naive_loops_on_every_kernel() {
        let cases = [
            (Window::square(3).padding(Padding::Same), 9, 11, 5, 7),
            (Window::square(3), 13, 13, 32, 64),
            (Window::square(3), 5, 5, 6, 40),
            // 2x2 outputs: a tile of 6 or 8 pixels spans three or four samples
            (Window::square(3), 4, 4, 5, 9),
            (Window::square(3).stride(2).padding(Padding::Same), 12, 12, 3, 33),
            (Window::new(2, 3).padding(Padding::Explicit { top: 1, bottom: 0, left: 2, right: 1 }), 9, 8, 5, 7),
            (Window::square(3).dilation(2).padding(Padding::Same), 9, 11, 5, 7),
        ];
        for kernel in Broadcasts::available() {
            for (case, (win, h, w_, c_in, c_out)) in cases.into_iter().enumerate() {
                let (x, w) = (filled([5, c_in, h, w_], case), filled([c_out, c_in, win.kh, win.kw], case + 10));
                let b = Array1::from_shape_fn(c_out, |i| i as f32 - 3.0);
                let g = win.geometry(h, w_).unwrap();
                let y = forward_on(kernel, x.view(), w.view(), Epilogue::bias(Some(b.view())), &g);
                let want = reference::conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
                assert_eq!(y.dim(), want.dim(), "case {case}");
                let close = y.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
                assert!(close, "{} kernel, case {case}", kernel.name);
            }
        }
    }

    /// The backward of a layer the direct convolution computes, on each of its paths: the
    /// input gradient as a direct convolution (SAME, and VALID 13x13; 32 input channels fill
    /// its tiles) with the filter gradient by dot products (64+ positions) or, for fewer, the
    /// channels-last GEMM (AVX2) or the lowering, and by col2im (VALID 5x5 → 3x3, strided; and
    /// 1 input channel, SAME);
    /// bit-identical on 1, 2 and 3 threads.
    #[test]
    fn backward_agrees_with_the_naive_loops_at_any_thread_count() {
        let cases = [
            (Window::square(3).padding(Padding::Same), 9, 32),
            (Window::square(3).padding(Padding::Same), 6, 32),
            (Window::square(3), 13, 32),
            (Window::square(3), 5, 32),
            (Window::square(3).stride(2).padding(Padding::Same), 10, 32),
            (Window::square(3).padding(Padding::Same), 9, 1),
        ];
        for (case, (win, side, c_in)) in cases.into_iter().enumerate() {
            let (x, w) = (filled([5, c_in, side, side], case), filled([33, c_in, 3, 3], case + 10));
            let g = win.geometry(side, side).unwrap();
            let dy = filled([5, 33, g.oh, g.ow], case + 20);
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| crate::conv2d_backward_with(crate::Algorithm::Direct, x.view(), w.view(), dy.view(), &win, 1).unwrap())
            };
            let grads = run(1);
            let close = |a: &Array4<f32>, b: &Array4<f32>| a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
            assert!(close(&grads.dx, &want.dx) && close(&grads.dw, &want.dw), "case {case}");
            assert!(grads.db.iter().zip(&want.db).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())), "case {case}");
            for threads in [2, 3] {
                let again = run(threads);
                assert!(again.dx == grads.dx && again.dw == grads.dw && again.db == grads.db, "case {case}, {threads} threads");
            }
        }
    }

    #[test]
    fn the_shapes_that_go_direct() {
        let same = Window::square(3).padding(Padding::Same);
        let kernel = Broadcasts::best();
        let vector = kernel.name != Broadcasts::PORTABLE.name;
        for (side, c) in [(14, 32), (7, 64)] {
            assert_eq!(suits(&same.geometry(side, side).unwrap(), c, c), vector, "ResNet-20 {side}x{side}x{c}");
        }
        assert_eq!(suits(&Window::square(3).geometry(5, 5).unwrap(), 64, 128), vector, "the reference network's conv3");
        // 16 filters fill AVX2's tiles, half of AVX-512's
        assert_eq!(suits(&same.geometry(28, 28).unwrap(), 16, 16), vector && kernel.nf == 16, "16 filters");
        assert!(!suits(&same.geometry(28, 28).unwrap(), 16, 12), "12 filters: three quarters of a tile at most");
        // 32x32 planes: a tile's stores 4 KiB apart
        assert!(!suits(&same.geometry(32, 32).unwrap(), 16, 16), "32x32");
        assert_eq!(suits(&same.geometry(33, 33).unwrap(), 16, 16), vector && kernel.nf == 16, "33x33");
        // a field of 9: only for a kernel that stores straight into the output
        assert_eq!(suits(&Window::square(3).geometry(28, 28).unwrap(), 1, 32), vector && kernel.straight.is_some(), "a field of 9");
        assert!(suits_transposed(&Window::square(3).geometry(13, 13).unwrap(), 32), "13x13 -> 11x11");
        assert!(!suits_transposed(&Window::square(3).geometry(13, 13).unwrap(), 1), "one input channel");
        assert!(!suits_transposed(&Window::square(3).geometry(5, 5).unwrap(), 32), "5x5 -> 3x3");
        assert!(!suits_transposed(&same.stride(2).geometry(8, 8).unwrap(), 32), "strided");
    }
}
