//! One full training step of the reference network at batch 64 (forward, loss, backward,
//! Adam update), and inference on the same batch.

use cnn_benches::random;
use cnn_nn::models::reference_cnn;
use cnn_nn::optim::{Adam, Optimizer};
#[global_allocator]
static GLOBAL: cnn_benches::MiMalloc = cnn_benches::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};


fn train_step(c: &mut Criterion) {
    let n = 64;
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    group.throughput(Throughput::Elements(n as u64)); // images
    let x = random((n, 1, 28, 28), 1).mapv(|v: f32| v.abs()).into_dyn();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let mut model = reference_cnn(0);
    let mut adam = Adam::new(1e-3);
    group.bench_function("adam/ref_cnn_n64", |bench| {
        bench.iter(|| {
            model.zero_grad();
            let (loss, _) = model.loss_and_gradients(x.clone(), &labels).unwrap();
            adam.step(&mut model.params_mut());
            loss
        })
    });
    group.bench_function("inference/ref_cnn_n64", |bench| bench.iter(|| model.forward(x.clone()).unwrap()));
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
