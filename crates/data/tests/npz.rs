//! The `.npz` loader on files written here: a good file (float64 and float32), and each
//! kind of bad input with its one-line message.

use dmft_data::{NpzError, load_npz};
use ndarray::{Array1, Array2, ArrayD, array};
use ndarray_npy::{NpzWriter, WritableElement};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dmft-data-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An array of any element type, so a test can mix dtypes in one archive.
enum Arr {
    F64(ArrayD<f64>),
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

fn f64a<D: ndarray::Dimension>(a: ndarray::Array<f64, D>) -> Arr {
    Arr::F64(a.into_dyn())
}

fn write(dir: &TempDir, name: &str, arrays: &[(&str, Arr)]) -> PathBuf {
    fn add<T: WritableElement>(npz: &mut NpzWriter<std::fs::File>, name: &str, a: &ArrayD<T>) {
        npz.add_array(name, a).unwrap();
    }
    let path = dir.0.join(name);
    let mut npz = NpzWriter::new(std::fs::File::create(&path).unwrap());
    for (name, a) in arrays {
        match a {
            Arr::F64(a) => add(&mut npz, name, a),
            Arr::F32(a) => add(&mut npz, name, a),
            Arr::I64(a) => add(&mut npz, name, a),
        }
    }
    npz.finish().unwrap();
    path
}

fn x(p: usize, d: usize) -> Array2<f64> {
    Array2::from_shape_fn((p, d), |(i, j)| (i * d + j) as f64 / 10.0)
}

fn good(with_y_test: bool) -> Vec<(&'static str, Arr)> {
    let mut arrays = vec![
        ("x_train", f64a(x(4, 3))),
        ("y_train", f64a(array![1.0, -1.0, 0.5, 0.0])),
        ("x_test", f64a(x(2, 3))),
    ];
    if with_y_test {
        arrays.push(("y_test", f64a(array![0.25, -0.25])));
    }
    arrays
}

fn replace(
    mut arrays: Vec<(&'static str, Arr)>,
    name: &'static str,
    a: Option<Arr>,
) -> Vec<(&'static str, Arr)> {
    arrays.retain(|(n, _)| *n != name);
    if let Some(a) = a {
        arrays.push((name, a));
    }
    arrays
}

/// Loads a file that must fail and returns the message, checking it is one line that names
/// the file.
fn error(path: &std::path::Path) -> String {
    let err: NpzError = load_npz(path).expect_err("loading should fail");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    assert!(
        msg.starts_with(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    msg
}

#[test]
fn loads_float64_with_and_without_test_targets() {
    let dir = TempDir::new();
    let data = load_npz(&write(&dir, "a.npz", &good(true))).unwrap();
    assert_eq!(data.x_train, x(4, 3));
    assert_eq!(data.y_train, array![1.0, -1.0, 0.5, 0.0]);
    assert_eq!(data.x_test, x(2, 3));
    assert_eq!(data.y_test, Some(array![0.25, -0.25]));
    let data = load_npz(&write(&dir, "b.npz", &good(false))).unwrap();
    assert_eq!(data.y_test, None);
    assert_eq!((data.n_train(), data.n_test(), data.dim()), (4, 2, 3));
}

#[test]
fn widens_float32() {
    let dir = TempDir::new();
    let xs = x(4, 3).mapv(|v| v as f32).into_dyn();
    let arrays = replace(good(false), "x_train", Some(Arr::F32(xs)));
    let data = load_npz(&write(&dir, "f32.npz", &arrays)).unwrap();
    assert_eq!(data.x_train, x(4, 3).mapv(|v| f64::from(v as f32)));
}

#[test]
fn empty_test_set_is_allowed() {
    let dir = TempDir::new();
    let arrays = replace(
        good(false),
        "x_test",
        Some(f64a(Array2::<f64>::zeros((0, 3)))),
    );
    let data = load_npz(&write(&dir, "q0.npz", &arrays)).unwrap();
    assert_eq!(data.n_test(), 0);
}

#[test]
fn missing_file() {
    let dir = TempDir::new();
    let msg = error(&dir.0.join("absent.npz"));
    assert!(msg.contains("cannot open"), "{msg}");
}

#[test]
fn not_an_npz() {
    let dir = TempDir::new();
    let path = dir.0.join("text.npz");
    std::fs::write(&path, "x_train = [1, 2, 3]\n").unwrap();
    let msg = error(&path);
    assert!(msg.contains("not a NumPy .npz archive"), "{msg}");
}

#[test]
fn missing_array() {
    let dir = TempDir::new();
    let msg = error(&write(
        &dir,
        "m.npz",
        &replace(good(false), "y_train", None),
    ));
    assert!(msg.contains("missing array \"y_train\""), "{msg}");
    assert!(
        msg.contains("\"x_train\""),
        "should list what the file holds: {msg}"
    );
}

#[test]
fn wrong_ndim() {
    let dir = TempDir::new();
    let arrays = replace(good(false), "x_train", Some(f64a(Array1::<f64>::zeros(4))));
    let msg = error(&write(&dir, "n.npz", &arrays));
    assert!(
        msg.contains("\"x_train\" must be 2-dimensional") && msg.contains("[4]"),
        "{msg}"
    );
    let arrays = replace(
        good(false),
        "y_train",
        Some(f64a(Array2::<f64>::zeros((4, 1)))),
    );
    let msg = error(&write(&dir, "n2.npz", &arrays));
    assert!(
        msg.contains("\"y_train\" must be 1-dimensional") && msg.contains("[4, 1]"),
        "{msg}"
    );
}

#[test]
fn p_mismatch_between_x_and_y() {
    let dir = TempDir::new();
    let arrays = replace(
        good(false),
        "y_train",
        Some(f64a(array![1.0, 2.0, 3.0, 4.0, 5.0])),
    );
    let msg = error(&write(&dir, "p.npz", &arrays));
    assert!(
        msg.contains("\"y_train\"") && msg.contains("4 entries") && msg.contains("[5]"),
        "{msg}"
    );
    let arrays = replace(good(true), "y_test", Some(f64a(array![1.0])));
    let msg = error(&write(&dir, "q.npz", &arrays));
    assert!(
        msg.contains("\"y_test\"") && msg.contains("2 entries"),
        "{msg}"
    );
}

#[test]
fn test_dimension_mismatch() {
    let dir = TempDir::new();
    let arrays = replace(good(false), "x_test", Some(f64a(x(2, 5))));
    let msg = error(&write(&dir, "d.npz", &arrays));
    assert!(msg.contains("\"x_test\"") && msg.contains("D = 3"), "{msg}");
}

#[test]
fn nan_and_inf_are_refused() {
    let dir = TempDir::new();
    let mut xs = x(4, 3);
    xs[[2, 1]] = f64::NAN;
    let msg = error(&write(
        &dir,
        "nan.npz",
        &replace(good(false), "x_train", Some(f64a(xs))),
    ));
    assert!(
        msg.contains("\"x_train\" contains NaN at index [2, 1]"),
        "{msg}"
    );
    let arrays = replace(good(true), "y_test", Some(f64a(array![0.0, f64::INFINITY])));
    let msg = error(&write(&dir, "inf.npz", &arrays));
    assert!(
        msg.contains("\"y_test\" contains inf at index [1]"),
        "{msg}"
    );
}

#[test]
fn integer_arrays_are_refused_with_their_dtype() {
    let dir = TempDir::new();
    let ints = Array1::from(vec![1i64, 2, 3, 4]).into_dyn();
    let msg = error(&write(
        &dir,
        "i.npz",
        &replace(good(false), "y_train", Some(Arr::I64(ints))),
    ));
    assert!(
        msg.contains("\"y_train\" has dtype") && msg.contains("i8") && msg.contains("float64"),
        "{msg}"
    );
}

#[test]
fn empty_training_set_is_refused() {
    let dir = TempDir::new();
    let arrays = replace(
        good(false),
        "x_train",
        Some(f64a(Array2::<f64>::zeros((0, 3)))),
    );
    let arrays = replace(arrays, "y_train", Some(f64a(Array1::<f64>::zeros(0))));
    let msg = error(&write(&dir, "e.npz", &arrays));
    assert!(msg.contains("\"x_train\" must be non-empty"), "{msg}");
}

/// Files written by NumPy itself, compressed and Fortran-ordered float32 included.
/// Needs python3 with numpy; skipped with a notice when numpy is not importable.
#[test]
fn numpy_written_files_load() {
    let dir = TempDir::new();
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
x = np.arange(12, dtype=np.float64).reshape(4, 3) / 10
y = np.array([1.0, -1.0, 0.5, 0.0])
xt = np.arange(6, dtype=np.float64).reshape(2, 3) / 10
np.savez(d + "/plain.npz", x_train=x, y_train=y, x_test=xt)
np.savez_compressed(d + "/compressed.npz", x_train=np.asfortranarray(x.astype(np.float32)),
                    y_train=y, x_test=xt, y_test=np.array([0.25, -0.25]))
"#;
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&dir.0)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: python3 not runnable ({e})");
            return;
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named") {
            println!("skipped: numpy is not importable");
            return;
        }
        panic!("python failed: {stderr}");
    }
    let plain = load_npz(&dir.0.join("plain.npz")).unwrap();
    assert_eq!(plain.x_train, x(4, 3));
    assert_eq!(plain.y_test, None);
    let compressed = load_npz(&dir.0.join("compressed.npz")).unwrap();
    assert_eq!(compressed.x_train, x(4, 3).mapv(|v| f64::from(v as f32)));
    assert_eq!(compressed.y_test, Some(array![0.25, -0.25]));
}
