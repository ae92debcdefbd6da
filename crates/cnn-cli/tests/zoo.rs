//! `cnn-zoo` prints the architecture table (here its smallest rows, to stay quick).

use std::process::Command;

#[test]
fn the_zoo_table_has_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("zoo.md");
    let o = Command::new(env!("CARGO_BIN_EXE_cnn-zoo")).args(["--only", "resnet-20", "--rounds", "1", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[2].starts_with("| ResNet-20 | 3x32x32 | 271,098 | 269,722 | 1,376 | 270,000 | 40,739,456 |"), "{table}");
    let e = Command::new(env!("CARGO_BIN_EXE_cnn-zoo")).args(["--rounds", "0"]).output().unwrap();
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("--rounds must be at least 1"));
}
