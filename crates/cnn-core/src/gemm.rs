//! The project's own matrix product for convolutions: `C = α·A·B + β·C`, packed and blocked the
//! way BLIS and OpenBLAS do it, with one micro-kernel written once and compiled for the
//! instruction set the CPU has (chosen at run time: AVX-512, AVX2 + FMA, or portable code).
//!
//! Why a second engine beside OpenBLAS: a convolution's per-sample products are small and thin
//! (ResNet-20's first stage is `16 x 784 x 144`, the reference network's conv2
//! `64 x 121 x 288`), the shapes where a general BLAS was measured losing half its speed on
//! an AVX-512 Xeon; and above all, an engine of the project's own can read B wherever its rows
//! are — in place in the lowered matrix, or straight from the padded image
//! (the products of `src/implicit.rs`, which never write the lowered matrix).
//! `cargo bench --bench gemm` measures both engines side by side on those shapes; on the
//! AVX-512 Zen 5 measured last (one thread, GFLOP/s) this one ran 169–211 where OpenBLAS ran
//! 157–207 (211 vs 157 on ResNet-20's first stage), and 193 vs 245 on a square 1024 product.
//!
//! ```text
//! for each block of KC rows of B (pc):
//!     for each block of MC rows of A (ic):          A's block packed into slivers MR tall
//!         for each sliver of B (jr):                the B sliver (KC x NR) stays in L1
//!             for each sliver of A (ir):
//!                 C[ir.., jr..] = α · A_sliver · B_sliver + β' · C[ir.., jr..]   (the micro-kernel)
//! ```
//!
//! The micro-kernel keeps an `MR x NR` tile of C in registers and, for each of the `KC`
//! steps, multiplies one column of A's sliver by one row of B's sliver into it (an outer
//! product: `MR x NR` fused multiply-adds). A's slivers are packed in the order the kernel
//! reads them, zero-padded at the edge. The kernel finds row `p` of B's sliver at
//! `offsets[p]` (`Rows`): a sliver whose rows are contiguous (the lowered matrix, `dy`) is
//! read in place, `ldb` apart — with 16 filters each sliver of B serves two slivers of A only,
//! and packing it would cost as much as half the product; other slivers (a transposed operand,
//! the narrower last one) are packed. Any strides are accepted.

use crate::error::{expect_shape, Result};
use ndarray::{ArrayView2, ArrayViewMut2};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which matrix-product engine convolutions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// OpenBLAS's `sgemm` (through ndarray): the reference engine.
    Blas,
    /// This module's packed product with its run-time-chosen micro-kernel.
    Own,
}

static ENGINE: AtomicU8 = AtomicU8::new(0);

/// The engine the *lowered* convolutions' products use (the implicit ones always run on this
/// module's kernel): [`Engine::Blas`] unless [`set_engine`] or the environment variable
/// `CNN_GEMM=own` chose this module's. OpenBLAS stays the default because it was faster in
/// whole networks: this engine packs a transposed operand (the filter gradient's `colsᵀ`)
/// value by value, where OpenBLAS transposes in vector registers.
pub fn engine() -> Engine {
    match ENGINE.load(Ordering::Relaxed) {
        1 => Engine::Blas,
        2 => Engine::Own,
        _ => {
            let chosen = if std::env::var("CNN_GEMM").is_ok_and(|v| v.eq_ignore_ascii_case("own")) { Engine::Own } else { Engine::Blas };
            set_engine(chosen);
            chosen
        }
    }
}

/// `c = alpha · a · b + beta · c` by the engine of [`engine`]: the one call every convolution
/// makes for its products.
pub(crate) fn mat_mul(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    match engine() {
        Engine::Blas => ndarray::linalg::general_mat_mul(alpha, a, b, beta, c),
        Engine::Own => product(alpha, a, b, beta, c),
    }
}

/// Chooses the engine for every convolution that follows (benchmarks compare them this way).
pub fn set_engine(engine: Engine) {
    ENGINE.store(if engine == Engine::Blas { 1 } else { 2 }, Ordering::Relaxed);
}

/// The instruction set of the micro-kernel this CPU runs: `avx512`, `avx2+fma` or `portable`
/// (`cargo xtask info` prints it).
pub fn kernel_name() -> &'static str {
    Kernel::best().name
}

/// `c = alpha · a · b + beta · c`, with `a`: `[m, k]`, `b`: `[k, n]`, `c`: `[m, n]`, any
/// strides, on this module's engine. With `beta = 0`, `c`'s old values are never read (NaN in
/// them does not leak).
///
/// # Errors
/// Shapes that do not agree: `b` must have `a`'s columns as rows, `c` must be `[m, n]`.
///
/// ```
/// use cnn_core::gemm::gemm;
/// use ndarray::{array, Array2};
/// let (a, b) = (array![[1.0f32, 2.0], [3.0, 4.0]], array![[5.0f32], [6.0]]);
/// let mut c = Array2::zeros((2, 1));
/// gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut()).unwrap();
/// assert_eq!(c, array![[17.0], [39.0]]);
/// assert!(gemm(1.0, &b.view(), &a.view(), 0.0, &mut c.view_mut()).is_err());
/// ```
pub fn gemm(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) -> Result<()> {
    expect_shape("gemm: rows of b (columns of a)", &[a.ncols()], &[b.nrows()])?;
    expect_shape("gemm: c", &[a.nrows(), b.ncols()], c.shape())?;
    product(alpha, a, b, beta, c);
    Ok(())
}

/// [`gemm`] on operands whose shapes the caller checked.
fn product(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    let ((m, k), n) = (a.dim(), b.ncols());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return scale_all(beta, c);
    }
    let kernel = Kernel::best();
    PACKED.with_borrow_mut(|(a_packed, b_packed, tile)| {
        tile.resize(kernel.mr * kernel.nr, 0.0);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // the first block of k scales the old C by beta, the next ones add to it
            let beta = if pc == 0 { beta } else { 1.0 };
            // where the kernel finds row p of a sliver of B: in place, or packed
            let in_place = Rows::new((0..kc).map(|p| p * b.strides()[0].max(0) as usize).collect());
            let packed = Rows::new((0..kc).map(|p| p * kernel.nr).collect());
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                // A's columns pc.. are the steps, its rows the values
                pack(a_packed, a, (ic, pc), false, mc, kernel.mr, kc);
                for jc in (0..n).step_by(kernel.nr) {
                    let (b_sliver, rows) = match b_sliver_in_place(b, (pc, jc), kc, kernel.nr) {
                        Some(values) => (values, &in_place),
                        None => {
                            // B's rows are the steps, its columns the values
                            pack(b_packed, b, (pc, jc), true, kernel.nr.min(n - jc), kernel.nr, kc);
                            (&b_packed[..], &packed)
                        }
                    };
                    for (ir, a_sliver) in a_packed.chunks_exact(kernel.mr * kc).enumerate() {
                        kernel.run(kc, a_sliver, b_sliver, rows, tile);
                        store(tile, kernel.nr, alpha, beta, c, (ic + ir * kernel.mr, jc), (ic + mc, n));
                    }
                }
            }
        }
    });
}

/// Rows of B multiplied at a time: a `KC x NR` sliver of B (32 KiB for AVX-512) stays in L1.
const KC: usize = 256;
/// Rows of A packed at a time: an `MC x KC` block (128 KiB) stays in L2.
const MC: usize = 128;

/// Where each row of a sliver of B starts, and the last of those starts (checked once against
/// the values the kernel is given, not at every tile).
pub(crate) struct Rows {
    offsets: Vec<usize>,
    last: usize,
}

impl Rows {
    pub(crate) fn new(offsets: Vec<usize>) -> Rows {
        let last = offsets.iter().copied().max().unwrap_or(0);
        Rows { offsets, last }
    }

    /// The offsets, and the largest of them.
    pub(crate) fn parts(&self) -> (&[usize], usize) {
        (&self.offsets, self.last)
    }
}

/// A micro-kernel for this CPU and the shape of its tile: it computes the `mr x nr` tile
/// `Σ_p a[p·mr + i] · b[offsets[p] + j]` over `kc` steps — A's sliver packed, each row of B's
/// sliver wherever `offsets` says (in a packed sliver, inside B itself, or inside an image:
/// see [`crate::implicit`]).
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    /// Rows of the tile (values of A per step).
    pub(crate) mr: usize,
    /// Columns of the tile (values of B per step).
    pub(crate) nr: usize,
    /// Its instruction set.
    name: &'static str,
    /// `tile` holds one or more tiles side by side (see [`Kernel::run_blocks`]).
    tile: fn(kc: usize, a: &[f32], b: &[f32], offsets: &[usize], tile: &mut [f32]),
}

impl Kernel {
    /// The widest kernel the CPU runs (its features checked once).
    pub(crate) fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") {
                    return Kernel::AVX512;
                }
                if has!("avx2") && has!("fma") {
                    return Kernel::AVX2;
                }
            }
            Kernel::PORTABLE
        })
    }

    pub(crate) const PORTABLE: Kernel = Kernel { mr: 4, nr: 8, name: "portable", tile: portable };
    #[cfg(target_arch = "x86_64")]
    pub(crate) const AVX2: Kernel = Kernel { mr: 6, nr: 16, name: "avx2+fma", tile: avx2::<6> };
    /// [`Kernel::AVX2`] on 4 rows: no empty rows for 16 or 32 of them.
    #[cfg(target_arch = "x86_64")]
    const AVX2_4: Kernel = Kernel { mr: 4, nr: 16, name: "avx2+fma", tile: avx2::<4> };
    #[cfg(target_arch = "x86_64")]
    pub(crate) const AVX512: Kernel = Kernel { mr: 8, nr: 32, name: "avx512", tile: avx512 };

    /// This kernel or one of its instruction set with fewer rows, whichever computes fewer
    /// rows of A for `rows` of them (the first on a tie: more rows per loaded B). With AVX2,
    /// 16 or 32 rows (ResNet-20's filters) take 4-row tiles, not 18 or 36 rows in 6-row ones:
    /// Winograd's products on an AVX2 EPYC (Zen 3), `layer_times resnet20 128`, three
    /// alternate rounds: a stage-2 block's forward 6.91 / 6.92 / 6.67 → 6.63 / 6.45 / 6.34 ms,
    /// a step 204.9 / 204.7 / 198.7 → 202.9 / 198.4 / 195.8.
    pub(crate) fn for_rows(self, rows: usize) -> Kernel {
        let computed = |k: &Kernel| rows.next_multiple_of(k.mr);
        #[cfg(target_arch = "x86_64")]
        if self.name == Kernel::AVX2.name && computed(&Kernel::AVX2_4) < computed(&self) {
            return Kernel::AVX2_4;
        }
        self
    }

    /// This kernel, or its instruction set's 4-row one where its rows are not a whole number
    /// of `group`s (Winograd's filter gradient transposes four channels at a time into its
    /// slivers).
    pub(crate) fn in_groups_of(self, group: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if !self.mr.is_multiple_of(group) && self.name == Kernel::AVX2.name {
            return Kernel::AVX2_4;
        }
        self
    }

    /// Every kernel this CPU runs, the portable one always (for the tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::PORTABLE];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                kernels.extend([Kernel::AVX2, Kernel::AVX2_4]);
            }
            if has!("avx512f") {
                kernels.push(Kernel::AVX512);
            }
        }
        kernels
    }

    /// Its instruction set: `avx512`, `avx2+fma` or `portable`.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Writes the tile (`mr x nr`, row-major) into `tile`.
    ///
    /// # Panics
    /// If a sliver is shorter than `kc` steps or a row of B's sliver ends past `b`.
    pub(crate) fn run(&self, kc: usize, a: &[f32], b: &[f32], rows: &Rows, tile: &mut [f32]) {
        assert_eq!(tile.len(), self.mr * self.nr, "micro-kernel tile");
        self.run_blocks(kc, a, b, rows, tile)
    }

    /// [`Kernel::run`] on the B slivers `nr` columns apart from `b` on, one tile each, the
    /// tiles one after another in `tile` (as many as it holds): one call for a row of tiles
    /// of the same A sliver (Winograd's products, whose `K` of 16 or 32 steps is short beside
    /// a call's fixed work).
    ///
    /// # Panics
    /// If a sliver is shorter than `kc` steps, `tile` is not a whole number of tiles, or a row
    /// of the last B sliver ends past `b`.
    pub(crate) fn run_blocks(&self, kc: usize, a: &[f32], b: &[f32], rows: &Rows, tile: &mut [f32]) {
        let blocks = tile.len() / (self.mr * self.nr);
        assert!(a.len() >= kc * self.mr && rows.offsets.len() >= kc && blocks > 0 && tile.len() == blocks * self.mr * self.nr, "micro-kernel operands");
        assert!(rows.last + blocks * self.nr <= b.len(), "a row of B's sliver is outside B");
        (self.tile)(kc, a, b, &rows.offsets[..kc], tile)
    }
}

/// The portable kernel: plain loops over a 4 x 8 tile, which the compiler keeps in registers
/// where it can (any CPU, any architecture).
fn portable(kc: usize, a: &[f32], b: &[f32], offsets: &[usize], tiles: &mut [f32]) {
    const MR: usize = 4;
    const NR: usize = 8;
    for (block, tile) in tiles.chunks_exact_mut(MR * NR).enumerate() {
        let mut acc = [[0.0f32; NR]; MR];
        for (a, &o) in a.chunks_exact(MR).zip(offsets).take(kc) {
            let b = &b[o + block * NR..][..NR];
            for i in 0..MR {
                for j in 0..NR {
                    acc[i][j] += a[i] * b[j];
                }
            }
        }
        tile.copy_from_slice(acc.as_flattened());
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512(kc: usize, a: &[f32], b: &[f32], offsets: &[usize], tile: &mut [f32]) {
    // SAFETY: chosen by `Kernel::best` only where the CPU has AVX-512F; `run_blocks` checked that
    // every row of every block's sliver lies inside `b`.
    unsafe { kernel_avx512(kc, a, b, offsets, tile) }
}

#[cfg(target_arch = "x86_64")]
fn avx2<const MR: usize>(kc: usize, a: &[f32], b: &[f32], offsets: &[usize], tile: &mut [f32]) {
    // SAFETY: chosen by `Kernel::best` (or its `for_rows`) only where the CPU has AVX2 and
    // FMA; `run_blocks` checked that every row of every block's sliver lies inside `b`.
    unsafe { kernel_avx2::<MR>(kc, a, b, offsets, tile) }
}

/// AVX-512: the 8 x 32 tile in 16 zmm registers; each step loads one row of B's sliver (two
/// registers) and broadcasts the 8 values of A's column, 16 fused multiply-adds.
///
/// # Safety
/// `b[offsets[p] + 32·block..][..32]` must lie inside `b` for every step and block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(kc: usize, a: &[f32], b: &[f32], offsets: &[usize], tiles: &mut [f32]) {
    use std::arch::x86_64::*;
    for (block, tile) in tiles.chunks_exact_mut(8 * 32).enumerate() {
        let b = b.as_ptr().wrapping_add(block * 32);
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        for (a, &o) in a.chunks_exact(8).zip(offsets).take(kc) {
            // SAFETY: the caller's promise: 32 values from `o` inside this block's sliver.
            let (b0, b1) = unsafe { (_mm512_loadu_ps(b.add(o)), _mm512_loadu_ps(b.add(o + 16))) };
            for i in 0..8 {
                let a_i = _mm512_set1_ps(a[i]);
                acc[i][0] = _mm512_fmadd_ps(a_i, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(a_i, b1, acc[i][1]);
            }
        }
        for (row, acc) in tile.chunks_exact_mut(32).zip(acc) {
            // SAFETY: a row of the tile holds 32 values.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[1]);
            }
        }
    }
}

/// AVX2 + FMA: the `MR` x 16 tile in `2·MR` ymm registers: 6 rows (12 registers, the classic
/// Haswell shape), or 4 where 6 would leave rows empty ([`Kernel::for_rows`]).
///
/// # Safety
/// `b[offsets[p] + 16·block..][..16]` must lie inside `b` for every step and block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const MR: usize>(kc: usize, a: &[f32], b: &[f32], offsets: &[usize], tiles: &mut [f32]) {
    use std::arch::x86_64::*;
    for (block, tile) in tiles.chunks_exact_mut(MR * 16).enumerate() {
        let b = b.as_ptr().wrapping_add(block * 16);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for (a, &o) in a.chunks_exact(MR).zip(offsets).take(kc) {
            // SAFETY: the caller's promise: 16 values from `o` inside this block's sliver.
            let (b0, b1) = unsafe { (_mm256_loadu_ps(b.add(o)), _mm256_loadu_ps(b.add(o + 8))) };
            for i in 0..MR {
                let a_i = _mm256_set1_ps(a[i]);
                acc[i][0] = _mm256_fmadd_ps(a_i, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(a_i, b1, acc[i][1]);
            }
        }
        for (row, acc) in tile.chunks_exact_mut(16).zip(acc) {
            // SAFETY: a row of the tile holds 16 values.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[1]);
            }
        }
    }
}

/// Rows of the filter gradient's products must be padded to a multiple of this many values:
/// the widest vector a [`Dots`] kernel loads (16 lanes of AVX-512).
pub(crate) const DOT_LEN: usize = 16;

/// The other shape of product a convolution needs: `C = A·Bᵀ` where **both** operands are
/// read along their rows, the filter gradient's `dw = dy · colsᵀ` (the sum runs along the
/// output positions, contiguous in `dy` and in each row of the lowered matrix alike). Packing
/// for the outer-product kernel above would transpose both; here each of the `nd x nx`
/// values of a block of C is a dot product of two rows, computed lanes-wide — a vector of
/// partial sums per value, `nd + nx` loads for `nd·nx` fused multiply-adds per step — and
/// the lanes are added up once at the end. The rows are found by offsets again, so `B`'s
/// rows are read straight from the padded image, as in the implicit forward.
///
/// The sum runs over several samples at once (`samples` blocks of `A` and `B`, `strides`
/// apart) so that the lanes are added up once per block of samples, not once per sample.
#[derive(Clone, Copy)]
pub(crate) struct Dots {
    /// Rows of A (of `dy`) per block.
    pub(crate) nd: usize,
    /// Rows of B (of the lowered matrix) per block.
    pub(crate) nx: usize,
    block: DotsFn,
}

/// `(a, b, samples, (a_stride, b_stride), a_rows, b_rows, len, out)`: see [`Dots::run`].
type DotsFn = fn(&[f32], &[f32], usize, (usize, usize), &[usize], &[usize], usize, &mut [f32]);

impl Dots {
    /// The widest kernel the CPU runs (its features checked once).
    pub(crate) fn best() -> Dots {
        static BEST: std::sync::OnceLock<Dots> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") {
                    return Dots::AVX512;
                }
                if has!("avx2") && has!("fma") {
                    return Dots::AVX2;
                }
            }
            Dots::PORTABLE
        })
    }

    const PORTABLE: Dots = Dots { nd: 2, nx: 4, block: dots_portable };
    #[cfg(target_arch = "x86_64")]
    const AVX2: Dots = Dots { nd: 2, nx: 6, block: dots_avx2 };
    #[cfg(target_arch = "x86_64")]
    const AVX512: Dots = Dots { nd: 4, nx: 6, block: dots_avx512 };

    /// Writes `out[i·nx + j] = Σ_s Σ_t a[s·a_stride + a_rows[i] + t] · b[s·b_stride + b_rows[j] + t]`
    /// (`t < len`, `s < samples`) for the block's `nd` rows of A and `nx` rows of B.
    ///
    /// # Panics
    /// If the rows are not `nd` and `nx`, `len` is not a multiple of [`DOT_LEN`], or a row
    /// ends past its operand.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(&self, a: &[f32], b: &[f32], samples: usize, strides: (usize, usize), a_rows: &[usize], b_rows: &[usize], len: usize, out: &mut [f32]) {
        assert!(a_rows.len() == self.nd && b_rows.len() == self.nx && out.len() == self.nd * self.nx && len % DOT_LEN == 0, "dot-product block operands");
        let end = |rows: &[usize], stride: usize| (samples.max(1) - 1) * stride + rows.iter().max().unwrap_or(&0) + len;
        assert!(end(a_rows, strides.0) <= a.len() && end(b_rows, strides.1) <= b.len(), "a row of the dot-product block is outside its operand");
        (self.block)(a, b, samples, strides, a_rows, b_rows, len, out)
    }
}

/// Portable: a 2 x 4 block, 8 lanes per value in plain loops (vectorised where the compiler can).
#[allow(clippy::too_many_arguments)]
fn dots_portable(a: &[f32], b: &[f32], samples: usize, (sa, sb): (usize, usize), a_rows: &[usize], b_rows: &[usize], len: usize, out: &mut [f32]) {
    const L: usize = 8;
    let mut acc = [[[0.0f32; L]; 4]; 2];
    for s in 0..samples {
        for t in (0..len).step_by(L) {
            for (acc, &ra) in acc.iter_mut().zip(a_rows) {
                let a = &a[s * sa + ra + t..][..L];
                for (acc, &rb) in acc.iter_mut().zip(b_rows) {
                    let b = &b[s * sb + rb + t..][..L];
                    for l in 0..L {
                        acc[l] += a[l] * b[l];
                    }
                }
            }
        }
    }
    for (out, acc) in out.iter_mut().zip(acc.as_flattened()) {
        *out = acc.iter().sum();
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn dots_avx512(a: &[f32], b: &[f32], samples: usize, strides: (usize, usize), a_rows: &[usize], b_rows: &[usize], len: usize, out: &mut [f32]) {
    // SAFETY: chosen by `Dots::best` only where the CPU has AVX-512F; `run` checked that every
    // row lies inside its operand.
    unsafe { dots_block_avx512(a, b, samples, strides, a_rows, b_rows, len, out) }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn dots_avx2(a: &[f32], b: &[f32], samples: usize, strides: (usize, usize), a_rows: &[usize], b_rows: &[usize], len: usize, out: &mut [f32]) {
    // SAFETY: chosen by `Dots::best` only where the CPU has AVX2 and FMA; `run` checked that
    // every row lies inside its operand.
    unsafe { dots_block_avx2(a, b, samples, strides, a_rows, b_rows, len, out) }
}

/// AVX-512: a 4 x 6 block in 24 zmm registers; each step loads 16 values of the 4 rows of A
/// and of each of the 6 rows of B, 24 fused multiply-adds.
///
/// # Safety
/// Every row, `len` values from its offset in each of the `samples` blocks, must lie inside
/// its operand.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_block_avx512(a: &[f32], b: &[f32], samples: usize, (sa, sb): (usize, usize), a_rows: &[usize], b_rows: &[usize], len: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 6]; 4];
    for s in 0..samples {
        // SAFETY (all loads): the caller's promise, rows inside their operands.
        let ra: [*const f32; 4] = std::array::from_fn(|i| unsafe { a.as_ptr().add(s * sa + a_rows[i]) });
        let rb: [*const f32; 6] = std::array::from_fn(|j| unsafe { b.as_ptr().add(s * sb + b_rows[j]) });
        for t in (0..len).step_by(16) {
            let va: [__m512; 4] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(ra[i].add(t)) });
            for j in 0..6 {
                let vb = unsafe { _mm512_loadu_ps(rb[j].add(t)) };
                for i in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(va[i], vb, acc[i][j]);
                }
            }
        }
    }
    for (out, acc) in out.iter_mut().zip(acc.as_flattened()) {
        *out = _mm512_reduce_add_ps(*acc);
    }
}

/// AVX2 + FMA: a 2 x 6 block in 12 ymm registers, 8 lanes per value.
///
/// # Safety
/// As for [`dots_block_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_block_avx2(a: &[f32], b: &[f32], samples: usize, (sa, sb): (usize, usize), a_rows: &[usize], b_rows: &[usize], len: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 6]; 2];
    for s in 0..samples {
        // SAFETY (all loads): the caller's promise, rows inside their operands.
        let ra: [*const f32; 2] = std::array::from_fn(|i| unsafe { a.as_ptr().add(s * sa + a_rows[i]) });
        let rb: [*const f32; 6] = std::array::from_fn(|j| unsafe { b.as_ptr().add(s * sb + b_rows[j]) });
        for t in (0..len).step_by(8) {
            let va: [__m256; 2] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(ra[i].add(t)) });
            for j in 0..6 {
                let vb = unsafe { _mm256_loadu_ps(rb[j].add(t)) };
                for i in 0..2 {
                    acc[i][j] = _mm256_fmadd_ps(va[i], vb, acc[i][j]);
                }
            }
        }
    }
    for (out, acc) in out.iter_mut().zip(acc.as_flattened()) {
        // the 8 lanes added up: halves, then pairs, then the last two
        let half = _mm_add_ps(_mm256_castps256_ps128(*acc), _mm256_extractf128_ps::<1>(*acc));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        *out = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)));
    }
}

thread_local! {
    /// Each thread's packing buffers and tile, reused from one product to the next.
    static PACKED: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The values of B from `origin` on, when its `kc x nr` sliver there can be read in place:
/// rows contiguous and the sliver full (the lowered matrix, `dy`). With 16 filters, each
/// sliver of B serves two slivers of A only, and packing it would cost as much as half the
/// product. Otherwise (a transposed operand, the narrower last sliver) `None`: it is packed.
fn b_sliver_in_place<'a>(b: &'a ArrayView2<f32>, origin: (usize, usize), kc: usize, nr: usize) -> Option<&'a [f32]> {
    let (rows, cols) = (b.strides()[0], b.strides()[1]);
    if cols != 1 || rows <= 0 || origin.1 + nr > b.ncols() {
        return None;
    }
    let ldb = rows as usize;
    // SAFETY: rows origin.0 .. origin.0 + kc, columns origin.1 .. + nr are inside `b`,
    // whose rows are `ldb` apart: the slice ends at the last of those values.
    Some(unsafe { std::slice::from_raw_parts(b.as_ptr().add(origin.0 * ldb + origin.1), (kc - 1) * ldb + nr) })
}

/// Packs the `len x kc` block of `m` starting at `origin`, seen as `kc` steps of `len`
/// values (A: its columns are the steps; B, `transposed`: its rows), into slivers of
/// `width`: value `i` of step `p` in sliver `s` lands at `s·width·kc + p·width + i`, zeros
/// past `len`.
pub(crate) fn pack(buf: &mut Vec<f32>, m: &ArrayView2<f32>, origin: (usize, usize), transposed: bool, len: usize, width: usize, kc: usize) {
    let strides = m.strides();
    let (step_stride, value_stride) = if transposed { (strides[0], strides[1]) } else { (strides[1], strides[0]) };
    let slivers = len.div_ceil(width);
    buf.clear();
    buf.resize(slivers * width * kc, 0.0);
    let origin = m.slice(ndarray::s![origin.0.., origin.1..]);
    let base = origin.as_ptr();
    for (s, sliver) in buf.chunks_exact_mut(width * kc).enumerate() {
        let values = width.min(len - s * width);
        for (p, step) in sliver.chunks_exact_mut(width).enumerate() {
            let first = p as isize * step_stride + (s * width) as isize * value_stride;
            if value_stride == 1 {
                // SAFETY: the caller's block lies inside `m`: `values` values from `first`.
                let src = unsafe { std::slice::from_raw_parts(base.offset(first), values) };
                step[..values].copy_from_slice(src);
            } else {
                for (i, v) in step[..values].iter_mut().enumerate() {
                    // SAFETY: as above, one value at a time.
                    *v = unsafe { *base.offset(first + i as isize * value_stride) };
                }
            }
        }
    }
}

/// Writes a tile (`nr` columns, row-major) into C at `at` (rows and columns beyond `end` are
/// padding and dropped): `c = alpha·tile + beta·c`, where `beta = 0` overwrites without
/// reading.
///
/// # Panics
/// If `end` lies outside `c`.
pub(crate) fn store(tile: &[f32], nr: usize, alpha: f32, beta: f32, c: &mut ArrayViewMut2<f32>, at: (usize, usize), end: (usize, usize)) {
    assert!(end.0 <= c.nrows() && end.1 <= c.ncols(), "tile outside C");
    let (rows, cols) = (c.strides()[0], c.strides()[1]);
    let width = nr.min(end.1 - at.1);
    let base = c.as_mut_ptr();
    for (i, tile_row) in tile.chunks_exact(nr).enumerate().take(end.0.saturating_sub(at.0)) {
        let tile_row = &tile_row[..width];
        // SAFETY: row at.0 + i and columns at.1 .. at.1 + width are inside `c` (asserted).
        let first = unsafe { base.offset((at.0 + i) as isize * rows + at.1 as isize * cols) };
        if cols == 1 {
            // SAFETY: as above; the row's values are contiguous.
            let c_row = unsafe { std::slice::from_raw_parts_mut(first, width) };
            if beta == 0.0 {
                c_row.iter_mut().zip(tile_row).for_each(|(c, &t)| *c = alpha * t);
            } else {
                c_row.iter_mut().zip(tile_row).for_each(|(c, &t)| *c = alpha * t + beta * *c);
            }
        } else {
            for (j, &t) in tile_row.iter().enumerate() {
                // SAFETY: as above, one value at a time.
                let c = unsafe { &mut *first.offset(j as isize * cols) };
                *c = if beta == 0.0 { alpha * t } else { alpha * t + beta * *c };
            }
        }
    }
}

/// `c = beta · c` (a product with `k = 0`).
fn scale_all(beta: f32, c: &mut ArrayViewMut2<f32>) {
    if beta == 0.0 {
        c.fill(0.0);
    } else {
        c.mapv_inplace(|v| beta * v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    fn naive(a: &ArrayView2<f32>, b: &ArrayView2<f32>) -> Array2<f64> {
        let ((m, k), n) = (a.dim(), b.dim().1);
        Array2::from_shape_fn((m, n), |(i, j)| (0..k).map(|p| a[[i, p]] as f64 * b[[p, j]] as f64).sum())
    }

    fn filled(shape: (usize, usize), seed: usize) -> Array2<f32> {
        Array2::from_shape_fn(shape, |(i, j)| (((i * 31 + j * 17 + seed * 7) % 23) as f32 - 11.0) / 8.0)
    }

    #[test]
    fn agrees_with_f64_loops_on_edges_strides_and_blocks() {
        // shapes across every edge: below one tile, not multiples of MR/NR, k across KC blocks
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 2), (16, 784, 144), (17, 33, 257), (130, 9, 300), (64, 49, 576), (7, 100, 0)] {
            let a = filled((m, k), 1);
            let b_t = filled((n, k), 2); // B given transposed: a strided operand
            let b = b_t.t();
            for beta in [0.0, 1.0, 0.5] {
                let mut c = filled((m, n), 3);
                let old = c.clone();
                gemm(1.5, &a.view(), &b, beta, &mut c.view_mut()).unwrap();
                let want = naive(&a.view(), &b) * 1.5 + old.mapv(|v| (beta * v) as f64);
                for (got, want) in c.iter().zip(want.iter()) {
                    assert!((*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{m}x{n}x{k} beta {beta}: {got} vs {want}");
                }
            }
        }
    }

    /// Every kernel this CPU can run (the portable one always), on slivers read through
    /// offsets that jump around B, against f64 loops.
    #[test]
    fn every_kernel_the_cpu_runs_computes_its_tile() {
        let b: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 16.0).collect();
        for k in Kernel::available() {
            let name = format!("{} {}x{}", k.name, k.mr, k.nr);
            let kc = 19;
            let a: Vec<f32> = (0..kc * k.mr).map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0).collect();
            // three tiles side by side: B's slivers nr columns apart
            let blocks = 3;
            let offsets: Vec<usize> = (0..kc).map(|p| (p * 389) % (1000 - blocks * k.nr)).collect();
            let mut tiles = vec![f32::NAN; blocks * k.mr * k.nr];
            k.run(kc, &a, &b, &Rows::new(offsets.clone()), &mut tiles[..k.mr * k.nr]);
            k.run_blocks(kc, &a, &b, &Rows::new(offsets.clone()), &mut tiles[k.mr * k.nr..]);
            for (block, tile) in tiles.chunks_exact(k.mr * k.nr).enumerate() {
                // the first tile by `run`, the next two (B from nr and 2·nr on) by `run_blocks`
                let shift = if block == 0 { 0 } else { (block - 1) * k.nr };
                for i in 0..k.mr {
                    for j in 0..k.nr {
                        let want: f64 = (0..kc).map(|p| a[p * k.mr + i] as f64 * b[offsets[p] + shift + j] as f64).sum();
                        assert!((tile[i * k.nr + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{name}, tile {block} ({i}, {j})");
                    }
                }
            }
        }
    }

    /// Every dot-product kernel this CPU can run, over three samples of rows that start
    /// anywhere, against f64 loops.
    #[test]
    fn every_dots_kernel_the_cpu_runs_computes_its_block() {
        let mut kernels = vec![Dots::PORTABLE];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kernels.push(Dots::AVX2);
            }
            if is_x86_feature_detected!("avx512f") {
                kernels.push(Dots::AVX512);
            }
        }
        let a: Vec<f32> = (0..900).map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0).collect();
        let b: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 16.0).collect();
        let (samples, strides, len) = (3, (250, 300), 2 * DOT_LEN);
        for k in kernels {
            let a_rows: Vec<usize> = (0..k.nd).map(|i| (i * 53) % (250 - len)).collect();
            let b_rows: Vec<usize> = (0..k.nx).map(|j| (j * 389 + 7) % (300 - len)).collect();
            let mut out = vec![f32::NAN; k.nd * k.nx];
            k.run(&a, &b, samples, strides, &a_rows, &b_rows, len, &mut out);
            for (i, &ra) in a_rows.iter().enumerate() {
                for (j, &rb) in b_rows.iter().enumerate() {
                    let want: f64 = (0..samples).flat_map(|s| (0..len).map(move |t| (s, t))).map(|(s, t)| a[s * strides.0 + ra + t] as f64 * b[s * strides.1 + rb + t] as f64).sum();
                    assert!((out[i * k.nx + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{}x{} block ({i}, {j})", k.nd, k.nx);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside its operand")]
    fn a_dot_row_past_its_operand_is_refused_before_any_load() {
        let k = Dots::best();
        let mut out = vec![0.0; k.nd * k.nx];
        let b_rows: Vec<usize> = (0..k.nx).map(|j| j + 1).collect();
        // the last sample's last row of B ends one value past b
        k.run(&[1.0; 200], &vec![1.0; 100 + DOT_LEN + k.nx - 1], 2, (100, 100), &vec![0; k.nd], &b_rows, DOT_LEN, &mut out);
    }

    #[test]
    #[should_panic(expected = "outside B")]
    fn an_offset_past_b_is_refused_before_any_load() {
        let k = Kernel::best();
        let mut tile = vec![0.0; k.mr * k.nr];
        k.run(1, &vec![1.0; k.mr], &vec![1.0; 100], &Rows::new(vec![0, 100 - k.nr + 1]), &mut tile);
    }

    #[test]
    fn beta_zero_never_reads_c_and_column_major_c_works() {
        let (a, b) = (filled((9, 40), 4), filled((40, 35), 5));
        let mut c = Array2::from_elem((9, 35).f(), f32::NAN);
        gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut()).unwrap();
        let want = naive(&a.view(), &b.view());
        assert!(c.iter().zip(want.iter()).all(|(g, w)| (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs())));
    }
}
