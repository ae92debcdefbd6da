//! Low-rank convolution: the lowered filter matrix factorised by truncated SVD.
//!
//! After im2col the filters are one matrix `W` (`[c_out, K]`, `K = c_in·kh·kw`). Its SVD
//! `W = U S Vᵀ`, truncated to the `k` largest singular values, gives the best rank-`k`
//! approximation (Eckart–Young) as two thinner factors:
//!
//! ```text
//! W ≈ A · B      A = U_k S_k  [c_out, k]   ("mix": a 1x1 convolution with c_out filters)
//!                B = V_kᵀ     [k, K]       ("basis": a kh x kw convolution with k filters)
//! y = A · (B · cols) + b                   two GEMMs on the same lowered input
//! ```
//!
//! Per output position the cost drops from `c_out·K` to `k·(c_out + K)` multiply-adds, so a
//! rank only pays below `c_out·K / (c_out + K)`.

use crate::conv::{lowered_backward, lowered_forward};
use crate::operands::conv_geometry;
use crate::error::{expect_finite, expect_shape, CnnError, Result};
use crate::window::Window;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis};
use ndarray_linalg::SVD;

/// How to choose the rank of a factorisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankPolicy {
    /// Exactly this rank, at least 1 (clamped to the full rank).
    Fixed(usize),
    /// The smallest rank that keeps this fraction (in `(0, 1]`) of the spectrum's energy, the
    /// sum of the squared singular values.
    Energy(f64),
    /// The largest rank whose multiply-adds are at most `1 / factor` of the full layer's
    /// (`factor` finite and at least 1).
    FlopReduction(f64),
}

impl RankPolicy {
    /// Checks the policy's number.
    ///
    /// # Errors
    /// [`CnnError::Invalid`] for `Fixed(0)`, an energy outside `(0, 1]` (NaN included), or a
    /// reduction factor that is not a finite number of at least 1.
    pub fn validate(&self) -> Result<()> {
        let reason = match *self {
            RankPolicy::Fixed(0) => Some("a rank of 0 keeps nothing; use at least 1".to_string()),
            RankPolicy::Energy(e) if !(e > 0.0 && e <= 1.0) => Some(format!("energy fraction must be in (0, 1], got {e}")),
            RankPolicy::FlopReduction(f) if !(f.is_finite() && f >= 1.0) => {
                Some(format!("FLOP reduction factor must be a finite number >= 1, got {f}"))
            }
            _ => None,
        };
        reason.map_or(Ok(()), |reason| Err(CnnError::Invalid { what: "rank policy", reason }))
    }
}

/// The singular value decomposition of a filter bank's lowered matrix.
#[derive(Clone, Debug)]
pub struct FilterSvd {
    /// Left singular vectors, `[c_out, r]` (`r = min(c_out, K)`).
    pub u: Array2<f64>,
    /// Singular values, largest first, `[r]`.
    pub s: Array1<f64>,
    /// Right singular vectors transposed, `[r, K]`.
    pub vt: Array2<f64>,
    /// The filters' shape `[c_out, c_in, kh, kw]`.
    pub shape: [usize; 4],
}

/// A filter bank factorised to rank `k`: `W ≈ mix · basis`.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankFilters {
    /// `A = U_k S_k`, `[c_out, k]`.
    pub mix: Array2<f32>,
    /// `B = V_kᵀ` as `k` filters, `[k, c_in, kh, kw]`.
    pub basis: Array4<f32>,
}

/// Gradients of a low-rank convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankGrads {
    /// Gradient of the input, `[n, c_in, h, w]`.
    pub dx: Array4<f32>,
    /// Gradient of the mix matrix, `[c_out, k]`.
    pub dmix: Array2<f32>,
    /// Gradient of the basis filters, `[k, c_in, kh, kw]`.
    pub dbasis: Array4<f32>,
    /// Gradient of the bias, `[c_out]`.
    pub db: Array1<f32>,
}

/// Multiply-adds per output position: full rank `c_out·K`, rank `k` `k·(c_out + K)`.
pub fn macs_per_position(c_out: usize, patch: usize, rank: Option<usize>) -> usize {
    match rank {
        None => c_out * patch,
        Some(k) => k * (c_out + patch),
    }
}

/// The largest rank that still does fewer multiply-adds than the full layer
/// (`k·(c_out + K) < c_out·K`); 0 when none does.
pub fn max_useful_rank(c_out: usize, patch: usize) -> usize {
    (c_out * patch).saturating_sub(1) / (c_out + patch)
}

/// Decomposes `w` (`[c_out, c_in, kh, kw]`), in f64.
///
/// # Errors
/// An empty filter bank, a NaN or infinite weight (LAPACK would loop or fail on it), or
/// LAPACK failing to converge.
pub fn svd_filters(w: ArrayView4<f32>) -> Result<FilterSvd> {
    let (c_out, c_in, kh, kw) = w.dim();
    crate::error::expect_nonempty("filters", w.shape())?;
    expect_finite("filters", &w)?;
    let w_mat = w.to_shape((c_out, c_in * kh * kw)).expect("filters reshape").mapv(f64::from);
    let (u, s, vt) = w_mat.svd(true, true).map_err(|e| CnnError::Linalg(e.to_string()))?;
    let r = s.len();
    let u = u.expect("asked for U").slice_move(s![.., ..r]);
    let vt = vt.expect("asked for Vt").slice_move(s![..r, ..]);
    Ok(FilterSvd { u, s, vt, shape: [c_out, c_in, kh, kw] })
}

impl FilterSvd {
    /// The full rank `min(c_out, K)`.
    pub fn full_rank(&self) -> usize {
        self.s.len()
    }

    /// The rank `policy` picks (at least 1, at most the full rank).
    ///
    /// # Errors
    /// A policy that [`RankPolicy::validate`] refuses.
    pub fn rank_for(&self, policy: RankPolicy) -> Result<usize> {
        policy.validate()?;
        let [c_out, c_in, kh, kw] = self.shape;
        let rank = match policy {
            RankPolicy::Fixed(k) => k,
            RankPolicy::Energy(fraction) => {
                let total: f64 = self.s.iter().map(|v| v * v).sum();
                let mut kept = 0.0;
                let mut k = 0;
                for v in &self.s {
                    if kept >= fraction * total {
                        break;
                    }
                    kept += v * v;
                    k += 1;
                }
                k
            }
            RankPolicy::FlopReduction(factor) => {
                let patch = c_in * kh * kw;
                ((c_out * patch) as f64 / (factor * (c_out + patch) as f64)).floor() as usize
            }
        };
        Ok(rank.clamp(1, self.full_rank()))
    }

    /// Frobenius norm of `W − W_k`, from the discarded singular values: `sqrt(Σ_{i≥k} s_i²)`.
    pub fn truncation_error(&self, rank: usize) -> f64 {
        self.s.iter().skip(rank).map(|v| v * v).sum::<f64>().sqrt()
    }

    /// The factors of the best rank-`rank` approximation.
    pub fn truncate(&self, rank: usize) -> LowRankFilters {
        let [c_out, c_in, kh, kw] = self.shape;
        let k = rank.clamp(1, self.full_rank());
        let mix = (&self.u.slice(s![.., ..k]) * &self.s.slice(s![..k])).mapv(|v| v as f32);
        let basis = self.vt.slice(s![..k, ..]).mapv(|v| v as f32);
        let basis = basis.into_shape_with_order((k, c_in, kh, kw)).expect("k rows of K");
        debug_assert_eq!(mix.dim(), (c_out, k));
        LowRankFilters { mix, basis }
    }
}

impl LowRankFilters {
    /// The rank `k`.
    pub fn rank(&self) -> usize {
        self.mix.ncols()
    }

    /// The approximated filter bank `mix · basis`, `[c_out, c_in, kh, kw]`.
    pub fn reconstruct(&self) -> Array4<f32> {
        let (k, c_in, kh, kw) = self.basis.dim();
        let b = self.basis.to_shape((k, c_in * kh * kw)).expect("basis reshape");
        let w = self.mix.dot(&b);
        w.into_shape_with_order((self.mix.nrows(), c_in, kh, kw)).expect("c_out x K")
    }
}

/// Checks the factors against each other and the input; returns the geometry and `c_out`.
fn check(x: &[usize], mix: ArrayView2<f32>, basis: &[usize], win: &Window) -> Result<(crate::Geometry, usize)> {
    let (c_out, k) = mix.dim();
    expect_shape("low-rank mix [c_out, k] vs basis [k, ...]", &[k], &basis[..1])?;
    let g = conv_geometry(x, basis, None, win, 1)?;
    Ok((g, c_out))
}

/// Low-rank convolution forward: `y = mix · (basis · cols) + b`, two GEMMs per sample on one
/// lowering.
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`
/// - `mix`: `[c_out, k]`, `basis`: `[k, c_in, kh, kw]`, `b`: `[c_out]` (optional)
/// - returns: `[n, c_out, oh, ow]`
///
/// # Errors
/// As [`crate::conv2d`], and factors whose rank `k` disagrees.
pub fn lowrank_conv2d(
    x: ArrayView4<f32>,
    mix: ArrayView2<f32>,
    basis: ArrayView4<f32>,
    b: Option<ArrayView1<f32>>,
    win: &Window,
) -> Result<Array4<f32>> {
    let (g, c_out) = check(x.shape(), mix, basis.shape(), win)?;
    if let Some(b) = b {
        expect_shape("bias", &[c_out], &[b.len()])?;
    }
    let (k, c_in, kh, kw) = basis.dim();
    let b_mat = basis.to_shape((k, c_in * kh * kw)).expect("basis reshape");
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    lowered_forward(x, &g, c_out, b, |cols, y| {
        // t [k, m] = basis [k, K] · cols [K, m]     (k thin filters; m = samples·oh·ow)
        let t = b_mat.dot(cols);
        // y [c_out, m] = mix [c_out, k] · t           (a 1x1 convolution)
        general_mat_mul(1.0, &mix, &t, beta, y);
    })
}

/// Low-rank convolution backward.
///
/// ```text
/// t = basis · cols     dmix   = Σ dy · tᵀ          dt    = mixᵀ · dy
///                      dbasis = Σ dt · colsᵀ        dcols = basisᵀ · dt,  dx = col2im(dcols)
/// ```
///
/// # Shapes
/// As [`lowrank_conv2d`], with `dy`: `[n, c_out, oh, ow]`.
///
/// # Errors
/// As [`lowrank_conv2d`], and a `dy` whose shape is not the output's.
pub fn lowrank_conv2d_backward(
    x: ArrayView4<f32>,
    mix: ArrayView2<f32>,
    basis: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    win: &Window,
) -> Result<LowRankGrads> {
    let (g, c_out) = check(x.shape(), mix, basis.shape(), win)?;
    expect_shape("output gradient dy", &[x.dim().0, c_out, g.oh, g.ow], dy.shape())?;
    let (k, c_in, kh, kw) = basis.dim();
    let patch = c_in * kh * kw;
    let b_mat = basis.to_shape((k, patch)).expect("basis reshape");
    let (dx, partials) = lowered_backward(
        x,
        dy,
        &g,
        || (Array2::zeros((c_out, k)), Array2::zeros((k, patch)), Array1::zeros(c_out)),
        |(dmix, dbasis, db), cols, dy, dcols| {
            let t = b_mat.dot(cols); // [k, m]   (m = samples·oh·ow)
            general_mat_mul(1.0, dy, &t.t(), 1.0, dmix); // [c_out, k] +=
            let dt = mix.t().dot(dy); // [k, m]
            general_mat_mul(1.0, &dt, &cols.t(), 1.0, dbasis); // [k, K] +=
            general_mat_mul(1.0, &b_mat.t(), &dt, 0.0, dcols); // [K, m]
            *db += &dy.sum_axis(Axis(1));
        },
    )?;
    let mut dmix = Array2::zeros((c_out, k));
    let mut dbasis = Array2::zeros((k, patch));
    let mut db = Array1::zeros(c_out);
    for (m, b, d) in &partials {
        dmix += m;
        dbasis += b;
        db += d;
    }
    let dbasis = dbasis.into_shape_with_order((k, c_in, kh, kw)).expect("k x K");
    Ok(LowRankGrads { dx, dmix, dbasis, db })
}
