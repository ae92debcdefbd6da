//! The IDX and checkpoint readers fed random and mutated bytes: an error or a valid result,
//! never a panic, a hang or a huge allocation.

mod common;

use cnn_nn::checkpoint::{self, Metadata};
use cnn_nn::data::read_idx;
use cnn_nn::layers::{Dense, Flatten};
use cnn_nn::optim::{Adam, Optimizer};
use cnn_nn::Sequential;
use common::{gzip, idx_bytes};
use proptest::prelude::*;

/// A mutation of a valid file: flip bytes, truncate, or overwrite a 4-byte field (a header
/// length or dimension) with an extreme value.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Field(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop_oneof![Just(u32::MAX), Just(0u32), Just(1u32 << 31), any::<u32>()]).prop_map(|(i, v)| Mutation::Field(i, v)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match *m {
            Mutation::Flip(i, x) => {
                let len = bytes.len();
                bytes[i % len] ^= x
            }
            Mutation::Truncate(i) => bytes.truncate(i % bytes.len()),
            Mutation::Field(i, v) => {
                let at = i % bytes.len();
                for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = b;
                    }
                }
            }
        }
    }
    bytes
}

fn model(seed: u64) -> Sequential {
    Sequential::builder(&[1, 3, 3]).add(Flatten::new()).add(Dense::new(4)).add(Dense::new(2)).seed(seed).build().unwrap()
}

/// A valid checkpoint with an optimiser state and metadata.
fn checkpoint_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let mut m = model(1);
    let mut opt = Adam::new(0.1);
    m.loss_and_gradients(cnn_nn::ndarray::ArrayD::ones(vec![2, 1, 3, 3]), &[0, 1]).unwrap();
    opt.step(&mut m.params_mut());
    checkpoint::save(&path, &m, Some(&opt), &Metadata::from([("epoch".into(), "1".into())])).unwrap();
    std::fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn idx_reader_never_panics(
        dims in proptest::collection::vec(prop_oneof![0u32..6, Just(u32::MAX), any::<u32>()], 0..4),
        data_len in 0usize..200,
        mutations in proptest::collection::vec(mutation(), 0..4),
        layout in 0..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let valid = idx_bytes(&dims, &vec![7u8; data_len]);
        let bytes = match layout {
            0 => mutate(valid, &mutations),
            1 => gzip(&mutate(valid, &mutations)),
            _ => mutate(gzip(&valid), &mutations), // a damaged gzip stream
        };
        std::fs::write(&path, bytes).unwrap();
        if let Ok(idx) = read_idx(&path) {
            // a valid result is self-consistent
            prop_assert_eq!(idx.dims.iter().product::<usize>(), idx.data.len());
        }
    }

    #[test]
    fn idx_reader_takes_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &bytes).unwrap();
        let _ = read_idx(&path);
    }

    #[test]
    fn checkpoint_loader_never_panics(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, mutate(checkpoint_bytes(), &mutations)).unwrap();
        let mut target = model(2);
        let before = target.named_params().into_iter().map(|(n, p)| (n, p.value.clone())).collect::<Vec<_>>();
        let mut opt = Adam::new(0.1);
        match checkpoint::load(&path, &mut target, Some(&mut opt)) {
            // a mutation that only touched values loads finite numbers
            Ok(_) => prop_assert!(target.named_params().iter().all(|(_, p)| p.value.iter().all(|v| v.is_finite()))),
            // a refused file changes nothing
            Err(_) => {
                let after = target.named_params().into_iter().map(|(n, p)| (n, p.value.clone())).collect::<Vec<_>>();
                prop_assert_eq!(after, before);
            }
        }
    }
}

#[test]
fn an_intact_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, checkpoint_bytes()).unwrap();
    let mut target = model(2);
    let meta = checkpoint::load(&path, &mut target, Some(&mut Adam::new(0.1))).unwrap();
    assert_eq!(meta["epoch"], "1");
    assert_eq!(meta["optimizer"], "adam");
}
