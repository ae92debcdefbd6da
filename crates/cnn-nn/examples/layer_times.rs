//! Where a training step of the reference network spends its time, layer by layer.
//!
//! `cargo run --release -p cnn-nn --example layer_times`. Medians over 30 steps at batch 64.

use cnn_nn::models::reference_cnn;
use ndarray::ArrayD;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = 64;
    let mut model = reference_cnn(0);
    let x = ArrayD::from_shape_fn(vec![n, 1, 28, 28], |i| ((i[2] * 28 + i[3]) % 17) as f32 / 17.0);
    let names: Vec<String> = model.layers().iter().map(|l| l.describe().name).collect();
    let k = names.len() - 1; // without the final Softmax
    let (mut fwd, mut bwd) = (vec![vec![]; k], vec![vec![]; k]);
    for _ in 0..30 {
        let mut a = x.clone();
        let mut outs = vec![];
        for i in 0..k {
            let t = Instant::now();
            a = model.layers_mut()[i].forward_train(a);
            fwd[i].push(t.elapsed().as_secs_f64() * 1e3);
            outs.push(a.raw_dim());
        }
        let mut d = ArrayD::from_elem(outs[k - 1].clone(), 0.01f32);
        for i in (0..k).rev() {
            let t = Instant::now();
            d = model.layers_mut()[i].backward(d);
            bwd[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (mut total_f, mut total_b) = (0.0, 0.0);
    println!("{:<18} {:>9} {:>9}", "layer", "fwd ms", "bwd ms");
    for i in 0..k {
        let (f, b) = (median(fwd[i].clone()), median(bwd[i].clone()));
        total_f += f;
        total_b += b;
        println!("{:<18} {:>9.3} {:>9.3}", names[i], f, b);
    }
    println!("{:<18} {:>9.3} {:>9.3}   step ≈ {:.2} ms", "total", total_f, total_b, total_f + total_b);
}
