//! The model summary table, as the course material prints it.

use crate::layer::Layer;
use crate::sequential::Sequential;
use std::fmt::Write as _;

/// `1234567` → `"1,234,567"`: counts as the summary (and Keras) writes them.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A per-sample shape as the material writes it: channels last, `(h,w,c)`.
pub(crate) fn material_shape(shape: &[usize]) -> String {
    let order: Vec<usize> = match shape {
        [c, h, w] => vec![*h, *w, *c],
        [c, l] => vec![*l, *c],
        other => other.to_vec(),
    };
    format!("({})", order.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
}

struct Row {
    layer: String,
    filters: String,
    padding: String,
    shape: String,
    size: String,
    params: usize,
}

impl Sequential {
    /// The summary table: Layer, Number of Filters, Padding, Activation Shape (H,W,C),
    /// Activation Size, Parameters (trainable and non-trainable, as Keras counts them), and the
    /// totals.
    ///
    /// Element-wise activations are not rows of their own: they are listed under the table.
    /// A layer made of layers (a residual block, an inception module) is one row with its
    /// output and totals, followed by its children, indented.
    pub fn summary(&self) -> String {
        let mut rows = vec![Row {
            layer: "Input".into(),
            filters: String::new(),
            padding: String::new(),
            shape: material_shape(self.input_shape()),
            size: thousands(self.input_shape().iter().product()),
            params: 0,
        }];
        let mut activations = vec![];
        let mut previous: Option<String> = None;
        for (layer, shape) in self.layers().iter().zip(self.shapes()) {
            let d = layer.describe();
            if let (true, Some(previous)) = (d.is_activation, &previous) {
                activations.push(format!("{} after {previous}", d.name));
                continue;
            }
            previous = Some(d.name.clone());
            rows.push(Row {
                layer: d.name,
                filters: d.filters.map(|f| f.to_string()).unwrap_or_default(),
                padding: d.padding.unwrap_or_default(),
                shape: material_shape(shape),
                size: thousands(shape.iter().product()),
                params: size(layer.as_ref()),
            });
            child_rows(layer.as_ref(), 1, &mut rows);
        }
        let header = ["Layer", "Number of Filters", "Padding", "Activation Shape", "Activation Size", "Parameters"];
        let cells: Vec<[String; 6]> = rows
            .iter()
            .map(|r| [r.layer.clone(), r.filters.clone(), r.padding.clone(), r.shape.clone(), r.size.clone(), thousands(r.params)])
            .collect();
        let widths: Vec<usize> =
            (0..6).map(|c| cells.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0)).collect();
        let line = |cols: [&str; 6]| {
            let mut s = String::new();
            for (c, col) in cols.iter().enumerate() {
                let pad = widths[c] - col.chars().count();
                if c >= 4 {
                    // numbers right-aligned
                    let _ = write!(s, "{}{}  ", " ".repeat(pad), col);
                } else {
                    let _ = write!(s, "{}{}  ", col, " ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(header));
        let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * 5));
        for r in &cells {
            let _ = writeln!(out, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
        }
        let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * 5));
        let (trainable, fixed) = (self.num_params(), self.num_buffers());
        let _ = writeln!(out, "Total parameters: {}", thousands(trainable + fixed));
        if fixed > 0 {
            let _ = writeln!(out, "Trainable parameters: {}", thousands(trainable));
            let _ = writeln!(out, "Non-trainable parameters: {}", thousands(fixed));
        }
        if !activations.is_empty() {
            let _ = writeln!(out, "Activations: {}", activations.join(", "));
        }
        if let [classes] = self.output_shape() {
            let _ = writeln!(out, "Output: {classes} logits (the softmax is applied by the loss and by predict)");
        }
        out
    }
}

/// Parameters and buffers of a layer, its children's included.
fn size(layer: &dyn Layer) -> usize {
    layer.params().iter().map(|(_, p)| p.value.len()).sum::<usize>() + layer.buffers().iter().map(|(_, b)| b.len()).sum::<usize>()
}

/// The rows of `layer`'s children, indented by `depth`, recursively.
fn child_rows(layer: &dyn Layer, depth: usize, rows: &mut Vec<Row>) {
    for (name, child) in layer.children() {
        let d = child.describe();
        rows.push(Row {
            layer: format!("{}{name}: {}", "  ".repeat(depth), d.name),
            filters: d.filters.map(|f| f.to_string()).unwrap_or_default(),
            padding: d.padding.unwrap_or_default(),
            shape: String::new(),
            size: String::new(),
            params: size(child),
        });
        child_rows(child, depth + 1, rows);
    }
}
