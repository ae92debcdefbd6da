//! Winograd's minimal filtering F(2x2, 3x3): a 3x3, stride-1 convolution with 16
//! multiplications per 2x2 block of outputs and input channel, where the direct product (or
//! im2col's) spends 36 — 2.25x fewer.
//!
//! In one dimension, two outputs of a 3-tap filter `g` over four inputs `d` are
//!
//! ```text
//! y = Aᵀ [ (G g) ⊙ (Bᵀ d) ]        Bᵀ = | 1  0 -1  0 |    G = | 1    0    0  |    Aᵀ = | 1  1  1  0 |
//!                                      | 0  1  1  0 |        | ½    ½    ½  |         | 0  1 -1 -1 |
//!                                      | 0 -1  1  0 |        | ½   -½    ½  |
//!                                      | 0  1  0 -1 |        | 0    0    1  |
//! ```
//!
//! four multiplications instead of six. Nested in two dimensions, a 2x2 block of outputs reads a
//! 4x4 tile `d` of the input: `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`, 16 products instead of 36.
//! Summed over input channels, the 16 elementwise products become 16 matrix products — the
//! algorithm is still *a convolution as matrix products*, only on transformed operands:
//!
//! ```text
//! U[ξ] = (G g Gᵀ)[ξ]          [c_out, c_in]   the filters, transformed once per call
//! V[ξ] = (Bᵀ d B)[ξ]          [c_in, tiles]   every 4x4 input tile, transformed
//! M[ξ] = U[ξ] · V[ξ]          [c_out, tiles]  16 products on the micro-kernel of `gemm`
//! Y    = Aᵀ M A               each tile's 2x2 outputs (plus the bias)
//! ```
//!
//! The transforms are additions only (the ½ of `G` is exact). They are written along whole
//! rows of tiles, so each is a few vector operations: each padded sample is stored with its
//! even and odd columns apart (tile `tx` starts at column `2·tx`, so its four columns are
//! even `tx`, odd `tx`, even `tx+1`, odd `tx+1`), and every transformed value of a row of
//! tiles is one contiguous run in `V`.
//!
//! The price: the transforms' memory traffic (`V` holds 4x the input), and values rounded in
//! a different order than the direct sums (errors a few times larger, still f32 rounding:
//! the agreement tests hold it to the same tolerance as the other algorithms).
//!
//! **F(4x4, 3x3)** (`Algorithm::Winograd4`, Lavin and Gray's points 0, ±1, ±2) is the same
//! algorithm on 6x6 tiles: 36 products per 4x4 outputs where the direct product spends 144,
//! `V` and `M` 2.25x the input and the output instead of 4x. Both tiles come from one set of
//! loops ([`Tile`]: each tile's matrices, and `Bᵀ` and `Aᵀ` written out term by term); the
//! phase planes are four a side (column `x` of the padded sample at plane `x % 4`, column
//! `x / 4`), split and interleaved by [`Phases`]. On 28x28 the tiles fit exactly; on 14x14 and
//! 7x7, 16x16 and 8x8 outputs are computed for 196 and 49 (the larger tile pays where the
//! image is large, or the channels many).
//!
//! Small images go **side by side** ([`Grid`]): seven 7x7 samples share each row of F(4x4)
//! tiles, each sample's right padding the next one's left, so the transforms' lanes are full
//! and a row of tiles drops one column instead of one per sample.
//!
//! Three things the speed hangs on, found by measurement: the transforms run on AVX-512 or
//! AVX2 registers through intrinsics ([`Vector`]; arrays of 16 values were cut into halves and
//! shuffled by the compiler), rows are split and interleaved by permutes ([`Phases`]; on
//! AVX2 with whole-register stores wherever the buffers have room for them — each phase-plane
//! row written with the zeros after it, output rows spilling onto the rows written next —
//! masked stores being slow on Zen 3), and the
//! `A²` products of `V` and `M` are not a whole number of
//! 4 KiB apart ([`v_len`]: the transforms touch all of them per tile, and in one L1 set they
//! evicted each other — F(4x4)'s input transform took 4x longer).
//!
//! The input gradient of a 3x3 stride-1 convolution is itself a 3x3 stride-1 convolution
//! (`dy` with the filters turned, [`crate::implicit::transposed_operands`]), so it runs here
//! too. So does the **filter gradient**, with the tiles read backwards ([`filter_gradient`]:
//! `dw = Gᵀ [Σ_tiles (Bᵀ d B) ⊙ (A dY Aᵀ)] G`, the sum along the tiles as matrix products
//! on the same micro-kernel): all three passes of a Winograd layer multiply 2.25–4x less.
//!
//! **Chosen by `conv2d`** ([`suits`]): F(4x4) for ResNet-20's first stage (16 channels at
//! 28x28), with AVX2 its third too (64 channels at 7x7, in strips: [`MAX_WASTE_WIDE`]), and
//! F(2x2) for its second (32 channels at 14x14) on AVX-512 and AVX2 (on AVX2,
//! F(2x2) for stage 2 won once the split and interleave stored whole registers: a step
//! 206.5 → 201.4 ms, three alternate rounds); on AVX2 F(4x4) for any number of filters
//! (32 → 64 at 28x28: 15.1 ms against the direct convolution's 23.6). Measured
//! side by side on the AVX-512 Zen 5 (`cargo
//! bench --bench conv`, 2 threads, medians, one run, batch 128), forward / forward + backward
//! in ms: stage 1 implicit 1.18 / 3.71, F(2x2) 1.14 / 3.68, F(4x4) 0.95 / 3.24; stage 2
//! (32 channels, 14x14) direct 1.10 / 3.51, F(2x2) 0.99 / 3.33, F(4x4) 1.27 / 3.94; stage 3
//! (64 channels, 7x7) direct 1.05 / 4.08, F(2x2) 1.40 / 4.61, F(4x4) 1.80 / 5.56. On small
//! images the tiles cut by the edges cost more than the multiplications saved, and with 16–64
//! channels the transforms' work (proportional to `c_in + c_out` per tile) is not small
//! beside the products' (`c_in·c_out`).

use crate::conv::{clip, filter_gradient_tasks, Epilogue};
use crate::gemm::{Kernel, Rows};
use crate::threads::{Scratch, ZeroBordered};
use crate::vector;
use crate::window::Geometry;
use ndarray::{Array1, Array2, Array4, ArrayView4, ArrayViewMut4, Axis};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Values of `V` and `M` per task (transformed tiles times `A²·(c_in + c_out)`): a task's
/// 512 KiB should stay in L2 between the transforms and the products.
const TASK_VALUES: usize = 1 << 17;

/// A Winograd tile F(m x m, 3 x 3): `M x M` outputs from an `A x A` tile of the input
/// (`A = M + 2`), by the transforms `Bᵀ` (`A x A`), `G` (`A x 3`) and `Aᵀ` (`M x A`). The
/// matrices are the definition (and the tests' reference); `bt` and `at` apply `Bᵀ` and `Aᵀ`
/// to one column of [`LANES`] tiles, written out term by term, so that a coefficient of 0
/// costs nothing and common sums are shared.
trait Tile<const M: usize, const A: usize> {
    #[allow(dead_code, reason = "the definition, and the tests' reference for `bt`")]
    const BT: [[f32; A]; A];
    const G: [[f32; 3]; A];
    #[allow(dead_code, reason = "the definition, and the tests' reference for `at`")]
    const AT: [[f32; A]; M];
    /// `Bᵀ d`.
    fn bt<V: Vector>(d: [V; A]) -> [V; A];
    /// `Aᵀ m`.
    fn at<V: Vector>(m: [V; A]) -> [V; M];
    /// `A y`: the adjoint of [`Tile::at`], for the filter gradient.
    fn a<V: Vector>(y: [V; M]) -> [V; A];
}

/// F(2x2, 3x3): the module's example.
struct F2;

impl Tile<2, 4> for F2 {
    const BT: [[f32; 4]; 4] = [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]];
    const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
    const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

    #[inline(always)]
    fn bt<V: Vector>([d0, d1, d2, d3]: [V; 4]) -> [V; 4] {
        [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)]
    }

    #[inline(always)]
    fn at<V: Vector>([m0, m1, m2, m3]: [V; 4]) -> [V; 2] {
        [add(add(m0, m1), m2), sub(sub(m1, m2), m3)]
    }

    #[inline(always)]
    fn a<V: Vector>([y0, y1]: [V; 2]) -> [V; 4] {
        [y0, add(y0, y1), sub(y0, y1), sub(V::zero(), y1)]
    }
}

/// F(4x4, 3x3) on the points 0, ±1, ±2 (Lavin and Gray, 2016): 36 multiplications per 4x4
/// block of outputs and input channel where the direct product spends 144 — 4x fewer; the
/// transforms multiply by up to 8 and 1/24, so the values are rounded a little more.
struct F4;

impl Tile<4, 6> for F4 {
    const BT: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const G: [[f32; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    const AT: [[f32; 6]; 4] = [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, 2.0, -2.0, 0.0], [0.0, 1.0, 1.0, 4.0, 4.0, 0.0], [0.0, 1.0, -1.0, 8.0, -8.0, 1.0]];

    #[inline(always)]
    fn bt<V: Vector>([d0, d1, d2, d3, d4, d5]: [V; 6]) -> [V; 6] {
        // rows 1 and 2 share d4 − 4·d2 and d3 − 4·d1; rows 3 and 4 share d4 − d2 and d3 − d1
        let (a, b) = (mul_add(d2, -4.0, d4), mul_add(d1, -4.0, d3));
        let (c, d) = (sub(d4, d2), sub(d3, d1));
        [mul_add(d2, -5.0, mul_add(d0, 4.0, d4)), add(a, b), sub(a, b), mul_add(d, 2.0, c), mul_add(d, -2.0, c), mul_add(d3, -5.0, mul_add(d1, 4.0, d5))]
    }

    #[inline(always)]
    fn at<V: Vector>([m0, m1, m2, m3, m4, m5]: [V; 6]) -> [V; 4] {
        let (sum12, sum34, diff12, diff34) = (add(m1, m2), add(m3, m4), sub(m1, m2), sub(m3, m4));
        [add(add(m0, sum12), sum34), mul_add(diff34, 2.0, diff12), mul_add(sum34, 4.0, sum12), add(mul_add(diff34, 8.0, diff12), m5)]
    }

    #[inline(always)]
    fn a<V: Vector>([y0, y1, y2, y3]: [V; 4]) -> [V; 6] {
        // rows 1 and 2 share y0 + y2 and y1 + y3; rows 3 and 4 share y0 + 4·y2 and 2·y1 + 8·y3
        let (even, odd) = (add(y0, y2), add(y1, y3));
        let (even4, odd8) = (mul_add(y2, 4.0, y0), mul_add(mul_add(y3, 4.0, y1), 2.0, V::zero()));
        [y0, add(even, odd), sub(even, odd), add(even4, odd8), sub(even4, odd8), y3]
    }
}

/// Whether the shape is one Winograd's F(2x2, 3x3) computes: a 3x3 kernel, stride 1, no
/// dilation, padding within the kernel's reach (2) on every side, so that its input gradient
/// is one too.
pub(crate) fn applies(g: &Geometry) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1) && [g.pad_top, g.pad_bottom, g.pad_left, g.pad_right].iter().all(|&p| p <= 2)
}

/// At most this many outputs computed per output wanted (whole tiles and one dropped tile per
/// row of tiles): F(4x4) 1.14 on 28x28 but 1.63 on 14x14, where it was slower than the
/// direct convolution and F(2x2) (1.14 there); F(2x2) 1.63 on 7x7, where it was slower. At
/// 1.25 both lost (AVX2, batch 128, medians of 21, forward against the direct convolution):
/// F(4x4) on 16x16 with 16 channels 1.46–1.51 ms against 1.17–1.20, F(2x2) on 8x8 with 64
/// channels 4.02–4.05 against 3.64–3.66 and with 32 1.34–1.35 against 1.02–1.05; at 1.2
/// (F(4x4) on 20x20) level: 1.79–1.94 against 1.84–1.90.
const MAX_WASTE: f64 = 1.2;

/// With at least [`WIDE_CHANNELS`] input and output channels, F(4x4) up to this many outputs
/// computed per output wanted where neither tile fits [`MAX_WASTE`]: the products' work
/// (`c_in·c_out` per tile) is then large beside the transforms' (`c_in + c_out`). 7x7 in
/// strips of seven samples computes 1.40 (AVX2, batch 128, forward, ms): 64 → 64 F(4x4) 2.39–2.43
/// against the direct convolution's 2.75–2.80 (F(2x2) 2.74–2.84), 128 → 128 8.25 against
/// 10.46; with 32 channels 0.89 against 0.76; 8x8 (1.5: no strips, the samples share no
/// column) 5.77 against 3.63.
const MAX_WASTE_WIDE: f64 = 1.45;

/// See [`MAX_WASTE_WIDE`].
const WIDE_CHANNELS: usize = 64;

/// At least this many input and output channels for F(4x4): the products' `K` and rows
/// (fewer leave the micro-kernel mostly storing tiles, as for the implicit product).
const MIN_CHANNELS: usize = 8;

/// At least this many input and output channels for F(2x2), whose transforms are more per
/// product: with AVX2 (batch 128, forward against the direct convolution, ms) 16 → 16 at
/// 14x14 took 2.15 against 1.81, 24 → 24 1.91 against 2.27, 48 → 48 5.41 against 6.38.
const MIN_CHANNELS_F2: usize = 24;

/// With AVX-512, F(4x4) for fewer filters than this and F(2x2) for at most this many: the
/// direct convolution's tiles (32 filters) are full from there on, and the tiles were
/// measured against them only that far (F(4x4) on 16, F(2x2) on 32). With AVX2 (16-filter
/// tiles) F(4x4) kept winning with more: batch 128 at 28x28, forward, 32 → 32 8.4 ms
/// against 11.7, 32 → 64 15.1 against 23.6, 64 → 64 (batch 64) 12.8 against 23.0.
const FILTERS_AVX512: usize = 32;

/// Outputs computed per output wanted by `M x M` tiles, in the samples' [`Grid`].
fn waste<const M: usize>(g: &Geometry) -> f64 {
    let grid = Grid::of::<M>(g);
    let computed = (M * grid.th).saturating_mul(M * grid.row) as f64 / grid.strip as f64;
    computed / g.positions().max(1) as f64
}

/// At most this many samples side by side in a row of tiles (see [`Grid`]).
const MAX_STRIP: usize = 8;

/// Where a task's tiles lie: each sample's `th` rows of `tw` tiles, `strip` samples side by
/// side in every row of tiles, and one column more at the row's end (its last tile reads a
/// column past its own: `row = strip·tw + 1`).
///
/// The transforms run along a row of tiles [`LANES`] at a time, so a small image alone (7x7:
/// two F(4x4) tiles a row, three with the column past them) would leave most lanes empty,
/// and a third of the products would be the dropped column's. Side by side, the samples fill
/// the lanes, and the dropped column is one per strip — where neighbours can share a column
/// of the padded image: where the padding makes it zero in both (`M·tw ≥ w + max(left,
/// right)`: 7x7 with F(2x2) or F(4x4) and padding 1), sample `s + 1`'s left padding is
/// sample `s`'s right padding, and its tiles follow sample `s`'s at once. (Where they cannot,
/// each would keep its dropped column: three 28x28 samples side by side made ResNet-20's first
/// stage slower, 2.2 → 3.0 ms. One sample a row there.) The number side by side is the one
/// that leaves the fewest lanes empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grid {
    th: usize,
    tw: usize,
    strip: usize,
    row: usize,
}

impl Grid {
    fn of<const M: usize>(g: &Geometry) -> Grid {
        let (th, tw) = (g.oh.div_ceil(M), g.ow.div_ceil(M));
        let shared = M * tw >= g.w + g.pad_left.max(g.pad_right);
        let grid = |strip: usize| Grid { th, tw, strip, row: strip * tw + 1 };
        // the share of lanes that transform a wanted tile
        let used = |grid: &Grid| (grid.th * grid.strip * grid.tw) as f64 / grid.tiles().next_multiple_of(LANES).max(1) as f64;
        let most = if shared { MAX_STRIP } else { 1 };
        (2..=most).map(grid).fold(grid(1), |best, next| if used(&next) > used(&best) { next } else { best })
    }

    /// Tiles of a strip (the dropped ones included).
    fn tiles(&self) -> usize {
        self.th * self.row
    }
}

/// Winograd's tile for a convolution of this geometry, `c_in` → `c_out` channels, if it is
/// the algorithm: a shape it [`applies`] to and a vector kernel, then F(4x4) where the image
/// fits its tiles ([`MAX_WASTE`]), else (only where it does not) F(2x2) where the image fits
/// those and the channels are many enough for its transforms ([`MIN_CHANNELS_F2`]). Measured on ResNet-20 (batch
/// 128): the first stage (16 → 16 at 28x28) by F(4x4) with AVX-512, forward 0.95 ms against
/// the implicit product's 1.18, forward + backward 3.24 against 3.71; with AVX2 against the
/// direct convolution, the stage's forward in `layer_times` 31.3 / 31.0 / 31.8 → 29.0 / 28.9
/// / 30.0 ms; the second stage (32 → 32 at 14x14) by F(2x2), with AVX-512 forward 0.99
/// against the direct convolution's 1.10, forward + backward 3.33 against 3.51, with AVX2 a
/// block's forward 7.31 / 7.24 / 7.20 → 6.78 / 6.85 / 6.80 ms and a step 208.7 / 206.5 / 205.3
/// → 200.5 / 203.6 / 201.4 (`layer_times`, alternate rounds).
pub(crate) fn suits(g: &Geometry, c_in: usize, c_out: usize) -> Option<Size> {
    suits_on(Kernel::best().name(), g, c_in, c_out)
}

/// [`suits`] for the micro-kernel of this name (the tests ask for every instruction set).
fn suits_on(kernel: &str, g: &Geometry, c_in: usize, c_out: usize) -> Option<Size> {
    let (channels, avx512, f4_fits) = (c_in.min(c_out), kernel == "avx512", waste::<4>(g) <= MAX_WASTE);
    if kernel == Kernel::PORTABLE.name() || !applies(g) {
        None
    } else if f4_fits && channels >= MIN_CHANNELS && !(avx512 && c_out >= FILTERS_AVX512) {
        Some(Size::F4)
    } else if !f4_fits && waste::<2>(g) <= MAX_WASTE && channels >= MIN_CHANNELS_F2 && !(avx512 && c_out > FILTERS_AVX512) {
        Some(Size::F2)
    } else if waste::<4>(g) <= MAX_WASTE_WIDE && channels >= WIDE_CHANNELS && !avx512 {
        Some(Size::F4)
    } else {
        None
    }
}

/// Values of the work buffers a thread needs for one sample (`V`, `M` and the split sample),
/// for the caller to check before any work: a huge image could otherwise fail to allocate
/// mid-way.
pub(crate) fn work_values(g: &Geometry, c_in: usize, c_out: usize) -> usize {
    tile_work_values::<2, 4>(g, c_in, c_out).max(tile_work_values::<4, 6>(g, c_in, c_out))
}

/// [`work_values`] of one tile.
fn tile_work_values<const M: usize, const A: usize>(g: &Geometry, c_in: usize, c_out: usize) -> usize {
    let grid = Grid::of::<M>(g);
    let tiles = (A * A * (c_in + c_out + 8)).saturating_mul(grid.tiles() + 2 * LANES + 32);
    tiles.saturating_add((M * M * c_in).saturating_mul(phase_len(&grid)))
}

/// The filters transformed, `U[ξ] = G g Gᵀ` for every filter and input channel, packed for the
/// micro-kernel: `U[ξ]` (`[c_out, c_in]`) as the A operand of product `ξ`, in slivers of `mr`
/// filters ([`crate::gemm::pack`]'s layout, zeros past the last filter), sliver after sliver,
/// each sliver's `A²` products one after another ([`sliver_of`]). A sliver's values are one
/// parallel task: its filters transformed and written where the kernel reads them, in one
/// pass (the products packed from filters transformed pair by pair, gathering every `A²`-th
/// value, took 1.5% of a ResNet-20 training step in `perf`; now 0.75%).
fn transformed_filters<const M: usize, const A: usize, T: Tile<M, A>>(w: ArrayView4<f32>, kernel: &Kernel) -> Vec<f32> {
    let (c_out, c_in, _, _) = w.dim();
    let mr = kernel.mr;
    let w = w.as_standard_layout();
    let w = w.as_slice().expect("standard layout is contiguous");
    let mut packed = vec![0.0f32; c_out.div_ceil(mr) * A * A * mr * c_in];
    packed.par_chunks_mut(A * A * mr * c_in).enumerate().for_each(|(sliver, packed)| {
        let filters = &w[sliver * mr * c_in * 9..][..(c_out - sliver * mr).min(mr) * c_in * 9];
        // channel by channel, the sliver's filters side by side: the values written together
        // lie together, a run of up to mr in each product
        for ci in 0..c_in {
            for (i, g) in filters.chunks_exact(9 * c_in).map(|filter| &filter[ci * 9..][..9]).enumerate() {
                // G g: the filter's columns transformed (A x 3), then (G g) Gᵀ (A x A)
                let mut gg = [[0.0f32; 3]; A];
                for (row, gr) in gg.iter_mut().zip(T::G) {
                    for (x, v) in row.iter_mut().enumerate() {
                        *v = gr[0] * g[x] + gr[1] * g[3 + x] + gr[2] * g[6 + x];
                    }
                }
                for (a, row) in gg.iter().enumerate() {
                    for (b, gc) in T::G.iter().enumerate() {
                        packed[(A * a + b) * mr * c_in + ci * mr + i] = row[0] * gc[0] + row[1] * gc[1] + row[2] * gc[2];
                    }
                }
            }
        }
    });
    packed
}

/// Product `ξ`'s A operand for the sliver of filters `ir` (its `mr` filters' `c_in` steps)
/// in [`transformed_filters`]' values.
#[inline(always)]
fn sliver_of(filters: &[f32], c_in: usize, mr: usize, ir: usize, xi: usize, products: usize) -> &[f32] {
    &filters[(ir * products + xi) * mr * c_in..][..mr * c_in]
}

/// Winograd's tile: F(2x2, 3x3) or F(4x4, 3x3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Size {
    F2,
    F4,
}

/// `y = w ⊛ x + b`, then the activation, by Winograd's tile of this size, for a geometry that [`applies`] (checked by
/// the caller).
pub(crate) fn forward(size: Size, x: ArrayView4<f32>, w: ArrayView4<f32>, out: Epilogue, g: &Geometry) -> Array4<f32> {
    forward_on(size, Kernel::best().for_rows(w.dim().0), x, w, out, g)
}

/// [`forward`] on the micro-kernel given (the tests run every kernel the CPU has).
fn forward_on(size: Size, kernel: Kernel, x: ArrayView4<f32>, w: ArrayView4<f32>, out: Epilogue, g: &Geometry) -> Array4<f32> {
    match size {
        Size::F2 => forward_by::<2, 4, F2>(kernel, x, w, out, g),
        Size::F4 => forward_by::<4, 6, F4>(kernel, x, w, out, g),
    }
}

/// [`forward`] by tile `T` on the micro-kernel given, the transforms on its instruction set.
fn forward_by<const M: usize, const A: usize, T: Tile<M, A>>(kernel: Kernel, x: ArrayView4<f32>, w: ArrayView4<f32>, out: Epilogue, g: &Geometry) -> Array4<f32> {
    let (n, c_in, _, _) = x.dim();
    let c_out = w.dim().0;
    // tiles: th x tw blocks of M x M outputs a sample, each reading an A x A tile of the
    // padded sample; a task is whole strips of samples
    let grid = Grid::of::<M>(g);
    let strips = (TASK_VALUES / (A * A * (c_in + c_out) * grid.tiles())).clamp(1, n.div_ceil(grid.strip).max(1));
    let task = strips * grid.strip;
    // rows of V and M: a task's tiles, room for the last run of lanes, whole slivers
    let cols = (strips * grid.tiles() + LANES).next_multiple_of(kernel.nr);
    let filters = transformed_filters::<M, A, T>(w, &kernel);
    let shape = Shape { c_in, c_out, grid, cols, rows: Rows::new((0..c_in).map(|ci| ci * cols).collect()), filters, kernel };
    let mut y = Array4::<f32>::uninit((n, c_out, g.oh, g.ow));
    y.axis_chunks_iter_mut(Axis(0), task).into_par_iter().zip(x.axis_chunks_iter(Axis(0), task)).for_each_init(
        || Buffers {
            padded: split_buffer::<M>(g, &grid, c_in),
            v: Scratch::matrix(A * A, v_len(&shape)),
            m: Scratch::matrix(A * A, m_len(&shape)),
            ys: Scratch::matrix(2 * M * M, cols),
        },
        |buffers, (mut y_task, x_task)| run::<M, A, T>(&shape, g, out, x_task, y_task.view_mut(), buffers),
    );
    // SAFETY: every task scattered every row of every plane of its samples (each interleave
    // writes all of its output row)
    unsafe { y.assume_init() }
}

/// Rows (and columns) of tiles past a tile that it reads: its `A = M + 2` rows span the next
/// tile's first rows, never further (`(A − 1) / M = 1` for both tiles).
const REACH: usize = 1;

/// What every task of a layer shares: sizes, the packed transformed filters, the kernel (the
/// filter gradient's has no filters and no rows: it multiplies the transformed tiles).
struct Shape {
    c_in: usize,
    c_out: usize,
    grid: Grid,
    /// Columns of `V` and `M`, a whole number of the kernel's tiles.
    cols: usize,
    /// Where the kernel finds row `ci` of a `V[ξ]`.
    rows: Rows,
    filters: Vec<f32>,
    kernel: Kernel,
}

/// A thread's work buffers: a strip of padded samples (zero where no image lands: the images
/// land on the same values for every strip of a layer, so the padding stays zero —
/// [`split_buffer`]), `V` and `M` of a task, a channel's outputs.
struct Buffers {
    padded: ZeroBordered,
    v: Scratch,
    m: Scratch,
    ys: Scratch,
}

/// A task on the instruction set of the layer's micro-kernel: the transforms work on
/// [`Vector`]s of [`LANES`] values, compiled once per instruction set and chosen here.
fn run<const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, g: &Geometry, out: Epilogue, x: ArrayView4<f32>, y: ArrayViewMut4<MaybeUninit<f32>>, buffers: &mut Buffers) {
    match shape.kernel.name() {
        // SAFETY: `Kernel::best` chose this kernel, or a test did after checking, only where the
        // CPU has its instruction set.
        #[cfg(target_arch = "x86_64")]
        "avx512" => unsafe { run_avx512::<M, A, T>(shape, g, out, x, y, buffers) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        "avx2+fma" => unsafe { run_avx2::<M, A, T>(shape, g, out, x, y, buffers) },
        _ => steps::<Lanes, M, A, T>(shape, g, out, x, y, buffers),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, g: &Geometry, out: Epilogue, x: ArrayView4<f32>, y: ArrayViewMut4<MaybeUninit<f32>>, buffers: &mut Buffers) {
    steps::<std::arch::x86_64::__m512, M, A, T>(shape, g, out, x, y, buffers)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, g: &Geometry, out: Epilogue, x: ArrayView4<f32>, y: ArrayViewMut4<MaybeUninit<f32>>, buffers: &mut Buffers) {
    steps::<Pair, M, A, T>(shape, g, out, x, y, buffers)
}

/// Transform the inputs, multiply, transform the products back, on vectors `V`.
#[inline(always)]
fn steps<V: Vector, const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, g: &Geometry, out: Epilogue, x: ArrayView4<f32>, mut y: ArrayViewMut4<MaybeUninit<f32>>, buffers: &mut Buffers) {
    let Shape { c_in, c_out, grid, cols, ref rows, ref filters, kernel } = *shape;
    let Buffers { padded, v, m, ys } = buffers;
    let (mut v, mut m, mut ys) = (v.view_mut(), m.view_mut(), ys.view_mut());
    let v = v.as_slice_mut().expect("scratch is contiguous");
    // a strip's samples side by side (a part-filled last strip leaves earlier samples in the
    // other places: their tiles are computed and dropped), then its tiles transformed
    for (k, strip) in x.axis_chunks_iter(Axis(0), grid.strip).enumerate() {
        pad_split::<V, M>(strip, g, &grid, padded);
        transform_input::<V, M, A, T>(padded, shape, k * grid.tiles(), v);
    }
    let tiles = x.dim().0.div_ceil(grid.strip) * grid.tiles();
    let m = m.as_slice_mut().expect("scratch is contiguous");
    for xi in 0..A * A {
        let v_xi = &v[xi * v_len(shape)..][..c_in * cols];
        let blocks = tiles.div_ceil(kernel.nr);
        for ir in 0..c_out.div_ceil(kernel.mr) {
            let a = sliver_of(filters, c_in, kernel.mr, ir, xi, A * A);
            // the kernel writes its row of tiles straight into M, in one call
            let at = m_index(shape, xi, ir * kernel.mr, 0);
            kernel.run_blocks(c_in, a, v_xi, rows, &mut m[at..at + blocks * kernel.mr * kernel.nr]);
        }
    }
    // channel co's outputs are transformed into one half of ys while channel co - 1's, in the
    // other half, are scattered: read right after they were written, the values would wait
    // for the stores (a load that straddles several recent stores is not forwarded)
    let ys = ys.as_slice_mut().expect("scratch is contiguous");
    let (mut fresh, mut ready) = ys.split_at_mut(M * M * cols);
    for co in 0..=c_out {
        if co < c_out {
            transform_output::<V, M, A, T>(m, shape, co, tiles, fresh);
        }
        if let Some(prev) = co.checked_sub(1) {
            let (bias, floor) = (out.bias_of(prev), out.floor);
            for (s, mut y_i) in y.outer_iter_mut().enumerate() {
                let mut plane = y_i.index_axis_mut(Axis(0), prev);
                let first = (s / grid.strip) * grid.tiles() + (s % grid.strip) * grid.tw;
                scatter::<V, M>(ready, cols, first, grid.row, bias, floor, plane.as_slice_mut().expect("y is standard layout"), g.ow);
            }
        }
        std::mem::swap(&mut fresh, &mut ready);
    }
}

/// The filter and bias gradients of a convolution that [`applies`] (checked by the caller),
/// by Winograd's tiles read backwards. With `Z = U ⊙ V` and `Y = Aᵀ Z A`, a tile's
/// `∂L/∂Z = A dY Aᵀ` (`dY` the `M x M` block of `dy` it computed, zero past the edges), so
/// the transformed filters' gradient is `S[ξ] = Σ_tiles V[ξ] ⊙ (A dY Aᵀ)[ξ]` and, from
/// `U = G g Gᵀ`, the filters' is `dg = Gᵀ S G`. Over the tiles and the channels, the `A²`
/// elementwise products are again matrix products, now summed along the tiles:
///
/// ```text
/// V[ξ] = (Bᵀ d B)[ξ]        [c_in, tiles]    every input tile, as the forward transforms it
/// D[ξ] = (A dY Aᵀ)[ξ]       [c_out, tiles]   every block of dy, transformed
/// S[ξ] = V[ξ] · D[ξ]ᵀ       [c_in, c_out]    on the micro-kernel, K = the tiles
/// dw   = Gᵀ S G             each filter and input channel's 3 x 3
/// ```
///
/// F(4x4)'s 36 multiplications per 4x4 block of `dy` and channel pair where the direct
/// filter gradient spends 144, F(2x2)'s 16 per 2x2 block where it spends 36. The transforms
/// run along rows of tiles as in the forward (`dy` split into phase planes as an image
/// without padding, by [`pad_split`]); the micro-kernel wants the tiles as its steps, so
/// `V[ξ]` and `D[ξ]` are transposed in groups of four channels into its operands
/// ([`transpose_groups`]: a few shuffles per eight tiles) — a sum of dot products along the
/// tiles instead ([`crate::gemm::Dots`] on the rows as transformed) was slower than the
/// direct filter gradient: it adds each value's lanes up once per task, and a task's rows
/// are short. Tasks of whole strips of samples (the forward's, from the shapes alone) whose
/// partial sums are added in batch order: the same values for any number of threads.
///
/// [`gradient_size`] picks the tile. Measured on ResNet-20's layers (AVX2, Zen 3, batch 128,
/// a 3x3 layer's whole backward, medians of 61, ms): against the direct filter gradient,
/// 16 channels at 28x28 5.53 / 5.50 → 5.39 / 5.27 (F(4x4)), 32 at 14x14 5.80 / 5.79 → 5.34
/// (F(2x2); F(4x4), whose tiles overshoot 14x14, level at 5.31 / 5.30), 64 at 7x7 6.01 / 6.03
/// → 5.90 / 5.84 (F(2x2); F(4x4), whose strips give 30 tiles a task, 6.60).
pub(crate) fn filter_gradient(x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> (Array4<f32>, Array1<f32>) {
    filter_gradient_on(gradient_size(g), Kernel::best().for_rows(x.dim().1), x, dy, g)
}

/// The tile of [`filter_gradient`]: F(4x4) where its tiles fit the image ([`MAX_WASTE`]),
/// else F(2x2).
pub(crate) fn gradient_size(g: &Geometry) -> Size {
    if waste::<4>(g) <= MAX_WASTE {
        Size::F4
    } else {
        Size::F2
    }
}

/// Values of the work buffers a thread of [`filter_gradient`] needs (for a task of one strip),
/// for the caller to check before any work.
pub(crate) fn gradient_values(g: &Geometry, c_in: usize, c_out: usize) -> usize {
    match gradient_size(g) {
        Size::F2 => gradient_values_of::<2, 4>(g, c_in, c_out),
        Size::F4 => gradient_values_of::<4, 6>(g, c_in, c_out),
    }
}

/// [`gradient_values`] of one tile: the split strips, `V` and `D`, and their transposes
/// (with room for rows up to whole slivers and kernel tiles).
fn gradient_values_of<const M: usize, const A: usize>(g: &Geometry, c_in: usize, c_out: usize) -> usize {
    let grid = Grid::of::<M>(g);
    let channels = c_in.saturating_add(c_out).saturating_add(64);
    let split = channels.saturating_mul(M * M).saturating_mul(phase_len(&grid));
    let transformed = channels.saturating_mul(A * A + 2).saturating_mul(grid.tiles() + 2 * LANES);
    split.saturating_add(transformed.saturating_mul(2))
}

/// [`filter_gradient`] by this tile, with the transforms on the micro-kernel's instruction
/// set (the tests run every one).
fn filter_gradient_on(size: Size, kernel: Kernel, x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> (Array4<f32>, Array1<f32>) {
    let kernel = kernel.in_groups_of(4);
    match size {
        Size::F2 => filter_gradient_by::<2, 4, F2>(kernel, x, dy, g),
        Size::F4 => filter_gradient_by::<4, 6, F4>(kernel, x, dy, g),
    }
}

/// [`filter_gradient`] by tile `T`.
fn filter_gradient_by<const M: usize, const A: usize, T: Tile<M, A>>(kernel: Kernel, x: ArrayView4<f32>, dy: ArrayView4<f32>, g: &Geometry) -> (Array4<f32>, Array1<f32>) {
    let (n, c_in, _, _) = x.dim();
    let c_out = dy.dim().1;
    // the forward's tiles and tasks; dy's blocks lie on the same grid as the tiles of x
    let grid = Grid::of::<M>(g);
    let strips = (TASK_VALUES / (A * A * (c_in + c_out) * grid.tiles())).clamp(1, n.div_ceil(grid.strip).max(1));
    let cols = (strips * grid.tiles() + LANES).next_multiple_of(LANES);
    let shape = Shape { c_in, c_out, grid, cols, rows: Rows::new(Vec::new()), filters: Vec::new(), kernel };
    // dy is split as an image without padding
    let blocks = Geometry { h: g.oh, w: g.ow, pad_top: 0, pad_bottom: 0, pad_left: 0, pad_right: 0, ..*g };
    let (s, db) = filter_gradient_tasks(
        x,
        dy,
        strips * grid.strip,
        (c_out, A * A * c_in),
        || GradientBuffers {
            xs: split_buffer::<M>(g, &grid, c_in),
            dys: split_buffer::<M>(&blocks, &grid, c_out),
            // room for the rows read past the channels, up to whole groups and slivers
            v: Scratch::matrix(A * A + 1, v_len(&shape).max(8 * cols)),
            d: Scratch::matrix(A * A + 1, d_len(&shape).max(8 * cols)),
            a: Scratch::matrix(c_in.next_multiple_of(kernel.mr), cols),
            b: Scratch::matrix(c_out.next_multiple_of(kernel.nr), cols),
            tile: Scratch::matrix(kernel.mr, c_out.next_multiple_of(kernel.nr)),
        },
        |buffers, x_task, dy_task| gradient_task::<M, A, T>(&shape, (g, &blocks), x_task, dy_task, buffers),
    );
    // dw = Gᵀ S G for every filter and input channel
    let mut dw = Array4::<f32>::zeros((c_out, c_in, 3, 3));
    let s = s.into_shape_with_order((A * A, c_in * c_out)).expect("S[ξ] one after another");
    for (k, dw) in dw.as_slice_mut().expect("a new array is contiguous").chunks_exact_mut(9).enumerate() {
        let (co, ci) = (k / c_in, k % c_in);
        let s: [f32; 36] = std::array::from_fn(|xi| if xi < A * A { s[[xi, ci * c_out + co]] } else { 0.0 });
        // S G (A x 3), then Gᵀ (S G)
        let mut sg = [[0.0f32; 3]; A];
        for (row, s) in sg.iter_mut().zip(s.chunks_exact(A)) {
            for (b, v) in row.iter_mut().enumerate() {
                *v = s.iter().zip(T::G).map(|(s, g)| s * g[b]).sum();
            }
        }
        for (a, dw) in dw.chunks_exact_mut(3).enumerate() {
            for (b, v) in dw.iter_mut().enumerate() {
                *v = sg.iter().zip(T::G).map(|(sg, g)| g[a] * sg[b]).sum();
            }
        }
    }
    (dw, db)
}

/// A thread's work buffers for the filter gradient: a strip of padded samples and of their
/// output gradients (split into phase planes), `V` and `D` of a task.
struct GradientBuffers {
    xs: ZeroBordered,
    dys: ZeroBordered,
    v: Scratch,
    d: Scratch,
    /// `V[ξ]` and `D[ξ]` as the micro-kernel's operands, and its tiles.
    a: Scratch,
    b: Scratch,
    tile: Scratch,
}

/// The values of one transformed output gradient `D[ξ]` (`c_out` rows of `cols` values), and
/// one cache line more (see [`v_len`]).
#[inline(always)]
fn d_len(shape: &Shape) -> usize {
    shape.c_out * shape.cols + LANES
}

/// A task's partial gradients on the instruction set of the layer's micro-kernel: `S` (its
/// `A²·c_in·c_out` values as `S[ξ][ci][co]`, in an array of `c_out` rows) and the bias's.
fn gradient_task<const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, g: (&Geometry, &Geometry), x: ArrayView4<f32>, dy: ArrayView4<f32>, buffers: &mut GradientBuffers) -> (Array2<f32>, Array1<f32>) {
    // the bias gradient: each channel's sum, sample by sample in batch order
    let mut db = Array1::<f32>::zeros(shape.c_out);
    for dy_i in dy.outer_iter() {
        for (db, plane) in db.iter_mut().zip(dy_i.outer_iter()) {
            *db += vector::sum(plane.as_standard_layout().as_slice().expect("standard layout is contiguous"));
        }
    }
    let s = match shape.kernel.name() {
        // SAFETY: `Kernel::best` chose this kernel, or a test did after checking, only where the
        // CPU has its instruction set.
        #[cfg(target_arch = "x86_64")]
        "avx512" => unsafe { gradient_avx512::<M, A, T>(shape, g, x, dy, buffers) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        "avx2+fma" => unsafe { gradient_avx2::<M, A, T>(shape, g, x, dy, buffers) },
        _ => gradient_steps::<Lanes, M, A, T>(shape, g, x, dy, buffers),
    };
    (s, db)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gradient_avx512<const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, g: (&Geometry, &Geometry), x: ArrayView4<f32>, dy: ArrayView4<f32>, buffers: &mut GradientBuffers) -> Array2<f32> {
    gradient_steps::<std::arch::x86_64::__m512, M, A, T>(shape, g, x, dy, buffers)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gradient_avx2<const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, g: (&Geometry, &Geometry), x: ArrayView4<f32>, dy: ArrayView4<f32>, buffers: &mut GradientBuffers) -> Array2<f32> {
    gradient_steps::<Pair, M, A, T>(shape, g, x, dy, buffers)
}

/// Transform the inputs and the output gradients, then `S[ξ] = D[ξ] · V[ξ]ᵀ`, on vectors `V`.
#[inline(always)]
fn gradient_steps<V: Vector, const M: usize, const A: usize, T: Tile<M, A>>(shape: &Shape, (g, blocks): (&Geometry, &Geometry), x: ArrayView4<f32>, dy: ArrayView4<f32>, buffers: &mut GradientBuffers) -> Array2<f32> {
    let Shape { c_in, c_out, grid, cols, .. } = *shape;
    let GradientBuffers { xs, dys, v, d, a, b, tile } = buffers;
    let [mut v, mut d, mut a, mut b, mut tile] = [v, d, a, b, tile].map(|scratch| scratch.view_mut());
    let [v, d, a, b, tile] = [&mut v, &mut d, &mut a, &mut b, &mut tile].map(|view| view.as_slice_mut().expect("scratch is contiguous"));
    for (k, (x_strip, dy_strip)) in x.axis_chunks_iter(Axis(0), grid.strip).zip(dy.axis_chunks_iter(Axis(0), grid.strip)).enumerate() {
        if x_strip.dim().0 < grid.strip {
            // a part-filled last strip: the other places hold no sample (zero gradient), and
            // no values of an earlier strip or call either (a non-finite one would reach the sums)
            xs.fill(0.0);
            dys.fill(0.0);
        }
        pad_split::<V, M>(x_strip, g, &grid, xs);
        pad_split::<V, M>(dy_strip, blocks, &grid, dys);
        transform_input::<V, M, A, T>(xs, shape, k * grid.tiles(), v);
        transform_gradient::<V, M, A, T>(dys, shape, k * grid.tiles(), d);
    }
    // S[ξ] = V[ξ] · D[ξ]ᵀ on the micro-kernel, K = the tiles: V[ξ]'s rows into A's slivers,
    // D[ξ]'s into B's rows (both transposed in groups of four)
    let kernel = shape.kernel;
    let tiles = x.dim().0.div_ceil(grid.strip) * grid.tiles();
    let steps = tiles.next_multiple_of(8);
    let (c_in4, c_out4, width) = (c_in.next_multiple_of(kernel.mr), c_out.next_multiple_of(4), c_out.next_multiple_of(kernel.nr));
    let rows = Rows::new((0..tiles).map(|t| t * width).collect());
    // S[ξ]'s rows (input channels) one after another, each of c_out values, written in order
    // (into an array of the filter gradients' shape, for the sum over tasks)
    let mut partial = Vec::with_capacity(A * A * c_in * c_out);
    for xi in 0..A * A {
        transpose_groups::<V>(&v[xi * v_len(shape)..], cols, c_in4, steps, Groups::Slivers { mr: kernel.mr, steps }, a);
        transpose_groups::<V>(&d[xi * d_len(shape)..], cols, c_out4, steps, Groups::Rows { width }, b);
        for (sliver, a) in a.chunks_exact(kernel.mr * steps).take(c_in4 / kernel.mr).enumerate() {
            kernel.run_blocks(tiles, a, b, &rows, &mut tile[..kernel.mr * width]);
            // the kernel's mr x nr tiles side by side: row i of each, cut at c_out
            for i in 0..kernel.mr.min(c_in - sliver * kernel.mr) {
                for (block, co) in tile.chunks_exact(kernel.mr * kernel.nr).zip((0..c_out).step_by(kernel.nr)) {
                    partial.extend_from_slice(&block[i * kernel.nr..][..kernel.nr.min(c_out - co)]);
                }
            }
        }
    }
    Array2::from_shape_vec((c_out, A * A * c_in), partial).expect("every value of S written")
}

/// Where [`transpose_groups`] puts the four values of a group of rows at one step.
#[derive(Clone, Copy)]
enum Groups {
    /// The micro-kernel's A slivers: row `r` in sliver `r / mr` (`mr·steps` values each),
    /// step `t` at `t·mr`.
    Slivers { mr: usize, steps: usize },
    /// Rows of B: step `t` at `t·width`, row `r` at `r`.
    Rows { width: usize },
}

impl Groups {
    #[inline(always)]
    fn at(self, r: usize, t: usize) -> usize {
        match self {
            Groups::Slivers { mr, steps } => (r / mr) * mr * steps + t * mr + r % mr,
            Groups::Rows { width } => t * width + r,
        }
    }
}

/// `dst[groups.at(r, t) + i] = src[(r + i)·stride + t]` for every group of four rows `r` of
/// `rows` (a multiple of four), `i < 4`, step `t < len` (a multiple of eight): with AVX2,
/// four rows of eight steps transposed in registers at a time.
#[inline(always)]
fn transpose_groups<V: Vector>(src: &[f32], stride: usize, rows: usize, len: usize, groups: Groups, dst: &mut [f32]) {
    if rows == 0 || len == 0 {
        return;
    }
    assert!(rows.is_multiple_of(4) && len.is_multiple_of(8) && (rows - 1) * stride + len <= src.len() && groups.at(rows - 4, len - 1) + 4 <= dst.len(), "groups outside their buffers");
    #[cfg(target_arch = "x86_64")]
    if V::PERMUTES != Permutes::Scalar {
        // SAFETY: AVX2 or AVX-512 (which has AVX2): run chose V on a CPU with it; every load
        // and store inside the buffers (asserted above).
        return unsafe { avx2::transpose_groups(src, stride, rows, len, groups, dst) };
    }
    for r in (0..rows).step_by(4) {
        for t in 0..len {
            let at = groups.at(r, t);
            for i in 0..4 {
                dst[at + i] = src[(r + i) * stride + t];
            }
        }
    }
}

/// `D[ξ][co][first + t] = (A dY Aᵀ)[ξ]` for every `M x M` block `dY` of the strip's output
/// gradient (split into phase planes by [`pad_split`] as an image without padding), blocks
/// numbered as the tiles of [`transform_input`]: value `(r, c)` of block `t` is phase plane
/// `Q[r][c]` at `t`.
#[inline(always)]
fn transform_gradient<V: Vector, const M: usize, const A: usize, T: Tile<M, A>>(padded: &[f32], shape: &Shape, first: usize, d: &mut [f32]) {
    let Shape { c_out, grid, cols, .. } = *shape;
    let (th, row, phase) = (grid.th, grid.row, phase_len(&grid));
    let step = d_len(shape);
    // the furthest read: the last channel's last phase plane, the last run; the furthest
    // write: the last product's last channel, the last run
    assert!(padded.len() >= M * M * c_out * phase + LANES, "padded output gradient too short");
    assert!(d.len() >= A * A * step && first + th * row + LANES <= cols, "D too short");
    let mut e = [[V::zero(); A]; M];
    for co in 0..c_out {
        let planes = co * M * M * phase;
        for t in (0..th * row).step_by(LANES) {
            // dY Aᵀ: each of the block's rows to A values
            for (r, e) in e.iter_mut().enumerate() {
                let mut y = [V::zero(); M];
                for (c, y) in y.iter_mut().enumerate() {
                    // SAFETY: t < th·row < phase, so every read ends before M²·c_out·phase + LANES
                    // (asserted above).
                    *y = unsafe { V::load(padded, planes + (r * M + c) * phase + t) };
                }
                *e = T::a(y);
            }
            // A (dY Aᵀ): then each column, into D[A·i + j]
            for j in 0..A {
                for (i, value) in T::a(column(&e, j)).into_iter().enumerate() {
                    // SAFETY: every write ends before A²·step (asserted above).
                    unsafe { value.put(d, (A * i + j) * step + co * cols + first + t) };
                }
            }
        }
    }
}

/// Values per vector operation of the transforms (a row of tiles is computed this many at
/// a time, the last run past the row's end into room left for it): one AVX-512 register.
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// A run of [`LANES`] values and the arithmetic the transforms need: an AVX-512 register or
/// two AVX2 registers ([`Pair`]) through their intrinsics (left to itself, the compiler cuts
/// arrays of 16 values into halves and shuffles them), or an array the compiler vectorises as
/// it can (portable code).
trait Vector: Copy {
    /// The permutes that split and interleave rows ([`Phases`]).
    const PERMUTES: Permutes;
    fn zero() -> Self;
    /// # Safety
    /// `at + LANES <= s.len()` (the transforms check their whole range once, before the
    /// loops: a bounds check per vector load would cost as much as the arithmetic).
    unsafe fn load(s: &[f32], at: usize) -> Self;
    /// # Safety
    /// As [`Vector::load`].
    unsafe fn put(self, s: &mut [f32], at: usize);
    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    /// `self·c + b`, rounded twice (on every instruction set: no fused multiply-add).
    fn mul_add(self, c: f32, b: Self) -> Self;
}

impl Vector for Lanes {
    const PERMUTES: Permutes = Permutes::Scalar;

    #[inline(always)]
    fn zero() -> Self {
        [0.0; LANES]
    }

    #[inline(always)]
    unsafe fn load(s: &[f32], at: usize) -> Self {
        debug_assert!(at + LANES <= s.len());
        // SAFETY: the caller's promise.
        unsafe { s.as_ptr().add(at).cast::<Lanes>().read_unaligned() }
    }

    #[inline(always)]
    unsafe fn put(self, s: &mut [f32], at: usize) {
        debug_assert!(at + LANES <= s.len());
        // SAFETY: the caller's promise.
        unsafe { s.as_mut_ptr().add(at).cast::<Lanes>().write_unaligned(self) }
    }

    #[inline(always)]
    fn add(mut self, b: Self) -> Self {
        for i in 0..LANES {
            self[i] += b[i];
        }
        self
    }

    #[inline(always)]
    fn sub(mut self, b: Self) -> Self {
        for i in 0..LANES {
            self[i] -= b[i];
        }
        self
    }

    #[inline(always)]
    fn mul_add(self, c: f32, mut b: Self) -> Self {
        for i in 0..LANES {
            b[i] += self[i] * c;
        }
        b
    }
}

/// Only [`run_avx512`] computes with it, on CPUs with AVX-512F (the SAFETY of every intrinsic
/// below): these functions are inlined into it.
#[cfg(target_arch = "x86_64")]
impl Vector for std::arch::x86_64::__m512 {
    const PERMUTES: Permutes = Permutes::Avx512;

    #[inline(always)]
    fn zero() -> Self {
        // SAFETY: see the impl.
        unsafe { std::arch::x86_64::_mm512_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn load(s: &[f32], at: usize) -> Self {
        debug_assert!(at + LANES <= s.len());
        // SAFETY: the caller's promise, and see the impl.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(s.as_ptr().add(at)) }
    }

    #[inline(always)]
    unsafe fn put(self, s: &mut [f32], at: usize) {
        debug_assert!(at + LANES <= s.len());
        // SAFETY: the caller's promise, and see the impl.
        unsafe { std::arch::x86_64::_mm512_storeu_ps(s.as_mut_ptr().add(at), self) }
    }

    #[inline(always)]
    fn add(self, b: Self) -> Self {
        // SAFETY: see the impl.
        unsafe { std::arch::x86_64::_mm512_add_ps(self, b) }
    }

    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        // SAFETY: see the impl.
        unsafe { std::arch::x86_64::_mm512_sub_ps(self, b) }
    }

    #[inline(always)]
    fn mul_add(self, c: f32, b: Self) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: see the impl.
        unsafe { _mm512_add_ps(_mm512_mul_ps(self, _mm512_set1_ps(c)), b) }
    }
}

/// Two AVX2 registers, [`LANES`] values. Only [`run_avx2`] computes with it, on CPUs with AVX2
/// (the SAFETY of every intrinsic below): these functions are inlined into it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Pair([std::arch::x86_64::__m256; 2]);

#[cfg(target_arch = "x86_64")]
impl Vector for Pair {
    const PERMUTES: Permutes = Permutes::Avx2;

    #[inline(always)]
    fn zero() -> Self {
        // SAFETY: see the type.
        Pair([unsafe { std::arch::x86_64::_mm256_setzero_ps() }; 2])
    }

    #[inline(always)]
    unsafe fn load(s: &[f32], at: usize) -> Self {
        use std::arch::x86_64::*;
        debug_assert!(at + LANES <= s.len());
        // SAFETY: the caller's promise, and see the type.
        unsafe { Pair([_mm256_loadu_ps(s.as_ptr().add(at)), _mm256_loadu_ps(s.as_ptr().add(at + 8))]) }
    }

    #[inline(always)]
    unsafe fn put(self, s: &mut [f32], at: usize) {
        use std::arch::x86_64::*;
        debug_assert!(at + LANES <= s.len());
        // SAFETY: the caller's promise, and see the type.
        unsafe {
            _mm256_storeu_ps(s.as_mut_ptr().add(at), self.0[0]);
            _mm256_storeu_ps(s.as_mut_ptr().add(at + 8), self.0[1]);
        }
    }

    #[inline(always)]
    fn add(self, b: Self) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: see the type.
        unsafe { Pair([_mm256_add_ps(self.0[0], b.0[0]), _mm256_add_ps(self.0[1], b.0[1])]) }
    }

    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: see the type.
        unsafe { Pair([_mm256_sub_ps(self.0[0], b.0[0]), _mm256_sub_ps(self.0[1], b.0[1])]) }
    }

    #[inline(always)]
    fn mul_add(self, c: f32, b: Self) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: see the type.
        unsafe {
            let c = _mm256_set1_ps(c);
            Pair([_mm256_add_ps(_mm256_mul_ps(self.0[0], c), b.0[0]), _mm256_add_ps(_mm256_mul_ps(self.0[1], c), b.0[1])])
        }
    }
}

#[inline(always)]
fn add<V: Vector>(a: V, b: V) -> V {
    a.add(b)
}

#[inline(always)]
fn sub<V: Vector>(a: V, b: V) -> V {
    a.sub(b)
}

/// `a·c + b`.
#[inline(always)]
fn mul_add<V: Vector>(a: V, c: f32, b: V) -> V {
    a.mul_add(c, b)
}

/// Writes a strip of samples (`[strip, c_in, h, w]`) padded as the geometry says, side by
/// side, each channel as `M x M` phase planes `Q[p][q]` (`th + REACH` rows of `row` values
/// each, [`phase_len`] apart): sample `s`'s padded value `(y, x)` at `Q[y % M][x % M]`, row
/// `y / M`, column `s·tw + x / M`. Zeros around and after each image up to the next sample's
/// place (the rows above and below stay zero from the buffer's start; each row's zeros are
/// written with it, row by row, sample after sample): the next sample's left padding, written
/// after, lands on zeros (see [`Grid`]).
#[inline(always)]
fn pad_split<V: Vector, const M: usize>(strip: ArrayView4<f32>, g: &Geometry, grid: &Grid, padded: &mut [f32]) {
    let (row, phase) = (grid.row, phase_len(grid));
    let strip = strip.as_standard_layout();
    let x = strip.as_slice().expect("standard layout is contiguous");
    let (c_in, sample) = (strip.dim().1, strip.dim().1 * g.h * g.w);
    // the start of phase plane Q[y % M][q]'s row y / M, for padded row y
    let start = |y: usize, q: usize| (M * (y % M) + q) * phase + (y / M) * row;
    for (ci, planes) in padded.chunks_exact_mut(M * M * phase).take(c_in).enumerate() {
        if strip.dim().0 == 1 {
            // a sample alone: its rows in one call, no spill (its runs are the planes' rows)
            let at = |iy: usize| std::array::from_fn(|q| start(g.pad_top + iy, q));
            Phases::<M, _> { at }.split::<V>(&x[ci * g.h * g.w..][..g.h * g.w], g.w, g.pad_left, (grid.tw + REACH, 0), planes);
            continue;
        }
        for iy in 0..g.h {
            for s in 0..strip.dim().0 {
                // x's row iy lands in padded row pad_top + iy, its value i in column pad_left + i
                let at = |_| std::array::from_fn(|q| start(g.pad_top + iy, q) + s * grid.tw);
                Phases::<M, _> { at }.split::<V>(&x[s * sample + (ci * g.h + iy) * g.w..][..g.w], g.w, g.pad_left, (grid.tw + REACH, SPILL), planes);
            }
        }
    }
}

/// A buffer for a strip of samples split by [`pad_split`] (`channels` of them, on this
/// geometry and grid), its zeros kept from one use to the next: the split writes each
/// sample's rows at the same places every time.
fn split_buffer<const M: usize>(g: &Geometry, grid: &Grid, channels: usize) -> ZeroBordered {
    let layout = [M, channels, g.h, g.w, g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, grid.th, grid.tw, grid.strip, grid.row];
    ZeroBordered::new(layout, channels * M * M * phase_len(grid) + 2 * LANES)
}

/// Values a split row may write with zeros past its room: where the next sample's row (one
/// call later), the next row of tiles (the next rows of the image) or a plane's spill room
/// ([`phase_len`]) lies.
const SPILL: usize = LANES;

/// Values of a phase plane in the padded strip: its rows of tiles, the row past them, and
/// room for the last row's [`SPILL`].
fn phase_len(grid: &Grid) -> usize {
    (grid.th + REACH) * grid.row + SPILL
}

/// `V[ξ][ci][first + t] = (Bᵀ d B)[ξ]` for every tile `d` of the strip, tiles numbered
/// `t = ty·row + tx` (a [`Grid`]'s row: the tiles past the samples' are computed and dropped),
/// [`LANES`] tiles at a time. Value `(r, c)` of tile `t` is phase plane `Q[r % M][c % M]`
/// at `t + (r / M)·row + c / M`: for every `r` and `c`, a run of consecutive tiles reads a
/// run of consecutive values, so the whole transform is vector loads, arithmetic and stores.
#[inline(always)]
fn transform_input<V: Vector, const M: usize, const A: usize, T: Tile<M, A>>(padded: &[f32], shape: &Shape, first: usize, v: &mut [f32]) {
    let Shape { c_in, grid, cols, .. } = *shape;
    let (th, row, phase) = (grid.th, grid.row, phase_len(&grid));
    let step = v_len(shape);
    // the furthest read: the last channel's last phase plane, a column and a row of tiles on
    // from the last run; the furthest write: the last product's last channel, the last run
    assert!(padded.len() >= M * M * c_in * phase + REACH + LANES, "padded sample too short");
    assert!(v.len() >= A * A * step && first + th * row + LANES <= cols, "V too short");
    // d B, made zero once (a fresh table per run of tiles would be zeroed every time)
    let mut e = [[V::zero(); A]; A];
    for ci in 0..c_in {
        let planes = ci * M * M * phase;
        for t in (0..th * row).step_by(LANES) {
            // d B: each of the tile's rows along (row r, column c: plane Q[r % M][c % M])
            for (r, e) in e.iter_mut().enumerate() {
                let mut d = [V::zero(); A];
                for (c, d) in d.iter_mut().enumerate() {
                    let at = planes + ((r % M) * M + c % M) * phase + (r / M) * row + c / M + t;
                    // SAFETY: t < th·row, so every read ends before M²·c_in·phase + REACH + LANES
                    // (asserted above).
                    *d = unsafe { V::load(padded, at) };
                }
                *e = T::bt(d);
            }
            // Bᵀ (d B): then each column, into V[A·i + j]
            for j in 0..A {
                for (i, value) in T::bt(column(&e, j)).into_iter().enumerate() {
                    // SAFETY: every write ends before A²·step (asserted above).
                    unsafe { value.put(v, (A * i + j) * step + ci * cols + first + t) };
                }
            }
        }
    }
}

/// Where product `ξ`'s value for output channel `co` and tile `t` lies in `M`: `M` holds the
/// micro-kernel's `mr x nr` tiles as it writes them (no copy into rows), product after
/// product, each `c_out` (rounded up to `mr`) by `cols`.
#[inline(always)]
fn m_index(shape: &Shape, xi: usize, co: usize, t: usize) -> usize {
    let Kernel { mr, nr, .. } = shape.kernel;
    xi * m_len(shape) + (co / mr) * shape.cols * mr + (co % mr) * nr + (t / nr) * mr * nr + t % nr
}

/// The values of one product in `M` (its `c_out` rows, rounded up to the kernel's, of `cols`
/// values), and one cache line more (see [`v_len`]).
#[inline(always)]
fn m_len(shape: &Shape) -> usize {
    shape.c_out.next_multiple_of(shape.kernel.mr) * shape.cols + LANES
}

/// The values of one transformed input `V[ξ]` (`c_in` rows of `cols` values), and one cache
/// line more: the transforms read or write all `A²` products of a tile together, and
/// products a whole number of 4 KiB apart would all fall in the same set of the L1 cache
/// (F(4x4)'s input transform took 4x longer).
#[inline(always)]
fn v_len(shape: &Shape) -> usize {
    shape.c_in * shape.cols + LANES
}

/// [`LANES`] values of `M[ξ]` for output channel `co` from tile `t` on (`t` a multiple of
/// `LANES`), given `at = m_index(shape, 0, co, t)`: one run, or several where the kernel's
/// tiles are narrower (the portable one).
#[inline(always)]
fn load_m<V: Vector>(m: &[f32], shape: &Shape, at: usize, xi: usize, co: usize, t: usize) -> V {
    let nr = shape.kernel.nr;
    if nr >= LANES {
        // SAFETY: a run inside one of the kernel's tiles (t is a multiple of LANES, nr of
        // LANES), inside M (checked by transform_output).
        return unsafe { V::load(m, xi * m_len(shape) + at) };
    }
    let mut lanes = [0.0; LANES];
    for (k, piece) in lanes.chunks_mut(nr).enumerate() {
        piece.copy_from_slice(&m[m_index(shape, xi, co, t + k * nr)..][..nr]);
    }
    // SAFETY: LANES values.
    unsafe { V::load(&lanes, 0) }
}

/// The `M x M` outputs of every tile of the task for output channel `co`, `Aᵀ M A`, from
/// `M[ξ][co][t]`: into `ys` as `M²` rows (output `(i, j)` of each tile in row `M·i + j`) of
/// `cols` values.
#[inline(always)]
fn transform_output<V: Vector, const M: usize, const A: usize, T: Tile<M, A>>(m: &[f32], shape: &Shape, co: usize, tiles: usize, ys: &mut [f32]) {
    let cols = shape.cols;
    assert!(m.len() >= A * A * m_len(shape) && ys.len() >= M * M * cols && tiles + LANES <= cols, "M or ys too short");
    // M A, made zero once
    let mut p = [[V::zero(); M]; A];
    for t in (0..tiles).step_by(LANES) {
        let at = m_index(shape, 0, co, t);
        // M A: each row r's A columns to M (row r, column c: product A·r + c)
        for (r, p) in p.iter_mut().enumerate() {
            let mut row = [V::zero(); A];
            for (c, value) in row.iter_mut().enumerate() {
                *value = load_m(m, shape, at, A * r + c, co, t);
            }
            *p = T::at(row);
        }
        // Aᵀ (M A): then each column, into ys row M·i + j
        for j in 0..M {
            for (i, value) in T::at(column(&p, j)).into_iter().enumerate() {
                // SAFETY: t + LANES <= cols (asserted above).
                unsafe { value.put(ys, (M * i + j) * cols + t) };
            }
        }
    }
}

/// Column `j` of `K` rows of `J` vectors.
#[inline(always)]
fn column<V: Vector, const K: usize, const J: usize>(rows: &[[V; J]; K], j: usize) -> [V; K] {
    let mut column = [V::zero(); K];
    for (value, row) in column.iter_mut().zip(rows) {
        *value = row[j];
    }
    column
}

/// One output plane (`[oh, ow]`, row-major) from `ys`: tile `(ty, tx)` of the sample whose
/// tiles start at `first` (`row` to a row of tiles) puts its `M x M` block at rows
/// `M·ty..`, columns `M·tx..` (cut at the plane's edges), plus the bias, then clipped at the
/// activation's floor.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scatter<V: Vector, const M: usize>(ys: &[f32], cols: usize, first: usize, row: usize, bias: f32, floor: f32, plane: &mut [MaybeUninit<f32>], ow: usize) {
    // where output row oy's columns j mod M come from
    let at = |oy: usize| std::array::from_fn(|j| (M * (oy % M) + j) * cols + first + (oy / M) * row);
    Phases::<M, _> { at }.interleave::<V>(ys, bias, floor, plane, ow);
}

/// How [`Phases`] moves values: AVX-512 or AVX2 permutes, or one value at a time.
#[derive(PartialEq, Eq)]
enum Permutes {
    Avx512,
    Avx2,
    Scalar,
}

/// `P` runs per row (2 or 4), a row's values by their column mod `P` (the phase planes), row
/// `y`'s starting at `at(y)`: [`pad_split`] splits every row of a channel into them,
/// [`scatter`] interleaves every row of an output plane from them. With AVX-512, `16·P`
/// values at a time: `P` loads, one or two rounds of `P` two-register permutes, `P` stores,
/// the masks at the rows' ends computed once for all the rows (per row, they cost more than
/// the permutes); with AVX2 the same on `8·P` values; else one value at a time.
struct Phases<const P: usize, F: Fn(usize) -> [usize; P]> {
    at: F,
}

impl<const P: usize, F: Fn(usize) -> [usize; P]> Phases<P, F> {
    /// Whether every row's runs of `len` values (its run `q` holds `⌈(len − q)/P⌉`) lie in a
    /// buffer of `buf` values.
    #[inline(always)]
    fn inside(&self, rows: usize, len: usize, buf: usize) -> bool {
        (0..rows).all(|y| {
            let at = (self.at)(y);
            (0..P).all(|q| at[q] + (len + P - 1 - q) / P <= buf)
        })
    }

    /// Row `y`'s runs as four offsets, as the AVX-512 functions take them (two-run rows use the
    /// first two).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn four(&self) -> impl Fn(usize) -> [usize; 4] + '_ {
        |y| {
            let at = (self.at)(y);
            std::array::from_fn(|q| at[q % P])
        }
    }

    /// `buf[at(y)[q] + i] = p[P·i + q]` for `i < room`, every run `q` of every row `y` of
    /// `rows` (`w` values each), `p` = `shift` zeros, the row, then zeros: each run's whole
    /// `room` is written, so the vector paths store whole registers wherever the room holds
    /// them (a masked store is slow on Zen 3). They may also write zeros to up to `spill`
    /// values past a run's room, where the caller writes later or wants zeros (with `spill`,
    /// runs of different rows must be further apart, or the rows written one call each).
    #[inline(always)]
    fn split<V: Vector>(&self, rows: &[f32], w: usize, shift: usize, (room, spill): (usize, usize), buf: &mut [f32]) {
        assert!(w > 0 && P * room >= shift + w && self.inside(rows.len() / w, P * (room + spill), buf.len()), "split rows outside the buffer");
        #[cfg(target_arch = "x86_64")]
        match V::PERMUTES {
            // SAFETY: V's permutes are only these on CPUs with their instruction set (run chose
            // V); every masked lane lies inside `rows` or inside the runs asserted above.
            Permutes::Avx512 => return unsafe { if P == 2 { avx512::split2(rows, w, shift, room, buf, &self.four()) } else { avx512::split4(rows, w, shift, room, buf, &self.four()) } },
            // SAFETY: as above, the spilled lanes inside the runs' room and spill.
            Permutes::Avx2 => return unsafe { if P == 2 { avx2::split2(rows, w, shift, (room, spill), buf, &self.four()) } else { avx2::split4(rows, w, shift, (room, spill), buf, &self.four()) } },
            Permutes::Scalar => {}
        }
        for (y, row) in rows.chunks_exact(w).enumerate() {
            let at = (self.at)(y);
            for col in 0..P * room {
                buf[at[col % P] + col / P] = col.checked_sub(shift).and_then(|i| row.get(i)).copied().unwrap_or(0.0);
            }
        }
    }

    /// `plane[y·w + P·i + q] = clip(buf[at(y)[q] + i] + bias, floor)` for every row `y` of
    /// `plane` (`w` values each): the bias added, the activation applied.
    #[inline(always)]
    fn interleave<V: Vector>(&self, buf: &[f32], bias: f32, floor: f32, plane: &mut [MaybeUninit<f32>], w: usize) {
        assert!(w > 0 && self.inside(plane.len() / w, w, buf.len()), "interleaved rows outside the buffer");
        #[cfg(target_arch = "x86_64")]
        match V::PERMUTES {
            // SAFETY: as in `split`.
            Permutes::Avx512 => return unsafe { if P == 2 { avx512::interleave2(buf, &self.four(), bias, floor, plane, w) } else { avx512::interleave4(buf, &self.four(), bias, floor, plane, w) } },
            // SAFETY: as in `split`.
            Permutes::Avx2 => return unsafe { if P == 2 { avx2::interleave2(buf, &self.four(), bias, floor, plane, w) } else { avx2::interleave4(buf, &self.four(), bias, floor, plane, w) } },
            Permutes::Scalar => {}
        }
        for (y, out) in plane.chunks_exact_mut(w).enumerate() {
            let at = (self.at)(y);
            for (col, v) in out.iter_mut().enumerate() {
                v.write(clip(buf[at[col % P] + col / P] + bias, floor));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// The first `n` lanes (at most 16).
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// See [`super::Phases::split`], two runs a row (`at(y)[0]` and `[1]`).
    ///
    /// # Safety
    /// AVX-512F; `at(y)[q] + room` inside `buf` for every row `y`.
    #[inline(always)]
    pub(super) unsafe fn split2(rows: &[f32], w: usize, shift: usize, room: usize, buf: &mut [f32], at: &impl Fn(usize) -> [usize; 4]) {
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let len = shift + w;
        for j in (0..2 * room).step_by(32) {
            let loads = [lanes(j, shift, len), lanes(j + 16, shift, len)];
            let stores = [mask(room - j / 2); 2];
            for (y, row) in rows.chunks_exact(w).enumerate() {
                let at = at(y);
                // SAFETY: masked lanes only: loads inside the row (position p of the shifted
                // row is row[p − shift]), stores inside the runs' room.
                unsafe {
                    let a = _mm512_maskz_loadu_ps(loads[0], row.as_ptr().wrapping_add(j).wrapping_sub(shift));
                    let b = _mm512_maskz_loadu_ps(loads[1], row.as_ptr().wrapping_add(j + 16).wrapping_sub(shift));
                    _mm512_mask_storeu_ps(buf.as_mut_ptr().wrapping_add(at[0] + j / 2), stores[0], _mm512_permutex2var_ps(a, evens, b));
                    _mm512_mask_storeu_ps(buf.as_mut_ptr().wrapping_add(at[1] + j / 2), stores[1], _mm512_permutex2var_ps(a, odds, b));
                }
            }
        }
    }

    /// See [`super::Phases::interleave`], two runs a row.
    ///
    /// # Safety
    /// AVX-512F; `at(y)[q] + ⌈(w − q)/2⌉` inside `buf` for every row `y` of `plane`.
    #[inline(always)]
    pub(super) unsafe fn interleave2(buf: &[f32], at: &impl Fn(usize) -> [usize; 4], bias: f32, floor: f32, plane: &mut [MaybeUninit<f32>], w: usize) {
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let (bias, floor) = (_mm512_set1_ps(bias), _mm512_set1_ps(floor));
        for j in (0..w).step_by(32) {
            let loads = [mask(w.saturating_sub(j).div_ceil(2)), mask(w.saturating_sub(j + 1).div_ceil(2))];
            let stores = [lanes(j, 0, w), lanes(j + 16, 0, w)];
            for (y, out) in plane.chunks_exact_mut(w).enumerate() {
                let at = at(y);
                // SAFETY: masked lanes only, inside the row and the caller's runs.
                unsafe {
                    let e = _mm512_maskz_loadu_ps(loads[0], buf.as_ptr().wrapping_add(at[0] + j / 2));
                    let o = _mm512_maskz_loadu_ps(loads[1], buf.as_ptr().wrapping_add(at[1] + j / 2));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().wrapping_add(j).cast(), stores[0], _mm512_max_ps(floor, _mm512_add_ps(_mm512_permutex2var_ps(e, low, o), bias)));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().wrapping_add(j + 16).cast(), stores[1], _mm512_max_ps(floor, _mm512_add_ps(_mm512_permutex2var_ps(e, high, o), bias)));
                }
            }
        }
    }

    /// The lanes `l` with `from <= at + l < to`.
    #[inline(always)]
    fn lanes(at: usize, from: usize, to: usize) -> __mmask16 {
        let (lo, hi) = (from.saturating_sub(at).min(16), to.saturating_sub(at).min(16));
        (mask(hi) & !mask(lo)) as __mmask16
    }

    /// See [`super::Phases::split`], four runs a row.
    ///
    /// # Safety
    /// AVX-512F; `at(y)[q] + room` inside `buf` for every row `y`.
    #[inline(always)]
    pub(super) unsafe fn split4(rows: &[f32], w: usize, shift: usize, room: usize, buf: &mut [f32], at: &impl Fn(usize) -> [usize; 4]) {
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let len = shift + w;
        for j in (0..4 * room).step_by(64) {
            let loads: [__mmask16; 4] = std::array::from_fn(|k| lanes(j + 16 * k, shift, len));
            let stores = [mask(room - j / 4); 4];
            for (y, row) in rows.chunks_exact(w).enumerate() {
                let at = at(y);
                // SAFETY: masked lanes only: loads inside the row (position p of the shifted
                // row is row[p − shift]), stores inside the runs' room.
                unsafe {
                    let load = |k: usize| _mm512_maskz_loadu_ps(loads[k], row.as_ptr().wrapping_add(j + 16 * k).wrapping_sub(shift));
                    let (r0, r1, r2, r3) = (load(0), load(1), load(2), load(3));
                    // the even and odd positions of each half, then of those the even and odd
                    let (e01, o01) = (_mm512_permutex2var_ps(r0, evens, r1), _mm512_permutex2var_ps(r0, odds, r1));
                    let (e23, o23) = (_mm512_permutex2var_ps(r2, evens, r3), _mm512_permutex2var_ps(r2, odds, r3));
                    let phases = [_mm512_permutex2var_ps(e01, evens, e23), _mm512_permutex2var_ps(o01, evens, o23), _mm512_permutex2var_ps(e01, odds, e23), _mm512_permutex2var_ps(o01, odds, o23)];
                    for (q, phase) in phases.into_iter().enumerate() {
                        _mm512_mask_storeu_ps(buf.as_mut_ptr().wrapping_add(at[q] + j / 4), stores[q], phase);
                    }
                }
            }
        }
    }

    /// See [`super::Phases::interleave`], four runs a row.
    ///
    /// # Safety
    /// AVX-512F; `at(y)[q] + ⌈(w − q)/4⌉` inside `buf` for every row `y` of `plane`.
    #[inline(always)]
    pub(super) unsafe fn interleave4(buf: &[f32], at: &impl Fn(usize) -> [usize; 4], bias: f32, floor: f32, plane: &mut [MaybeUninit<f32>], w: usize) {
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let (bias, floor) = (_mm512_set1_ps(bias), _mm512_set1_ps(floor));
        for j in (0..w).step_by(64) {
            let loads: [__mmask16; 4] = std::array::from_fn(|q| mask(w.saturating_sub(j + q).div_ceil(4)));
            let stores: [__mmask16; 4] = std::array::from_fn(|k| lanes(j + 16 * k, 0, w));
            for (y, out) in plane.chunks_exact_mut(w).enumerate() {
                let at = at(y);
                // SAFETY: masked lanes only, inside the row and the caller's runs.
                unsafe {
                    let load = |q: usize| _mm512_maskz_loadu_ps(loads[q], buf.as_ptr().wrapping_add(at[q] + j / 4));
                    let (q0, q1, q2, q3) = (load(0), load(1), load(2), load(3));
                    // positions 0 and 2 mod 4 to the even ones, 1 and 3 to the odd, then those two
                    let (e_low, e_high) = (_mm512_permutex2var_ps(q0, low, q2), _mm512_permutex2var_ps(q0, high, q2));
                    let (o_low, o_high) = (_mm512_permutex2var_ps(q1, low, q3), _mm512_permutex2var_ps(q1, high, q3));
                    let rows = [_mm512_permutex2var_ps(e_low, low, o_low), _mm512_permutex2var_ps(e_low, high, o_low), _mm512_permutex2var_ps(e_high, low, o_high), _mm512_permutex2var_ps(e_high, high, o_high)];
                    for (k, r) in rows.into_iter().enumerate() {
                        _mm512_mask_storeu_ps(out.as_mut_ptr().wrapping_add(j + 16 * k).cast(), stores[k], _mm512_max_ps(floor, _mm512_add_ps(r, bias)));
                    }
                }
            }
        }
    }
}

/// [`Phases`] with AVX2: as [`avx512`], on 8 lanes, the two-register permutes made of a
/// shuffle within 128-bit halves and a permute across them.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// See [`super::transpose_groups`].
    ///
    /// # Safety
    /// AVX2; the loads and stores inside the buffers (the caller's assertions).
    #[inline(always)]
    pub(super) unsafe fn transpose_groups(src: &[f32], stride: usize, rows: usize, len: usize, groups: super::Groups, dst: &mut [f32]) {
        for r in (0..rows).step_by(4) {
            for t in (0..len).step_by(8) {
                // SAFETY: the caller's promise.
                unsafe {
                    let p = src.as_ptr().add(r * stride + t);
                    let (r0, r1, r2, r3) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(stride)), _mm256_loadu_ps(p.add(2 * stride)), _mm256_loadu_ps(p.add(3 * stride)));
                    let (lo01, hi01, lo23, hi23) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1), _mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                    // steps t + k (low halves) and t + k + 4 (high halves), rows r.. in order
                    let steps = [_mm256_shuffle_ps::<0x44>(lo01, lo23), _mm256_shuffle_ps::<0xEE>(lo01, lo23), _mm256_shuffle_ps::<0x44>(hi01, hi23), _mm256_shuffle_ps::<0xEE>(hi01, hi23)];
                    for (k, v) in steps.into_iter().enumerate() {
                        _mm_storeu_ps(dst.as_mut_ptr().add(groups.at(r, t + k)), _mm256_castps256_ps128(v));
                        _mm_storeu_ps(dst.as_mut_ptr().add(groups.at(r, t + k + 4)), _mm256_extractf128_ps::<1>(v));
                    }
                }
            }
        }
    }

    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    // Every function here is inlined into `run_avx2`, on CPUs with AVX2 (the SAFETY of their
    // intrinsics); no closures, which would be compiled without AVX2.

    /// The lanes `l` with `from <= at + l < to`, as a mask of the masked loads and stores.
    #[inline(always)]
    fn lanes(at: usize, from: usize, to: usize) -> __m256i {
        let (lo, hi) = (from.saturating_sub(at).min(8) as i32, to.saturating_sub(at).min(8) as i32);
        // SAFETY: see above.
        unsafe {
            let l = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            // not l < lo, and l < hi
            _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), l), _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), l))
        }
    }

    /// The first `n` lanes (at most 8).
    #[inline(always)]
    fn mask(n: usize) -> __m256i {
        lanes(0, 0, n)
    }

    /// Stores the lanes of `v` that `mask` selects at `p`: a plain store where all lanes are
    /// selected, for a masked store is slow on some CPUs (AMD's Zen 3: F(4x4)'s split and
    /// interleave with masked stores only took as long as with the values moved one at a time).
    ///
    /// # Safety
    /// The selected lanes inside the caller's buffer.
    #[inline(always)]
    unsafe fn store(p: *mut f32, (mask, all): (__m256i, bool), v: __m256) {
        // SAFETY: the caller's promise, and see above; a store of no lanes is skipped (it is
        // as slow as any masked store)
        unsafe {
            if all {
                _mm256_storeu_ps(p, v)
            } else if _mm256_testz_si256(mask, mask) == 0 {
                _mm256_maskstore_ps(p, mask, v)
            }
        }
    }

    /// The mask of the lanes `l` with `from <= at + l < to`, and whether that is all of them.
    #[inline(always)]
    fn store_lanes(at: usize, from: usize, to: usize) -> (__m256i, bool) {
        (lanes(at, from, to), from <= at && at + 8 <= to)
    }

    /// [`store_lanes`] of the first `n` lanes, all of them where `spill` more may be written.
    #[inline(always)]
    fn spill_mask(n: usize, spill: usize) -> (__m256i, bool) {
        (mask(n), n + spill >= 8)
    }

    /// How an interleave stores lanes `j..j + 8` of row `y` (`own`: the row's own lanes of
    /// them) in a plane of `len` values, rows of `w`: whole wherever some lanes are the row's,
    /// the register ends inside the plane and the row takes one round of permutes (`w <=
    /// round`), for then the lanes past the row land on later rows, each written whole after it.
    #[inline(always)]
    fn row_store(own: (__m256i, bool), (y, w, j): (usize, usize, usize), round: usize, len: usize) -> (__m256i, bool) {
        (own.0, own.1 || (j < w && w <= round && y * w + j + 8 <= len))
    }

    /// The values at even and at odd positions of `a` then `b`.
    #[inline(always)]
    fn evens_odds(a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: see above.
        unsafe {
            // per 128-bit half a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs reordered
            let (e, o) = (_mm256_shuffle_ps::<0b10_00_10_00>(a, b), _mm256_shuffle_ps::<0b11_01_11_01>(a, b));
            (_mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e))), _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o))))
        }
    }

    /// `e` and `o` interleaved: `e0 o0 e1 o1 …` in two registers.
    #[inline(always)]
    fn zip(e: __m256, o: __m256) -> (__m256, __m256) {
        // SAFETY: see above.
        unsafe {
            let (lo, hi) = (_mm256_unpacklo_ps(e, o), _mm256_unpackhi_ps(e, o));
            (_mm256_permute2f128_ps::<0x20>(lo, hi), _mm256_permute2f128_ps::<0x31>(lo, hi))
        }
    }

    /// See [`super::Phases::split`], two runs a row (`at(y)[0]` and `[1]`).
    ///
    /// # Safety
    /// AVX2; `at(y)[q] + room` inside `buf` for every row `y`.
    #[inline(always)]
    pub(super) unsafe fn split2(rows: &[f32], w: usize, shift: usize, (room, spill): (usize, usize), buf: &mut [f32], at: &impl Fn(usize) -> [usize; 4]) {
        let len = shift + w;
        for j in (0..2 * room).step_by(16) {
            let loads = [lanes(j, shift, len), lanes(j + 8, shift, len)];
            let stores = [spill_mask(room - j / 2, spill); 2];
            for (y, row) in rows.chunks_exact(w).enumerate() {
                let at = at(y);
                // SAFETY: masked lanes only: loads inside the row (position p of the shifted
                // row is row[p − shift]), stores inside the runs' room.
                unsafe {
                    let a = _mm256_maskload_ps(row.as_ptr().wrapping_add(j).wrapping_sub(shift), loads[0]);
                    let b = _mm256_maskload_ps(row.as_ptr().wrapping_add(j + 8).wrapping_sub(shift), loads[1]);
                    let (e, o) = evens_odds(a, b);
                    store(buf.as_mut_ptr().wrapping_add(at[0] + j / 2), stores[0], e);
                    store(buf.as_mut_ptr().wrapping_add(at[1] + j / 2), stores[1], o);
                }
            }
        }
    }

    /// See [`super::Phases::interleave`], two runs a row.
    ///
    /// # Safety
    /// AVX2; `at(y)[q] + ⌈(w − q)/2⌉` inside `buf` for every row `y` of `plane`.
    #[inline(always)]
    pub(super) unsafe fn interleave2(buf: &[f32], at: &impl Fn(usize) -> [usize; 4], bias: f32, floor: f32, plane: &mut [MaybeUninit<f32>], w: usize) {
        let (bias, floor) = (_mm256_set1_ps(bias), _mm256_set1_ps(floor));
        for j in (0..w).step_by(16) {
            let loads = [mask(w.saturating_sub(j).div_ceil(2)), mask(w.saturating_sub(j + 1).div_ceil(2))];
            let stores = [store_lanes(j, 0, w), store_lanes(j + 8, 0, w)];
            let (len, out) = (plane.len(), plane.as_mut_ptr().cast::<f32>());
            for y in 0..len / w {
                let at = at(y);
                // SAFETY: masked loads inside the caller's runs; stores inside the plane.
                unsafe {
                    let e = _mm256_maskload_ps(buf.as_ptr().wrapping_add(at[0] + j / 2), loads[0]);
                    let o = _mm256_maskload_ps(buf.as_ptr().wrapping_add(at[1] + j / 2), loads[1]);
                    let (lo, hi) = zip(e, o);
                    store(out.wrapping_add(y * w + j), row_store(stores[0], (y, w, j), 16, len), _mm256_max_ps(floor, _mm256_add_ps(lo, bias)));
                    store(out.wrapping_add(y * w + j + 8), row_store(stores[1], (y, w, j + 8), 16, len), _mm256_max_ps(floor, _mm256_add_ps(hi, bias)));
                }
            }
        }
    }

    /// See [`super::Phases::split`], four runs a row.
    ///
    /// # Safety
    /// AVX2; `at(y)[q] + room` inside `buf` for every row `y`.
    #[inline(always)]
    pub(super) unsafe fn split4(rows: &[f32], w: usize, shift: usize, (room, spill): (usize, usize), buf: &mut [f32], at: &impl Fn(usize) -> [usize; 4]) {
        let len = shift + w;
        for j in (0..4 * room).step_by(32) {
            let loads = [lanes(j, shift, len), lanes(j + 8, shift, len), lanes(j + 16, shift, len), lanes(j + 24, shift, len)];
            let stores = [spill_mask(room - j / 4, spill); 4];
            for (y, row) in rows.chunks_exact(w).enumerate() {
                let at = at(y);
                // SAFETY: masked lanes only: loads inside the row (position p of the shifted
                // row is row[p − shift]), stores inside the runs' room.
                unsafe {
                    let p = row.as_ptr().wrapping_add(j).wrapping_sub(shift);
                    let (r0, r1) = (_mm256_maskload_ps(p, loads[0]), _mm256_maskload_ps(p.wrapping_add(8), loads[1]));
                    let (r2, r3) = (_mm256_maskload_ps(p.wrapping_add(16), loads[2]), _mm256_maskload_ps(p.wrapping_add(24), loads[3]));
                    // the even and odd positions of each half, then of those the even and odd
                    let ((e01, o01), (e23, o23)) = (evens_odds(r0, r1), evens_odds(r2, r3));
                    let ((p0, p2), (p1, p3)) = (evens_odds(e01, e23), evens_odds(o01, o23));
                    for (q, phase) in [p0, p1, p2, p3].into_iter().enumerate() {
                        store(buf.as_mut_ptr().wrapping_add(at[q] + j / 4), stores[q], phase);
                    }
                }
            }
        }
    }

    /// See [`super::Phases::interleave`], four runs a row.
    ///
    /// # Safety
    /// AVX2; `at(y)[q] + ⌈(w − q)/4⌉` inside `buf` for every row `y` of `plane`.
    #[inline(always)]
    pub(super) unsafe fn interleave4(buf: &[f32], at: &impl Fn(usize) -> [usize; 4], bias: f32, floor: f32, plane: &mut [MaybeUninit<f32>], w: usize) {
        let (bias, floor) = (_mm256_set1_ps(bias), _mm256_set1_ps(floor));
        for j in (0..w).step_by(32) {
            let loads = [mask(w.saturating_sub(j).div_ceil(4)), mask(w.saturating_sub(j + 1).div_ceil(4)), mask(w.saturating_sub(j + 2).div_ceil(4)), mask(w.saturating_sub(j + 3).div_ceil(4))];
            let stores = [store_lanes(j, 0, w), store_lanes(j + 8, 0, w), store_lanes(j + 16, 0, w), store_lanes(j + 24, 0, w)];
            let (len, out) = (plane.len(), plane.as_mut_ptr().cast::<f32>());
            for y in 0..len / w {
                let at = at(y);
                // SAFETY: masked loads inside the caller's runs; stores inside the plane.
                unsafe {
                    let p = buf.as_ptr().wrapping_add(j / 4);
                    let (q0, q1) = (_mm256_maskload_ps(p.wrapping_add(at[0]), loads[0]), _mm256_maskload_ps(p.wrapping_add(at[1]), loads[1]));
                    let (q2, q3) = (_mm256_maskload_ps(p.wrapping_add(at[2]), loads[2]), _mm256_maskload_ps(p.wrapping_add(at[3]), loads[3]));
                    // positions 0 and 2 mod 4 to the even ones, 1 and 3 to the odd, then those two
                    let ((e_low, e_high), (o_low, o_high)) = (zip(q0, q2), zip(q1, q3));
                    let ((r0, r1), (r2, r3)) = (zip(e_low, o_low), zip(e_high, o_high));
                    for (k, r) in [r0, r1, r2, r3].into_iter().enumerate() {
                        store(out.wrapping_add(y * w + j + 8 * k), row_store(stores[k], (y, w, j + 8 * k), 32, len), _mm256_max_ps(floor, _mm256_add_ps(r, bias)));
                    }
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
    use ndarray::Array;

    fn max_error(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        // NaN wins (f32::max would drop it, and a NaN output would pass)
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, |m, e| if m.is_nan() || e.is_nan() { f32::NAN } else { m.max(e) })
    }

    const SIZES: [Size; 2] = [Size::F2, Size::F4];

    /// The forward against the naive loops, both tiles: SAME and VALID, sizes 0 to 3 past a
    /// multiple of 4 (tiles cut by the edges in every way), padding of 2 and 0 on opposite
    /// sides, rows longer than one round of permutes (39 padded values), a bias, channel counts that leave the kernel's slivers part empty, a batch of
    /// several tasks, ResNet-20's first stage.
    #[test]
    fn forward_agrees_with_the_naive_loops() {
        let cases = [
            ([3, 5, 9, 11], 7, Window::square(3).padding(Padding::Same)),
            ([2, 4, 8, 8], 9, Window::square(3)),
            ([2, 3, 7, 6], 5, Window::square(3).padding(Padding::Explicit { top: 2, bottom: 0, left: 0, right: 2 })),
            ([2, 3, 6, 37], 4, Window::square(3).padding(Padding::Explicit { top: 0, bottom: 2, left: 2, right: 0 })),
            ([40, 16, 14, 14], 17, Window::square(3).padding(Padding::Same)),
            ([3, 16, 28, 28], 16, Window::square(3).padding(Padding::Same)),
        ];
        for (case, (xs, c_out, win)) in cases.into_iter().enumerate() {
            let (x, w) = (filled(xs, case), filled([c_out, xs[1], 3, 3], case + 10));
            let b = Array::from_shape_fn(c_out, |i| i as f32 / 4.0);
            let g = win.geometry(xs[2], xs[3]).unwrap();
            assert!(applies(&g));
            let want = reference::conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
            for size in SIZES {
                let y = forward(size, x.view(), w.view(), Epilogue::bias(Some(b.view())), &g);
                let err = max_error(&y, &want);
                assert!(err < 1e-4, "case {case}, {size:?}: {err}");
            }
        }
    }

    /// The input gradient as the transposed convolution, against the naive loops.
    #[test]
    fn input_gradient_agrees_with_the_naive_loops() {
        for (case, win) in [Window::square(3).padding(Padding::Same), Window::square(3)].into_iter().enumerate() {
            let (x, w) = (filled([2, 6, 10, 9], case), filled([5, 6, 3, 3], case + 10));
            let g = win.geometry(10, 9).unwrap();
            let dy = filled([2, 5, g.oh, g.ow], case + 20);
            let (turned, g_t) = crate::implicit::transposed_operands(w.view(), &g).unwrap();
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap().dx;
            for size in SIZES {
                let dx = forward(size, dy.view(), turned.view(), Epilogue::bias(None), &g_t);
                let err = max_error(&dx, &want);
                assert!(err < 1e-4, "case {case}, {size:?}: {err}");
            }
        }
    }

    /// The filter and bias gradients against the naive loops, both tiles, on every kernel's
    /// instruction set: the forward's shapes (edges cut every way, lopsided padding, several
    /// tasks, strips of small images with a part-filled last one), within F(4x4)'s rounding
    /// relative to the gradients' size.
    #[test]
    fn filter_gradient_agrees_with_the_naive_loops() {
        let cases = [
            ([3, 5, 9, 11], 7, Window::square(3).padding(Padding::Same)),
            ([2, 4, 8, 8], 9, Window::square(3)),
            ([2, 3, 7, 6], 5, Window::square(3).padding(Padding::Explicit { top: 2, bottom: 0, left: 0, right: 2 })),
            ([2, 3, 6, 37], 4, Window::square(3).padding(Padding::Explicit { top: 0, bottom: 2, left: 2, right: 0 })),
            ([40, 16, 14, 14], 17, Window::square(3).padding(Padding::Same)),
            ([19, 64, 7, 7], 64, Window::square(3).padding(Padding::Same)),
            ([3, 16, 28, 28], 16, Window::square(3).padding(Padding::Same)),
        ];
        for (case, (xs, c_out, win)) in cases.into_iter().enumerate() {
            let g = win.geometry(xs[2], xs[3]).unwrap();
            let (x, w, dy) = (filled(xs, case), filled([c_out, xs[1], 3, 3], case + 10), filled([xs[0], c_out, g.oh, g.ow], case + 20));
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap();
            let scale = want.dw.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for kernel in Kernel::available() {
                for size in SIZES {
                    let (dw, db) = filter_gradient_on(size, kernel, x.view(), dy.view(), &g);
                    let err = max_error(&dw, &want.dw);
                    assert!(err < 1e-5 * scale, "case {case}, {size:?} on {}: {err} (gradients up to {scale})", kernel.name());
                    let db_err = db.iter().zip(&want.db).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                    assert!(db_err < 1e-3, "case {case}, bias: {db_err}");
                }
            }
        }
    }

    /// [`Phases::split`] and [`Phases::interleave`] on `V` against the definitions, for rows
    /// of 1 to 40 values (runs cut anywhere in a register, one to three rounds of permutes),
    /// rooms from just the row to 11 values past it (a register's end inside and outside the
    /// room), the interleaved values plus a bias and clipped at a floor; nothing written past a
    /// run's room or past the plane (sentinels around them), nothing but zeros past a run's
    /// room within the spill.
    fn phases_agree<V: Vector, const P: usize>() {
        const SENTINEL: f32 = -7.0;
        for w in 1..=40usize {
            let (rows, shift) = (3, w % 3);
            let room = (shift + w).div_ceil(P) + w % 12;
            let phases = Phases::<P, _> { at: |y| phases_at::<P>(y, room) };
            let image: Vec<f32> = (0..rows * w).map(|i| i as f32).collect();
            // without a spill, then with the gap as the spill: zeros or untouched there
            for spill in [0, PHASES_GAP] {
                let mut buf = vec![SENTINEL; PHASES_FIRST + rows * P * (room + PHASES_GAP)];
                phases.split::<V>(&image, w, shift, (room, spill), &mut buf);
                for (i, &v) in buf.iter().enumerate() {
                    // value k of run `run` (row run / P, phase run % P), column col of its row
                    let (run, k) = (i.saturating_sub(PHASES_FIRST) / (room + PHASES_GAP), i.saturating_sub(PHASES_FIRST) % (room + PHASES_GAP));
                    let col = P * k + run % P;
                    let want = if i < PHASES_FIRST || k >= room {
                        SENTINEL
                    } else if col < shift || col >= shift + w {
                        0.0
                    } else {
                        image[(run / P) * w + col - shift]
                    };
                    let spilled = i >= PHASES_FIRST && k >= room && v == 0.0;
                    assert!(v == want || (spill > 0 && spilled), "split, {P} phases, rows of {w}, room {room}, spill {spill}, value {i}: {v}");
                }
            }
            let mut buf = vec![SENTINEL; PHASES_FIRST + rows * P * (room + PHASES_GAP)];
            phases.split::<V>(&image, w, shift, (room, 0), &mut buf);
            // a bias alone, then a bias that makes about half the values negative and ReLU's floor
            for (bias, floor) in [(0.5, f32::NEG_INFINITY), (0.5 - (rows * w / 2) as f32, 0.0)] {
                let mut plane = vec![MaybeUninit::new(SENTINEL); rows * w + 9];
                phases.interleave::<V>(&buf, bias, floor, &mut plane[..rows * w], w);
                for (i, v) in plane.iter().enumerate() {
                    // SAFETY: every value was made a sentinel first
                    let v = unsafe { v.assume_init() };
                    let want = if i < rows * w { (buf[phases_at::<P>(i / w, room)[(i % w) % P] + (i % w) / P] + bias).max(floor) } else { SENTINEL };
                    assert_eq!(v, want, "interleave, {P} phases, rows of {w}, value {i}, bias {bias}, floor {floor}");
                }
            }
        }
    }

    /// Where the runs of [`phases_agree`] start: after this many sentinels.
    const PHASES_FIRST: usize = 2;

    /// Sentinels after each run's room in [`phases_agree`].
    const PHASES_GAP: usize = 3;

    /// Row `y`'s runs in [`phases_agree`], a room and a gap apart.
    fn phases_at<const P: usize>(y: usize, room: usize) -> [usize; P] {
        std::array::from_fn(|q| PHASES_FIRST + (y * P + q) * (room + PHASES_GAP))
    }

    #[test]
    fn split_and_interleave_on_every_instruction_set() {
        phases_agree::<Lanes, 2>();
        phases_agree::<Lanes, 4>();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                phases_agree::<Pair, 2>();
                phases_agree::<Pair, 4>();
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                phases_agree::<std::arch::x86_64::__m512, 2>();
                phases_agree::<std::arch::x86_64::__m512, 4>();
            }
        }
    }

    /// The written-out `Bᵀ d` and `Aᵀ m` of each tile against its matrices, on every lane.
    #[test]
    fn the_written_out_transforms_are_the_matrices() {
        fn check<const M: usize, const A: usize, T: Tile<M, A>>() {
            let input: [Lanes; A] = std::array::from_fn(|k| std::array::from_fn(|lane| (k * 7 + lane * 3) as f32 / 8.0 - 2.0));
            let product = |matrix: &[[f32; A]], lane: usize, row: usize| (0..A).map(|k| matrix[row][k] * input[k][lane]).sum::<f32>();
            let (bt, at) = (T::bt(input), T::at(input));
            // A y, A = (Aᵀ)ᵀ, on M values
            let y: [Lanes; M] = std::array::from_fn(|k| std::array::from_fn(|lane| (k * 5 + lane * 11) as f32 / 16.0 - 3.0));
            let a = T::a(y);
            for lane in 0..LANES {
                assert!((0..A).all(|r| (bt[r][lane] - product(&T::BT, lane, r)).abs() < 1e-5), "Bᵀ of F({M}x{M}), lane {lane}");
                assert!((0..M).all(|r| (at[r][lane] - product(&T::AT, lane, r)).abs() < 1e-5), "Aᵀ of F({M}x{M}), lane {lane}");
                assert!((0..A).all(|r| (a[r][lane] - (0..M).map(|k| T::AT[k][r] * y[k][lane]).sum::<f32>()).abs() < 1e-5), "A of F({M}x{M}), lane {lane}");
            }
        }
        check::<2, 4, F2>();
        check::<4, 6, F4>();
    }

    /// Every micro-kernel this CPU runs, with the transforms on its instruction set (the
    /// portable one: scalar splits, tiles narrower than a run of lanes), on the shapes above.
    #[test]
    fn every_kernel_gives_the_same_convolution() {
        let kernels = Kernel::available();
        for (case, (xs, c_out, win)) in [([3, 5, 9, 11], 7, Window::square(3).padding(Padding::Same)), ([20, 16, 7, 7], 17, Window::square(3))].into_iter().enumerate() {
            let (x, w) = (filled(xs, case), filled([c_out, xs[1], 3, 3], case + 10));
            let g = win.geometry(xs[2], xs[3]).unwrap();
            let want = reference::conv2d(x.view(), w.view(), None, &win).unwrap();
            for &kernel in &kernels {
                for size in SIZES {
                    let err = max_error(&forward_on(size, kernel, x.view(), w.view(), Epilogue::bias(None), &g), &want);
                    assert!(err < 1e-4, "case {case}, {size:?} on {} {}x{}: {err}", kernel.name(), kernel.mr, kernel.nr);
                }
            }
        }
    }

    /// Several tasks on 1, 2 and 3 threads: the same values bit for bit.
    #[test]
    fn the_same_values_on_any_number_of_threads() {
        let (x, w) = (filled([50, 16, 12, 12], 1), filled([16, 16, 3, 3], 2));
        let g = Window::square(3).padding(Padding::Same).geometry(12, 12).unwrap();
        // 6 x 7 tiles per sample (F(2x2): one per row dropped), 16 + 16 channels: the batch
        // spans several tasks; F(4x4)'s 3 x 4 tiles of 36 values too
        const { assert!(TASK_VALUES / (16 * 32 * 6 * 7) < 50 && TASK_VALUES / (36 * 32 * 3 * 4) < 50) };
        for size in SIZES {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| forward(size, x.view(), w.view(), Epilogue::bias(None), &g))
            };
            let one = run(1);
            assert_eq!(run(2), one, "{size:?}");
            assert_eq!(run(3), one, "{size:?}");
        }
    }

    /// The filter gradient's too: several tasks (the first test's shape) on 1, 2 and 3
    /// threads, bit for bit.
    #[test]
    fn the_same_filter_gradient_on_any_number_of_threads() {
        let (x, dy) = (filled([50, 16, 12, 12], 1), filled([50, 16, 12, 12], 2));
        let g = Window::square(3).padding(Padding::Same).geometry(12, 12).unwrap();
        for size in SIZES {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| filter_gradient_on(size, Kernel::best(), x.view(), dy.view(), &g))
            };
            let one = run(1);
            assert!(one.0.iter().any(|&v| v != 0.0), "{size:?}: a gradient was computed");
            assert_eq!(run(2), one, "{size:?}");
            assert_eq!(run(3), one, "{size:?}");
        }
    }

    /// A part-filled last strip (9 samples of 7x7: strips of seven for F(4x4), of eight for
    /// F(2x2), all in one task with 8 channels) adds nothing of the previous strip's samples,
    /// left in the buffers, to the filter gradient: against the naive loops.
    #[test]
    fn a_part_filled_strip_adds_only_its_samples() {
        let win = Window::square(3).padding(Padding::Same);
        let g = win.geometry(7, 7).unwrap();
        const { assert!(TASK_VALUES / (36 * 16 * 2 * 15) >= 2 && TASK_VALUES / (16 * 16 * 4 * 33) >= 2) };
        let (x, w, dy) = (filled([9, 8, 7, 7], 5), filled([8, 8, 3, 3], 6), filled([9, 8, 7, 7], 7));
        let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap().dw;
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for size in SIZES {
            assert!(Grid::of::<4>(&g).strip == 7 && Grid::of::<2>(&g).strip == 8);
            let (dw, _) = pool.install(|| filter_gradient_on(size, Kernel::best(), x.view(), dy.view(), &g));
            let err = max_error(&dw, &want);
            assert!(err < 1e-5 * scale, "{size:?}: {err} (gradients up to {scale})");
        }
    }

    /// A layer's split strips are kept for its next call (one thread: one pool): after a
    /// batch with non-finite values, a clean batch of fewer samples than a strip (the others'
    /// places keep the first batch's) gives the naive loops' outputs and filter gradient, for
    /// both tiles.
    #[test]
    fn kept_strips_carry_nothing_into_the_next_call() {
        let win = Window::square(3).padding(Padding::Same);
        let g = win.geometry(7, 7).unwrap();
        let (mut dirty, x, w, dy) = (filled([9, 16, 7, 7], 1), filled([3, 16, 7, 7], 2), filled([16, 16, 3, 3], 3), filled([3, 16, 7, 7], 4));
        let dirty_dy = filled([9, 16, 7, 7], 5);
        dirty.slice_mut(ndarray::s![.., 3, 2.., ..]).fill(f32::NAN);
        let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap();
        let want_y = reference::conv2d(x.view(), w.view(), None, &win).unwrap();
        let scale = want.dw.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for size in SIZES {
            let (y, dw) = pool.install(|| {
                forward(size, dirty.view(), w.view(), Epilogue::bias(None), &g);
                filter_gradient_on(size, Kernel::best(), dirty.view(), dirty_dy.view(), &g);
                (forward(size, x.view(), w.view(), Epilogue::bias(None), &g), filter_gradient_on(size, Kernel::best(), x.view(), dy.view(), &g).0)
            });
            assert!(max_error(&y, &want_y) < 1e-4, "{size:?}: y");
            assert!(max_error(&dw, &want.dw) < 1e-5 * scale, "{size:?}: dw");
        }
    }

    /// [`transpose_groups`] against its definition on every instruction set, into both
    /// layouts: each value where [`Groups::at`] says, nothing else written.
    fn transposes_agree<V: Vector>() {
        let (rows, stride, len) = (12, 45, 40);
        let src: Vec<f32> = (0..rows * stride).map(|i| i as f32).collect();
        for groups in [Groups::Slivers { mr: 4, steps: 40 }, Groups::Slivers { mr: 8, steps: 48 }, Groups::Rows { width: 20 }] {
            let mut dst = vec![-1.0f32; 2000];
            transpose_groups::<V>(&src, stride, rows, len, groups, &mut dst);
            for r in 0..rows {
                for t in 0..len {
                    assert_eq!(dst[groups.at(r - r % 4, t) + r % 4], src[r * stride + t], "row {r}, step {t}");
                }
            }
            assert_eq!(dst.iter().filter(|&&v| v != -1.0).count(), rows * len, "only the groups written");
        }
    }

    #[test]
    fn transposes_on_every_instruction_set() {
        transposes_agree::<Lanes>();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                transposes_agree::<Pair>();
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                transposes_agree::<std::arch::x86_64::__m512>();
            }
        }
    }

    /// The filter gradient's tile: F(4x4) where it fits (28x28), else F(2x2) (14x14, 7x7).
    #[test]
    fn the_tile_of_the_filter_gradient() {
        let same = Window::square(3).padding(Padding::Same);
        let size = |side: usize| gradient_size(&same.geometry(side, side).unwrap());
        assert_eq!([size(28), size(14), size(7)], [Size::F4, Size::F2, Size::F2]);
    }

    /// Samples side by side where their padding lets neighbours share a column (7x7: 7 of
    /// them, F(4x4)'s two tiles a row each; asymmetric padding needs its larger side); one
    /// sample a row where they cannot share (28x28: more would leave as many lanes empty).
    #[test]
    fn the_grid_of_the_samples() {
        let same = Window::square(3).padding(Padding::Same);
        assert_eq!(Grid::of::<4>(&same.geometry(7, 7).unwrap()), Grid { th: 2, tw: 2, strip: 7, row: 15 });
        assert_eq!(Grid::of::<2>(&same.geometry(7, 7).unwrap()), Grid { th: 4, tw: 4, strip: 8, row: 33 });
        assert_eq!(Grid::of::<4>(&same.geometry(28, 28).unwrap()), Grid { th: 7, tw: 7, strip: 1, row: 8 });
        // 6 wide, padding 0 and 2: two F(4x4) tiles reach 8 = 6 + 2 columns, F(2x2)'s three 6
        let lopsided = Window::square(3).padding(Padding::Explicit { top: 1, bottom: 1, left: 0, right: 2 }).geometry(6, 6).unwrap();
        assert!(Grid::of::<4>(&lopsided).strip > 1);
        assert_eq!(Grid::of::<2>(&lopsided).strip, 1);
    }

    /// A part-filled last strip leaves the previous strip's samples in the buffer's other
    /// places: their tiles are computed and dropped, and neither they nor a neighbour's
    /// non-finite values reach another sample's outputs (one thread: one buffer for every
    /// strip).
    #[test]
    fn strips_keep_their_samples_apart() {
        let win = Window::square(3).padding(Padding::Same);
        let g = win.geometry(7, 7).unwrap();
        // 64 → 64 channels: a task is one strip of 7; 9 samples leave 5 places of the second
        let (mut x, w) = (filled([9, 64, 7, 7], 3), filled([64, 64, 3, 3], 4));
        x.slice_mut(ndarray::s![6, 5, 3, ..]).fill(f32::NAN);
        x[[1, 0, 0, 0]] = f32::INFINITY;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let y = pool.install(|| forward(Size::F4, x.view(), w.view(), Epilogue::bias(None), &g));
        let want = reference::conv2d(x.view(), w.view(), None, &win).unwrap();
        for s in [0, 2, 5, 7, 8] {
            let (y_s, want_s) = (y.index_axis(Axis(0), s), want.index_axis(Axis(0), s));
            // F(4x4)'s rounding over 576 products: relative to the outputs' size
            let scale = want_s.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = max_error(&y_s.to_owned().insert_axis(Axis(0)), &want_s.to_owned().insert_axis(Axis(0)));
            assert!(err < 1e-5 * scale, "sample {s}: {err} (outputs up to {scale})");
        }
        assert!(y.index_axis(Axis(0), 6).iter().any(|v| v.is_nan()) && y.index_axis(Axis(0), 1).iter().any(|v| !v.is_finite()), "the non-finite samples' own outputs");
    }

    #[test]
    fn the_shapes_it_takes() {
        let same = Window::square(3).padding(Padding::Same);
        for (side, pad) in [(28, Padding::Same), (13, Padding::Valid), (8, Padding::Explicit { top: 2, bottom: 0, left: 1, right: 2 })] {
            assert!(applies(&Window::square(3).padding(pad).geometry(side, side).unwrap()), "{side}x{side}, {pad:?}");
        }
        assert!(!applies(&same.stride(2).geometry(28, 28).unwrap()), "stride 2");
        assert!(!applies(&Window::square(5).padding(Padding::Same).geometry(28, 28).unwrap()), "5x5");
        assert!(!applies(&same.dilation(2).geometry(28, 28).unwrap()), "dilation");
        assert!(!applies(&Window::square(3).padding(Padding::uniform(3)).geometry(8, 8).unwrap()), "padding past the reach");
    }

    /// [`suits`] on ResNet-20's stages and around its limits, for every instruction set.
    #[test]
    fn the_tile_it_chooses() {
        let same = Window::square(3).padding(Padding::Same);
        for kernel in ["avx512", "avx2+fma", "portable"] {
            let choice = |side: usize, c_in: usize, c_out: usize| suits_on(kernel, &same.geometry(side, side).unwrap(), c_in, c_out);
            let (vector, avx512) = (kernel != "portable", kernel == "avx512");
            let if_vector = |size: Size| Some(size).filter(|_| vector);
            assert_eq!(choice(28, 16, 16), if_vector(Size::F4), "{kernel}: stage 1");
            assert_eq!(choice(14, 32, 32), if_vector(Size::F2), "{kernel}: stage 2");
            assert_eq!(choice(7, 64, 64), if_vector(Size::F4).filter(|_| !avx512), "{kernel}: stage 3 (F(4x4) in strips of 7 samples computes 1.40 outputs per output)");
            assert_eq!(choice(7, 128, 128), if_vector(Size::F4).filter(|_| !avx512), "{kernel}: 7x7, 128 channels");
            assert_eq!(choice(7, 32, 32), None, "{kernel}: 7x7, 32 channels");
            assert_eq!(choice(14, 64, 64), if_vector(Size::F2).filter(|_| !avx512), "{kernel}: 14x14, 64 channels (F(2x2) fits)");
            assert_eq!(choice(5, 64, 64), None, "{kernel}: 5x5 (2.7 outputs per output)");
            assert_eq!(choice(8, 64, 64), None, "{kernel}: 8x8 (F(2x2) computes 1.25 outputs per output)");
            assert_eq!(choice(16, 16, 16), None, "{kernel}: 16x16 (F(4x4) computes 1.25 outputs per output)");
            assert_eq!(choice(16, 32, 32), if_vector(Size::F2), "{kernel}: 16x16, 32 channels");
            assert_eq!(choice(14, 16, 16), None, "{kernel}: F(2x2) with 16 channels");
            assert_eq!(choice(28, 4, 16), None, "{kernel}: 4 input channels");
            assert_eq!(choice(28, 32, 64), if_vector(Size::F4).filter(|_| !avx512), "{kernel}: 64 filters");
            assert_eq!(choice(28, 32, 32), if_vector(Size::F4).filter(|_| !avx512), "{kernel}: 32 filters where F(4x4)'s tiles fit");
            assert_eq!(choice(14, 48, 48), if_vector(Size::F2).filter(|_| !avx512), "{kernel}: 48 filters");
            assert_eq!(suits_on(kernel, &same.stride(2).geometry(28, 28).unwrap(), 16, 16), None, "{kernel}: stride 2");
        }
    }
}
