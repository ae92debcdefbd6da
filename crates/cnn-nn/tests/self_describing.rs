//! Checkpoints that say what they hold: `load_model` rebuilds the architecture from the file
//! alone, a factorised one included.

use cnn_nn::checkpoint::{self, load_model, Metadata, FACTORISED, MODEL};
use cnn_nn::compress::{factorise, plan_string, Choice};
use cnn_nn::models::{by_name, ALL_NAMES, NAMES};
use cnn_nn::ndarray::ArrayD;
use cnn_nn::RankPolicy;

fn input() -> ArrayD<f32> {
    ArrayD::from_shape_fn(vec![2, 1, 28, 28], |i| ((i[0] * 5 + i[2] * 3 + i[3]) % 13) as f32 / 13.0)
}

#[test]
fn every_model_for_28x28_images_round_trips_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for name in NAMES {
        let path = dir.path().join(format!("{name}.safetensors"));
        let model = by_name(name, 3).unwrap();
        checkpoint::save(&path, &model, None, &Metadata::from([(MODEL.into(), name.into())])).unwrap();
        let (loaded, meta) = load_model(&path).unwrap();
        assert_eq!(meta[MODEL], name);
        assert_eq!(loaded.named_params(), model.named_params(), "{name}");
        assert_eq!(loaded.named_buffers(), model.named_buffers(), "{name}");
        assert_eq!(loaded.forward(input()).unwrap(), model.forward(input()).unwrap(), "{name}");
    }
}

#[test]
fn a_factorised_model_is_rebuilt_from_its_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("low.safetensors");
    let mut model = by_name("reference", 4).unwrap();
    let decisions = factorise(&mut model, &[Choice::channel("3", RankPolicy::Fixed(8)), Choice::spatial("6", RankPolicy::Fixed(20))]).unwrap();
    let plan = plan_string(&decisions);
    assert_eq!(plan, "3:8,6:spatial:20");
    let meta = Metadata::from([(MODEL.into(), "reference".into()), (FACTORISED.into(), plan)]);
    checkpoint::save(&path, &model, None, &meta).unwrap();
    let (loaded, _) = load_model(&path).unwrap();
    assert_eq!(loaded.named_params(), model.named_params());
    assert_eq!(loaded.forward(input()).unwrap(), model.forward(input()).unwrap());
}

#[test]
fn a_file_that_does_not_fit_its_name_is_refused_naming_the_first_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.safetensors");
    checkpoint::save(&path, &by_name("reference", 0).unwrap(), None, &Metadata::from([(MODEL.into(), "lenet5".into())])).unwrap();
    let e = load_model(&path).err().unwrap().to_string();
    assert!(e.contains("tensor `0.weight` has shape [32, 1, 3, 3], expected [6, 1, 5, 5]"), "{e}");
    checkpoint::save(&path, &by_name("reference", 0).unwrap(), None, &Metadata::new()).unwrap();
    assert!(load_model(&path).err().unwrap().to_string().contains("names no `model`"));
    checkpoint::save(&path, &by_name("reference", 0).unwrap(), None, &Metadata::from([(MODEL.into(), "vgg99".into())])).unwrap();
    assert!(load_model(&path).err().unwrap().to_string().contains("unknown model `vgg99`"));
}

#[test]
fn the_models_at_their_own_sizes_round_trip_too() {
    // the smaller ones of the table (the big ones take the same path, with more bytes)
    let dir = tempfile::tempdir().unwrap();
    for name in ["resnet20-cifar", "googlenet"] {
        assert!(ALL_NAMES.contains(&name));
        let path = dir.path().join(format!("{name}.safetensors"));
        let model = by_name(name, 5).unwrap();
        checkpoint::save(&path, &model, None, &Metadata::from([(MODEL.into(), name.into())])).unwrap();
        let (loaded, _) = load_model(&path).unwrap();
        assert_eq!(loaded.named_params(), model.named_params(), "{name}");
        assert_eq!(loaded.named_buffers(), model.named_buffers(), "{name}");
    }
}
