//! The architecture table, built and measured: parameters (trainable and not), multiply-adds
//! and activations per image, and the forward time of one image and of a batch of 8, beside
//! the course material's figures. Run it with `cargo xtask zoo`.

use clap::Parser;
use cnn_cli::{main_with, write_atomic};
use cnn_nn::models::{alexnet, googlenet, lenet5, resnet1202, resnet20, vgg, xception, Vgg};
use cnn_nn::ndarray::{ArrayD, Dimension};
use cnn_nn::{thousands, NnError, Result, Sequential};
use std::path::PathBuf;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Build every model of the course's architecture table and measure it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Timing rounds per case (the median is kept).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only the models whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Also write the table to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Median seconds of `rounds` inference passes of `batch` images (after one warm-up pass).
fn time_forward(model: &Sequential, batch: usize, rounds: usize) -> Result<f64> {
    let mut shape = vec![batch];
    shape.extend(model.input_shape());
    let x = ArrayD::from_shape_fn(shape, |i| ((i.slice().iter().sum::<usize>() * 7) % 13) as f32 / 13.0);
    model.forward(x.clone())?;
    let mut times = vec![];
    for _ in 0..rounds {
        let start = Instant::now();
        std::hint::black_box(model.forward(x.clone())?);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn shape(s: &[usize]) -> String {
    s.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
}

fn run(args: Args) -> Result<()> {
    if args.rounds == 0 {
        return Err(NnError::Config("--rounds must be at least 1".into()));
    }
    let zoo: [(&str, fn() -> Sequential, &str); 9] = [
        ("LeNet-5", || lenet5(0), "60,000"),
        ("AlexNet", || alexnet(0), "60M"),
        ("VGG-11", || vgg(Vgg::A11, 0), "133M–144M"),
        ("VGG-16", || vgg(Vgg::D16, 0), "133M–144M"),
        ("VGG-19", || vgg(Vgg::E19, 0), "133M–144M"),
        ("ResNet-20", || resnet20(0), "270,000"),
        ("ResNet-1202", || resnet1202(0), "–"),
        ("GoogLeNet", || googlenet(0), "6,797,700"),
        ("Xception", || xception(0), "22,855,952"),
    ];
    let mut table = String::from(
        "| model | input | total parameters | trainable | non-trainable | course table | multiply-adds / image | activations / image (all layer outputs) | forward, 1 image | forward, batch 8 |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, build, course) in zoo {
        if args.only.as_ref().is_some_and(|only| !name.to_lowercase().contains(&only.to_lowercase())) {
            continue;
        }
        let model = build();
        let (trainable, fixed) = (model.num_params() as u64, model.num_buffers() as u64);
        let one = time_forward(&model, 1, args.rounds)?;
        let eight = time_forward(&model, 8, args.rounds)?;
        let row = format!(
            "| {name} | {} | {} | {} | {} | {course} | {} | {:.1} MiB | {:.1} ms | {:.1} ms |\n",
            shape(model.input_shape()),
            thousands((trainable + fixed) as usize),
            thousands(trainable as usize),
            thousands(fixed as usize),
            thousands(model.macs() as usize),
            (model.activation_values() * 4) as f64 / (1 << 20) as f64,
            one * 1e3,
            eight * 1e3
        );
        print!("{row}");
        table += &row;
    }
    println!("\n{table}");
    if let Some(path) = &args.out {
        write_atomic(path, &table)?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_with(Args::parse(), run)
}
