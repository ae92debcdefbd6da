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
//! The input gradient of a 3x3 stride-1 convolution is itself a 3x3 stride-1 convolution
//! (`dy` with the filters turned, [`crate::implicit::transposed_operands`]), so it runs here
//! too; the filter gradient stays with the implicit product's dot products.
//!
//! **Not chosen by `conv2d`**: run it by name (`conv2d_with(Algorithm::Winograd, ..)`). On the
//! AVX-512 Zen 5 it was measured on (`cargo bench --bench conv`, 2 threads, medians, one run,
//! side by side), its 16 products take about half the implicit product's time, but the
//! transforms and the split and interleaved copies take more than that half: ResNet-20's
//! stages forward 1.58 / 1.39 / 1.72 ms against 1.46 / 1.26 / 1.40 implicit, forward +
//! backward 4.73 / 4.19 / 5.47 against 4.17 / 3.93 / 4.78; the reference network's conv2
//! forward 0.96 against 0.92, forward + backward 3.07 against 3.12 (level). With 16–64
//! channels the transforms' work (proportional to `c_in + c_out` per tile) is not small beside
//! the products' (`c_in·c_out`), and `V` and `M` are four times the input and the output.

use crate::gemm::{pack, Kernel, Rows};
use crate::threads::Scratch;
use crate::window::Geometry;
use ndarray::{Array3, Array4, ArrayView1, ArrayView3, ArrayView4, ArrayViewMut4, Axis};
use rayon::prelude::*;

/// Transformed tiles per task, times 16·(c_in + c_out): `V` and `M` of a task (512 KiB)
/// should stay in L2 between the transform and the products.
const TASK_VALUES: usize = 1 << 17;

/// Whether the shape is one Winograd's F(2x2, 3x3) computes: a 3x3 kernel, stride 1, no
/// dilation, padding within the kernel's reach (2) on every side, so that its input gradient
/// is one too.
pub(crate) fn applies(g: &Geometry) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1) && [g.pad_top, g.pad_bottom, g.pad_left, g.pad_right].iter().all(|&p| p <= 2)
}

/// Values of the work buffers a thread needs for one sample (`V`, `M` and the split sample),
/// for the caller to check before any work: a huge image could otherwise fail to allocate
/// mid-way.
pub(crate) fn work_values(g: &Geometry, c_in: usize, c_out: usize) -> usize {
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let per_sample = th * (tw + 1);
    let tiles = (16 * (c_in + c_out + 8)).saturating_mul(per_sample + 2 * LANES + 32);
    tiles.saturating_add((4 * c_in).saturating_mul((th + 1) * (tw + 1)))
}

/// The filters transformed, `U[ξ] = G g Gᵀ` for every filter and input channel, packed for the
/// micro-kernel: `U[ξ]` (`[c_out, c_in]`) as the A operand of product `ξ`, one after another.
fn transformed_filters(w: ArrayView4<f32>, kernel: &Kernel) -> Vec<f32> {
    let (c_out, c_in, _, _) = w.dim();
    let mut u = Array3::<f32>::zeros((16, c_out, c_in));
    for co in 0..c_out {
        for ci in 0..c_in {
            let g = |y: usize, x: usize| w[[co, ci, y, x]];
            // G g: the filter's columns transformed (4 x 3)
            let gg: [[f32; 3]; 4] = std::array::from_fn(|r| {
                std::array::from_fn(|x| match r {
                    0 => g(0, x),
                    1 => 0.5 * (g(0, x) + g(1, x) + g(2, x)),
                    2 => 0.5 * (g(0, x) - g(1, x) + g(2, x)),
                    _ => g(2, x),
                })
            });
            // (G g) Gᵀ: then its rows (4 x 4)
            for (r, row) in gg.iter().enumerate() {
                let t = [row[0], 0.5 * (row[0] + row[1] + row[2]), 0.5 * (row[0] - row[1] + row[2]), row[2]];
                for (c, v) in t.into_iter().enumerate() {
                    u[[4 * r + c, co, ci]] = v;
                }
            }
        }
    }
    let mut packed = Vec::new();
    let mut one = Vec::new();
    for u_xi in u.outer_iter() {
        pack(&mut one, &u_xi, (0, 0), false, c_out, kernel.mr, c_in);
        packed.extend_from_slice(&one);
    }
    packed
}

/// `y = w ⊛ x + b` by F(2x2, 3x3), for a geometry that [`applies`] (checked by the caller).
pub(crate) fn forward(x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, g: &Geometry) -> Array4<f32> {
    forward_on(Kernel::best(), x, w, b, g)
}

/// [`forward`] on the micro-kernel given, the transforms on its instruction set (the tests run
/// every kernel the CPU has).
fn forward_on(kernel: Kernel, x: ArrayView4<f32>, w: ArrayView4<f32>, b: Option<ArrayView1<f32>>, g: &Geometry) -> Array4<f32> {
    let (n, c_in, _, _) = x.dim();
    let c_out = w.dim().0;
    // tiles: th x tw blocks of 2x2 outputs; each reads a 4x4 tile of the padded sample
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let per_sample = th * (tw + 1);
    let task = (TASK_VALUES / (16 * (c_in + c_out) * per_sample)).clamp(1, n.max(1));
    // rows of V and M: a task's tiles, room for the last run of lanes, whole slivers
    let cols = (task * per_sample + LANES).next_multiple_of(kernel.nr);
    let shape = Shape { c_in, c_out, th, tw, cols, rows: Rows::new((0..c_in).map(|ci| ci * cols).collect()), filters: transformed_filters(w, &kernel), kernel };
    let mut y = Array4::zeros((n, c_out, g.oh, g.ow));
    y.axis_chunks_iter_mut(Axis(0), task).into_par_iter().zip(x.axis_chunks_iter(Axis(0), task)).for_each_init(
        || Buffers {
            padded: vec![0.0; c_in * 4 * (th + 1) * (tw + 1) + 2 * LANES],
            v: Scratch::matrix(16 * c_in, cols),
            m: Scratch::matrix(16 * c_out.next_multiple_of(kernel.mr), cols),
            ys: Scratch::matrix(8, cols),
        },
        |buffers, (mut y_task, x_task)| run(&shape, g, b, x_task, y_task.view_mut(), buffers),
    );
    y
}

/// What every task of a layer shares: sizes, the packed transformed filters, the kernel.
struct Shape {
    c_in: usize,
    c_out: usize,
    /// Rows and columns of tiles per sample.
    th: usize,
    tw: usize,
    /// Columns of `V` and `M`, a whole number of the kernel's tiles.
    cols: usize,
    /// Where the kernel finds row `ci` of a `V[ξ]`.
    rows: Rows,
    filters: Vec<f32>,
    kernel: Kernel,
}

/// A thread's work buffers: a padded sample (made zero: the image lands on the same values
/// for every sample of a call, so the padding stays zero), `V` and `M` of a task, a channel's
/// outputs.
struct Buffers {
    padded: Vec<f32>,
    v: Scratch,
    m: Scratch,
    ys: Scratch,
}

/// A task on the instruction set of the layer's micro-kernel: the transforms are plain loops
/// over runs of [`LANES`] values, compiled once per instruction set and chosen here.
fn run(shape: &Shape, g: &Geometry, b: Option<ArrayView1<f32>>, x: ArrayView4<f32>, y: ArrayViewMut4<f32>, buffers: &mut Buffers) {
    match shape.kernel.name() {
        // SAFETY: `Kernel::best` chose this kernel, or a test did after checking, only where the
        // CPU has its instruction set.
        #[cfg(target_arch = "x86_64")]
        "avx512" => unsafe { run_avx512(shape, g, b, x, y, buffers) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        "avx2+fma" => unsafe { run_avx2(shape, g, b, x, y, buffers) },
        _ => steps::<false>(shape, g, b, x, y, buffers),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512(shape: &Shape, g: &Geometry, b: Option<ArrayView1<f32>>, x: ArrayView4<f32>, y: ArrayViewMut4<f32>, buffers: &mut Buffers) {
    steps::<true>(shape, g, b, x, y, buffers)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(shape: &Shape, g: &Geometry, b: Option<ArrayView1<f32>>, x: ArrayView4<f32>, y: ArrayViewMut4<f32>, buffers: &mut Buffers) {
    steps::<false>(shape, g, b, x, y, buffers)
}

/// Transform the inputs, multiply, transform the products back. `AVX512`: split and
/// interleave rows with AVX-512's two-register permutes (see [`Rows2`]).
#[inline(always)]
fn steps<const AVX512: bool>(shape: &Shape, g: &Geometry, b: Option<ArrayView1<f32>>, x: ArrayView4<f32>, mut y: ArrayViewMut4<f32>, buffers: &mut Buffers) {
    let Shape { c_in, c_out, th, tw, cols, ref rows, ref filters, kernel } = *shape;
    let Buffers { padded, v, m, ys } = buffers;
    let (mut v, mut m, mut ys) = (v.view_mut(), m.view_mut(), ys.view_mut());
    let v = v.as_slice_mut().expect("scratch is contiguous");
    let per_sample = th * (tw + 1);
    for (s, x_i) in x.outer_iter().enumerate() {
        pad_split::<AVX512>(x_i, g, (th + 1, tw + 1), padded);
        transform_input(padded, shape, s * per_sample, v);
    }
    let tiles = x.dim().0 * per_sample;
    let u_len = filters.len() / 16;
    let m = m.as_slice_mut().expect("scratch is contiguous");
    for xi in 0..16 {
        let v_xi = &v[xi * c_in * cols..(xi + 1) * c_in * cols];
        for jc in (0..tiles).step_by(kernel.nr) {
            for (ir, a) in filters[xi * u_len..(xi + 1) * u_len].chunks_exact(kernel.mr * c_in).enumerate() {
                // the kernel writes its tile straight into M
                let at = m_index(shape, xi, ir * kernel.mr, jc);
                kernel.run(c_in, a, &v_xi[jc..], rows, &mut m[at..at + kernel.mr * kernel.nr]);
            }
        }
    }
    // channel co's outputs are transformed into one half of ys while channel co - 1's, in the
    // other half, are scattered: read right after they were written, the values would wait
    // for the stores (a load that straddles several recent stores is not forwarded)
    let ys = ys.as_slice_mut().expect("scratch is contiguous");
    let (mut fresh, mut ready) = ys.split_at_mut(4 * cols);
    for co in 0..=c_out {
        if co < c_out {
            transform_output(m, shape, co, tiles, fresh);
        }
        if let Some(prev) = co.checked_sub(1) {
            let bias = b.map_or(0.0, |b| b[prev]);
            for (s, mut y_i) in y.outer_iter_mut().enumerate() {
                let mut plane = y_i.index_axis_mut(Axis(0), prev);
                scatter::<AVX512>(ready, cols, s * per_sample, tw, bias, plane.as_slice_mut().expect("y is standard layout"), g.ow);
            }
        }
        std::mem::swap(&mut fresh, &mut ready);
    }
}

/// Values per vector operation of the transforms (a row of tiles is computed this many at
/// a time, the last run past the row's end into room left for it): one AVX-512 register.
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// # Safety
/// `at + LANES <= s.len()` (the transforms check their whole range once, before the loops:
/// a bounds check per vector load would cost as much as the arithmetic).
#[inline(always)]
unsafe fn load(s: &[f32], at: usize) -> Lanes {
    debug_assert!(at + LANES <= s.len());
    // SAFETY: the caller's promise.
    unsafe { s.as_ptr().add(at).cast::<Lanes>().read_unaligned() }
}

/// # Safety
/// As [`load`].
#[inline(always)]
unsafe fn put(s: &mut [f32], at: usize, v: Lanes) {
    debug_assert!(at + LANES <= s.len());
    // SAFETY: the caller's promise.
    unsafe { s.as_mut_ptr().add(at).cast::<Lanes>().write_unaligned(v) }
}

#[inline(always)]
fn add(a: Lanes, b: Lanes) -> Lanes {
    let mut sum = a;
    for i in 0..LANES {
        sum[i] += b[i];
    }
    sum
}

#[inline(always)]
fn sub(a: Lanes, b: Lanes) -> Lanes {
    let mut difference = a;
    for i in 0..LANES {
        difference[i] -= b[i];
    }
    difference
}

/// Writes `x` (`[c_in, h, w]`) padded as the geometry says, each channel as four phase
/// planes `Q[p][q]` (`rows x row` values each): padded value `(y, x)` at `Q[y % 2][x % 2]`,
/// row `y / 2`, column `x / 2`. Zeros around and after the image.
#[inline(always)]
fn pad_split<const AVX512: bool>(x: ArrayView3<f32>, g: &Geometry, (rows, row): (usize, usize), padded: &mut [f32]) {
    let phase = rows * row;
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    // x's value i lands in column pad_left + i: the even i in one phase, the odd i in the other
    let (q_even, q_odd) = (g.pad_left % 2, 1 - g.pad_left % 2);
    let (c_even, c_odd) = (g.pad_left / 2, g.pad_left.div_ceil(2));
    for (planes, x_c) in padded.chunks_exact_mut(4 * phase).zip(x.chunks_exact(g.h * g.w)) {
        for (iy, x_row) in x_c.chunks_exact(g.w).enumerate() {
            let y = g.pad_top + iy;
            let start = |q: usize, col: usize| (2 * (y % 2) + q) * phase + (y / 2) * row + col;
            let (even_at, odd_at) = (start(q_even, c_even), start(q_odd, c_odd));
            Rows2 { even: even_at, odd: odd_at }.split::<AVX512>(x_row, planes);
        }
    }
}

/// `V[ξ][ci][first + t] = (Bᵀ d B)[ξ]` for every tile `d` of the sample, tiles numbered
/// `t = ty·row + tx` (`row = tw + 1`: one tile per row of tiles is computed and dropped),
/// [`LANES`] tiles at a time. Value `(r, c)` of tile `t` is phase plane `Q[r % 2][c % 2]`
/// at `t + (r / 2)·row + c / 2`: for every `r` and `c`, a run of consecutive tiles reads a
/// run of consecutive values, so the whole transform is vector loads, additions and stores.
#[inline(always)]
fn transform_input(padded: &[f32], shape: &Shape, first: usize, v: &mut [f32]) {
    let Shape { c_in, th, tw, cols, .. } = *shape;
    let row = tw + 1;
    let phase = (th + 1) * row;
    let step = c_in * cols;
    // the furthest read: the last channel's last phase plane, a column and a row of tiles on
    // from the last run; the furthest write: the last product's last channel, the last run
    assert!(padded.len() >= 4 * c_in * phase + 1 + LANES, "padded sample too short");
    assert!(v.len() >= 16 * step && first + th * row + LANES <= cols, "V too short");
    for ci in 0..c_in {
        let q = |p: usize, c: usize| ci * 4 * phase + (2 * p + c % 2) * phase + c / 2;
        for t in (0..th * row).step_by(LANES) {
            // SAFETY: t < th·row, so every read ends before 4·c_in·phase + 1 + LANES and every
            // write before 16·step (asserted above).
            unsafe {
                // Bᵀ on each of the tiles' four columns (rows r: phase r % 2, r / 2 rows of tiles down)
                let (d0, d1) = (rows_bt(padded, q(0, 0) + t, q(1, 0) + t, row), rows_bt(padded, q(0, 1) + t, q(1, 1) + t, row));
                let (d2, d3) = (rows_bt(padded, q(0, 2) + t, q(1, 2) + t, row), rows_bt(padded, q(0, 3) + t, q(1, 3) + t, row));
                for i in 0..4 {
                    // then B: V[4i + j]
                    let at = 4 * i * step + ci * cols + first + t;
                    put(v, at, sub(d0[i], d2[i]));
                    put(v, at + step, add(d1[i], d2[i]));
                    put(v, at + 2 * step, sub(d2[i], d1[i]));
                    put(v, at + 3 * step, sub(d1[i], d3[i]));
                }
            }
        }
    }
}

/// `Bᵀ d` for one column of [`LANES`] tiles: its rows 0 and 2 from the even phase plane at
/// `even` (one row of tiles apart), rows 1 and 3 from the odd one at `odd`.
///
/// # Safety
/// As [`load`], for `odd + row`.
#[inline(always)]
unsafe fn rows_bt(padded: &[f32], even: usize, odd: usize, row: usize) -> [Lanes; 4] {
    // SAFETY: the caller's promise (odd > even).
    let (d0, d1, d2, d3) = unsafe { (load(padded, even), load(padded, odd), load(padded, even + row), load(padded, odd + row)) };
    [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)]
}

/// Where product `ξ`'s value for output channel `co` and tile `t` lies in `M`: `M` holds the
/// micro-kernel's `mr x nr` tiles as it writes them (no copy into rows), product after
/// product, each `c_out` (rounded up to `mr`) by `cols`.
#[inline(always)]
fn m_index(shape: &Shape, xi: usize, co: usize, t: usize) -> usize {
    let Kernel { mr, nr, .. } = shape.kernel;
    xi * m_len(shape) + (co / mr) * shape.cols * mr + (co % mr) * nr + (t / nr) * mr * nr + t % nr
}

/// The values of one product in `M`.
#[inline(always)]
fn m_len(shape: &Shape) -> usize {
    shape.c_out.next_multiple_of(shape.kernel.mr) * shape.cols
}

/// [`LANES`] values of `M[ξ]` for output channel `co` from tile `t` on (`t` a multiple of
/// `LANES`), given `at = m_index(shape, 0, co, t)`: one run, or several where the kernel's
/// tiles are narrower (the portable one).
#[inline(always)]
fn load_m(m: &[f32], shape: &Shape, at: usize, xi: usize, co: usize, t: usize) -> Lanes {
    let nr = shape.kernel.nr;
    if nr >= LANES {
        // SAFETY: a run inside one of the kernel's tiles (t is a multiple of LANES, nr of
        // LANES), inside M (checked by transform_output).
        return unsafe { load(m, xi * m_len(shape) + at) };
    }
    let mut lanes = [0.0; LANES];
    for (k, piece) in lanes.chunks_mut(nr).enumerate() {
        piece.copy_from_slice(&m[m_index(shape, xi, co, t + k * nr)..][..nr]);
    }
    lanes
}

/// `M A` for one row of [`LANES`] tiles' products (row `i` of `M`): its four columns to two.
#[inline(always)]
fn columns_a(m: &[f32], shape: &Shape, at: usize, i: usize, co: usize, t: usize) -> (Lanes, Lanes) {
    let (a, b) = (load_m(m, shape, at, 4 * i, co, t), load_m(m, shape, at, 4 * i + 1, co, t));
    let (c, d) = (load_m(m, shape, at, 4 * i + 2, co, t), load_m(m, shape, at, 4 * i + 3, co, t));
    (add(add(a, b), c), sub(sub(b, c), d))
}

/// The 2x2 outputs of every tile of the task for output channel `co`, `Aᵀ M A`, from
/// `M[ξ][co][t]`: into `ys` as four rows (`y00`, `y01`, `y10`, `y11`) of `cols` values.
#[inline(always)]
fn transform_output(m: &[f32], shape: &Shape, co: usize, tiles: usize, ys: &mut [f32]) {
    let cols = shape.cols;
    assert!(m.len() >= 16 * m_len(shape) && ys.len() >= 4 * cols && tiles + LANES <= cols, "M or ys too short");
    for t in (0..tiles).step_by(LANES) {
        // M A: each row i's four columns to two, p_i0 and p_i1
        let at = m_index(shape, 0, co, t);
        let (p0, p1, p2, p3) = (columns_a(m, shape, at, 0, co, t), columns_a(m, shape, at, 1, co, t), columns_a(m, shape, at, 2, co, t), columns_a(m, shape, at, 3, co, t));
        // Aᵀ (M A): the four rows to two; ys rows y00, y01, y10, y11
        // SAFETY: t + LANES <= cols (asserted above).
        unsafe {
            put(ys, t, add(add(p0.0, p1.0), p2.0));
            put(ys, cols + t, add(add(p0.1, p1.1), p2.1));
            put(ys, 2 * cols + t, sub(sub(p1.0, p2.0), p3.0));
            put(ys, 3 * cols + t, sub(sub(p1.1, p2.1), p3.1));
        }
    }
}

/// One output plane (`[oh, ow]`, row-major) from `ys`: tile `(ty, tx)` of the sample whose
/// tiles start at `first` (`tw + 1` to a row of tiles) puts its 2x2 block at rows `2·ty..`,
/// columns `2·tx..` (cut at the plane's edges), plus the bias.
#[inline(always)]
fn scatter<const AVX512: bool>(ys: &[f32], cols: usize, first: usize, tw: usize, bias: f32, plane: &mut [f32], ow: usize) {
    for (oy, out) in plane.chunks_exact_mut(ow).enumerate() {
        let at = first + (oy / 2) * (tw + 1);
        Rows2 { even: 2 * (oy % 2) * cols + at, odd: (2 * (oy % 2) + 1) * cols + at }.interleave::<AVX512>(ys, bias, out);
    }
}

/// Two runs in one buffer, the even-numbered values of a row and its odd-numbered ones:
/// [`pad_split`] splits a row of the image into them, [`scatter`] interleaves two rows of
/// outputs from them. With AVX-512, 32 values at a time: two loads, two permutes
/// across both registers, two stores (masked at the row's end); else one value at a time.
struct Rows2 {
    even: usize,
    odd: usize,
}

impl Rows2 {
    /// `buf[even + i] = row[2i]`, `buf[odd + i] = row[2i + 1]`.
    #[inline(always)]
    fn split<const AVX512: bool>(&self, row: &[f32], buf: &mut [f32]) {
        let (evens, odds) = (row.len().div_ceil(2), row.len() / 2);
        assert!(self.even + evens <= buf.len() && self.odd + odds <= buf.len(), "split rows outside the buffer");
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: AVX512 is only true on CPUs with AVX-512F (run chose it); every masked
            // lane lies inside `row` or inside the runs asserted above.
            return unsafe { avx512::split(row, buf, self.even, self.odd) };
        }
        for (i, &v) in row.iter().enumerate() {
            buf[if i % 2 == 0 { self.even } else { self.odd } + i / 2] = v;
        }
    }

    /// `out[2i] = buf[even + i] + bias`, `out[2i + 1] = buf[odd + i] + bias`.
    #[inline(always)]
    fn interleave<const AVX512: bool>(&self, buf: &[f32], bias: f32, out: &mut [f32]) {
        let (evens, odds) = (out.len().div_ceil(2), out.len() / 2);
        assert!(self.even + evens <= buf.len() && self.odd + odds <= buf.len(), "interleaved rows outside the buffer");
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: as in `split`.
            return unsafe { avx512::interleave(buf, self.even, self.odd, bias, out) };
        }
        for (i, v) in out.iter_mut().enumerate() {
            *v = buf[if i % 2 == 0 { self.even } else { self.odd } + i / 2] + bias;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The first `n` lanes (at most 16).
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// See [`super::Rows2::split`].
    ///
    /// # Safety
    /// AVX-512F; `even + ⌈len/2⌉` and `odd + ⌊len/2⌋` inside `buf`.
    #[inline(always)]
    pub(super) unsafe fn split(row: &[f32], buf: &mut [f32], even: usize, odd: usize) {
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for i in (0..row.len()).step_by(32) {
            let n = row.len() - i;
            // SAFETY: masked lanes only, inside `row` and the caller's runs.
            unsafe {
                let a = _mm512_maskz_loadu_ps(mask(n), row.as_ptr().add(i));
                let b = _mm512_maskz_loadu_ps(mask(n.saturating_sub(16)), row.as_ptr().wrapping_add(i + 16));
                _mm512_mask_storeu_ps(buf.as_mut_ptr().add(even + i / 2), mask(n.div_ceil(2)), _mm512_permutex2var_ps(a, evens, b));
                _mm512_mask_storeu_ps(buf.as_mut_ptr().add(odd + i / 2), mask(n / 2), _mm512_permutex2var_ps(a, odds, b));
            }
        }
    }

    /// See [`super::Rows2::interleave`].
    ///
    /// # Safety
    /// AVX-512F; `even + ⌈len/2⌉` and `odd + ⌊len/2⌋` inside `buf` (`len` of `out`).
    #[inline(always)]
    pub(super) unsafe fn interleave(buf: &[f32], even: usize, odd: usize, bias: f32, out: &mut [f32]) {
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let bias = _mm512_set1_ps(bias);
        for i in (0..out.len()).step_by(32) {
            let n = out.len() - i;
            // SAFETY: masked lanes only, inside `out` and the caller's runs.
            unsafe {
                let e = _mm512_maskz_loadu_ps(mask(n.div_ceil(2)), buf.as_ptr().add(even + i / 2));
                let o = _mm512_maskz_loadu_ps(mask(n / 2), buf.as_ptr().add(odd + i / 2));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask(n), _mm512_add_ps(_mm512_permutex2var_ps(e, low, o), bias));
                _mm512_mask_storeu_ps(out.as_mut_ptr().wrapping_add(i + 16), mask(n.saturating_sub(16)), _mm512_add_ps(_mm512_permutex2var_ps(e, high, o), bias));
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
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    /// The forward against the naive loops: SAME and VALID, even and odd sizes (a last row or
    /// column of tiles cut in half), padding of 2 and 0 on opposite sides, a bias, channel
    /// counts that leave the kernel's slivers part empty, a batch of several tasks.
    #[test]
    fn forward_agrees_with_the_naive_loops() {
        let cases = [
            ([3, 5, 9, 11], 7, Window::square(3).padding(Padding::Same)),
            ([2, 4, 8, 8], 9, Window::square(3)),
            ([2, 3, 7, 6], 5, Window::square(3).padding(Padding::Explicit { top: 2, bottom: 0, left: 0, right: 2 })),
            ([40, 16, 14, 14], 17, Window::square(3).padding(Padding::Same)),
        ];
        for (case, (xs, c_out, win)) in cases.into_iter().enumerate() {
            let (x, w) = (filled(xs, case), filled([c_out, xs[1], 3, 3], case + 10));
            let b = Array::from_shape_fn(c_out, |i| i as f32 / 4.0);
            let g = win.geometry(xs[2], xs[3]).unwrap();
            assert!(applies(&g));
            let y = forward(x.view(), w.view(), Some(b.view()), &g);
            let want = reference::conv2d(x.view(), w.view(), Some(b.view()), &win).unwrap();
            let err = max_error(&y, &want);
            assert!(err < 1e-4, "case {case}: {err}");
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
            let dx = forward(dy.view(), turned, None, &g_t);
            let want = reference::conv2d_backward(x.view(), w.view(), dy.view(), &win).unwrap().dx;
            let err = max_error(&dx, &want);
            assert!(err < 1e-4, "case {case}: {err}");
        }
    }

    /// Every micro-kernel this CPU runs, with the transforms on its instruction set (the
    /// portable one: scalar splits, tiles narrower than a run of lanes), on the shapes above.
    #[test]
    fn every_kernel_gives_the_same_convolution() {
        let mut kernels = vec![Kernel::PORTABLE];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                kernels.push(Kernel::AVX2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::AVX512);
            }
        }
        for (case, (xs, c_out, win)) in [([3, 5, 9, 11], 7, Window::square(3).padding(Padding::Same)), ([20, 16, 7, 7], 17, Window::square(3))].into_iter().enumerate() {
            let (x, w) = (filled(xs, case), filled([c_out, xs[1], 3, 3], case + 10));
            let g = win.geometry(xs[2], xs[3]).unwrap();
            let want = reference::conv2d(x.view(), w.view(), None, &win).unwrap();
            for &kernel in &kernels {
                let y = forward_on(kernel, x.view(), w.view(), None, &g);
                let err = max_error(&y, &want);
                assert!(err < 1e-4, "case {case}, {}: {err}", kernel.name());
            }
        }
    }

    /// Several tasks on 1, 2 and 3 threads: the same values bit for bit.
    #[test]
    fn the_same_values_on_any_number_of_threads() {
        let (x, w) = (filled([50, 16, 12, 12], 1), filled([16, 16, 3, 3], 2));
        let g = Window::square(3).padding(Padding::Same).geometry(12, 12).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| forward(x.view(), w.view(), None, &g))
        };
        let one = run(1);
        // 6 x 7 tiles per sample (one per row dropped), 16 + 16 channels: the batch spans several tasks
        const { assert!(TASK_VALUES / (16 * 32 * 6 * 7) < 50) };
        assert_eq!(run(2), one);
        assert_eq!(run(3), one);
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
}
