//! Softmax with cross-entropy, fused into one numerically stable loss.

use crate::error::{NnError, Result};
use ndarray::{Array2, ArrayView2, Axis};

/// Mean cross-entropy of `softmax(logits)` against integer labels, and its gradient.
///
/// With `m = max_j z_j`, `log softmax(z)_i = z_i − m − log Σ_j e^{z_j − m}` (log-sum-exp), so
/// no exponential overflows. The gradient of the mean loss is `(softmax(z) − onehot(y)) / n`.
///
/// # Shapes
/// - `logits`: `[n, classes]`, `labels`: `n` values in `0..classes`
/// - returns the loss and `dlogits`: `[n, classes]`
///
/// # Errors
/// An empty batch or no classes (the mean would be NaN), a label count other than `n`, or a
/// label outside `0..classes`.
///
/// ```
/// use cnn_nn::loss::softmax_cross_entropy;
/// use ndarray::array;
/// let (loss, d) = softmax_cross_entropy(array![[0.0, 0.0]].view(), &[1]).unwrap();
/// assert!((loss - std::f32::consts::LN_2).abs() < 1e-6);
/// assert_eq!(d, array![[0.5, -0.5]]);
/// ```
pub fn softmax_cross_entropy(logits: ArrayView2<f32>, labels: &[usize]) -> Result<(f32, Array2<f32>)> {
    let (n, classes) = logits.dim();
    if n == 0 || classes == 0 {
        return Err(NnError::Shape { what: "logits (a loss needs at least one sample and one class)".into(), expected: vec![1, 1], got: vec![n, classes] });
    }
    if labels.len() != n {
        return Err(NnError::Shape { what: "labels".into(), expected: vec![n], got: vec![labels.len()] });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
        return Err(NnError::Label { label, index, classes });
    }
    let mut grad = logits.to_owned();
    let mut loss = 0.0f64;
    for (mut row, &label) in grad.axis_iter_mut(Axis(0)).zip(labels) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let log_sum = row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        loss += (log_sum - (row[label] - max)) as f64;
        row.mapv_inplace(|v| (v - max - log_sum).exp() / n as f32);
        row[label] -= 1.0 / n as f32;
    }
    Ok(((loss / n as f64) as f32, grad))
}

/// A teacher's logits for a batch, and how to learn from them ([`distillation_loss`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SoftTargets {
    /// The teacher's logits, `[n, classes]`.
    pub logits: Array2<f32>,
    /// The softening temperature `T`.
    pub temperature: f32,
    /// The weight `α` of the soft term.
    pub alpha: f32,
}

/// Knowledge distillation (Hinton et al., 2015): the student's logits are trained towards the
/// labels and towards the teacher's softened probabilities,
///
/// ```text
/// L = (1 − α) · CE(softmax(z), y) + α · T² · KL(softmax(t / T) ‖ softmax(z / T))
/// ```
///
/// averaged over the batch, for student logits `z`, teacher logits `t`, temperature `T` and
/// weight `α`. `T²` keeps the soft term's gradient, `T · (softmax(z/T) − softmax(t/T)) / n`,
/// on the scale of the hard term's `(softmax(z) − onehot(y)) / n` as `T` grows. Returns the
/// loss and its gradient with respect to `z`.
///
/// # Shapes
/// - `logits`, `teacher`: `[n, classes]`, `labels`: `n` values in `0..classes`
///
/// # Errors
/// As [`softmax_cross_entropy`]; teacher logits of another shape; a temperature that is not
/// a positive number, or a weight outside `[0, 1]`.
///
/// ```
/// use cnn_nn::loss::{distillation_loss, softmax_cross_entropy};
/// use ndarray::array;
/// let z = array![[1.0, -1.0, 0.5]];
/// // α = 0 is the cross-entropy; a student equal to its teacher has no soft loss
/// assert_eq!(distillation_loss(z.view(), z.view(), &[2], 4.0, 0.0).unwrap(), softmax_cross_entropy(z.view(), &[2]).unwrap());
/// assert!(distillation_loss(z.view(), z.view(), &[2], 4.0, 1.0).unwrap().0.abs() < 1e-6);
/// ```
pub fn distillation_loss(logits: ArrayView2<f32>, teacher: ArrayView2<f32>, labels: &[usize], temperature: f32, alpha: f32) -> Result<(f32, Array2<f32>)> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(NnError::Config(format!("the distillation temperature must be a positive number, got {temperature}")));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(NnError::Config(format!("the distillation weight alpha must be in [0, 1], got {alpha}")));
    }
    if teacher.dim() != logits.dim() {
        return Err(NnError::Shape { what: "teacher logits".into(), expected: logits.shape().to_vec(), got: teacher.shape().to_vec() });
    }
    let (hard, hard_grad) = softmax_cross_entropy(logits, labels)?;
    if alpha == 0.0 {
        return Ok((hard, hard_grad));
    }
    let n = logits.nrows() as f32;
    let t = temperature;
    // log softmax(row / T), stable
    let log_soft = |row: ndarray::ArrayView1<f32>| {
        let scaled = row.mapv(|v| v / t);
        let max = scaled.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let log_sum = scaled.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        scaled.mapv(|v| v - max - log_sum)
    };
    let mut soft = 0.0f64;
    let mut grad = hard_grad * (1.0 - alpha);
    for ((z, tz), mut g) in logits.axis_iter(Axis(0)).zip(teacher.axis_iter(Axis(0))).zip(grad.axis_iter_mut(Axis(0))) {
        let (log_p, log_q) = (log_soft(tz), log_soft(z));
        // KL(p ‖ q) = Σ p (log p − log q)
        soft += log_p.iter().zip(&log_q).map(|(&lp, &lq)| (lp.exp() * (lp - lq)) as f64).sum::<f64>();
        for ((g, &lp), &lq) in g.iter_mut().zip(&log_p).zip(&log_q) {
            *g += alpha * t * (lq.exp() - lp.exp()) / n;
        }
    }
    let loss = (1.0 - alpha) * hard + alpha * t * t * (soft / n as f64) as f32;
    Ok((loss, grad))
}
