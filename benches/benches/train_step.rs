//! One full training step of the reference network at batch 64 (forward, loss, backward,
//! Adam update) and of ResNet-20 at batch 128 (SGD, its recipe), and inference on the same
//! batches.

use cnn_benches::random;
use cnn_nn::models::{reference_cnn, resnet_cifar};
use cnn_nn::optim::{Adam, Optimizer, Sgd};
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

    // ResNet-20 (1x28x28, the Fashion-MNIST variant) with its recipe's optimiser, batch 128
    let n = 128;
    group.throughput(Throughput::Elements(n as u64));
    let x = random((n, 1, 28, 28), 2).mapv(|v: f32| v.abs()).into_dyn();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let mut resnet = resnet_cifar(3, &[1, 28, 28], 10, 0).unwrap();
    let mut sgd = Sgd::new(0.1, 0.9, 5e-4).nesterov().no_decay_on_vectors();
    group.bench_function("sgd/resnet20_n128", |bench| {
        bench.iter(|| {
            resnet.zero_grad();
            let (loss, _) = resnet.loss_and_gradients(x.clone(), &labels).unwrap();
            sgd.step(&mut resnet.params_mut());
            loss
        })
    });
    group.bench_function("inference/resnet20_n128", |bench| bench.iter(|| resnet.forward(x.clone()).unwrap()));
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
