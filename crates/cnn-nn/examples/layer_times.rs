//! Where a training step spends its time, layer by layer: the top-level layers of a model of
//! the zoo, and the layers of a top-level `Chain` (ResNet-20's stages: block by block): the
//! training forward and the backward (the first layer's without its input gradient, as in
//! training), and apart from them the inference forward.
//!
//! `cargo run --release -p cnn-nn --example layer_times [-- MODEL [BATCH]]` (defaults:
//! `reference 64`; `resnet20 128` for the ResNet). Medians over 20 steps.

use cnn_nn::layers::Chain;
use cnn_nn::models::by_name;
use cnn_nn::ndarray::ArrayD;
use cnn_nn::Layer;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The layers to time: a top-level `Chain` is opened one level (its layers timed one by one).
fn flatten(layers: &mut [Box<dyn Layer>]) -> Vec<(String, &mut dyn Layer)> {
    let mut out = vec![];
    for (i, layer) in layers.iter_mut().enumerate() {
        let name = layer.describe().name;
        let open = (layer.as_ref() as &dyn std::any::Any).downcast_ref::<Chain>().is_some_and(|c| c.layers().len() > 2);
        if open {
            let chain = (layer.as_mut() as &mut dyn std::any::Any).downcast_mut::<Chain>().expect("checked above");
            for (j, inner) in chain.layers_mut().iter_mut().enumerate() {
                out.push((format!("{i}.{j} {}", inner.describe().name), inner.as_mut()));
            }
        } else {
            out.push((format!("{i} {name}"), layer.as_mut()));
        }
    }
    out
}

fn main() -> cnn_nn::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("reference", String::as_str);
    let n: usize = args.get(1).and_then(|b| b.parse().ok()).unwrap_or(64);
    let mut model = by_name(name, 0)?;
    let x = ArrayD::from_shape_fn(vec![n, 1, 28, 28], |i| ((i[0] + i[2] * 28 + i[3]) % 17) as f32 / 17.0);
    let mut layers = flatten(model.layers_mut());
    let k = layers.len();
    let (mut inf, mut fwd, mut bwd) = (vec![vec![]; k], vec![vec![]; k], vec![vec![]; k]);
    for _ in 0..20 {
        let mut a = x.clone();
        for (i, (_, layer)) in layers.iter().enumerate() {
            let t = Instant::now();
            a = layer.forward(a);
            inf[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut a = x.clone();
        for (i, (_, layer)) in layers.iter_mut().enumerate() {
            let t = Instant::now();
            a = layer.forward_train(a);
            fwd[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut d = Some(ArrayD::from_elem(a.raw_dim(), 0.01f32));
        for (i, (_, layer)) in layers.iter_mut().enumerate().rev() {
            let dy = d.take().expect("each layer gives the one before it its gradient");
            let t = Instant::now();
            // as in training: no input gradient for the first layer
            if i == 0 {
                layer.backward_params(dy);
            } else {
                d = Some(layer.backward(dy));
            }
            bwd[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (mut total_i, mut total_f, mut total_b) = (0.0, 0.0, 0.0);
    println!("{name}, batch {n}");
    println!("{:<32} {:>9} {:>9} {:>9}", "layer", "infer ms", "fwd ms", "bwd ms");
    for (i, (label, _)) in layers.iter().enumerate() {
        let (f_i, f, b) = (median(inf[i].clone()), median(fwd[i].clone()), median(bwd[i].clone()));
        total_i += f_i;
        total_f += f;
        total_b += b;
        println!("{label:<32} {f_i:>9.3} {f:>9.3} {b:>9.3}");
    }
    println!("{:<32} {:>9.3} {:>9.3} {:>9.3}   step ≈ {:.2} ms", "total", total_i, total_f, total_b, total_f + total_b);
    Ok(())
}
