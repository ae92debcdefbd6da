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
