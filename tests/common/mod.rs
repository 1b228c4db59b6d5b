//! Inputs shared by the validation tests: Gaussian points with a linear teacher.

use dmft_runtime::sampling::{normal_matrix, replica_rng};
use dmft_sim::Dataset;
use ndarray::{Array1, s};

/// P train and Q test points x ~ N(0, I_dim) with targets y = β·x/√dim.
pub fn dataset(p: usize, q: usize, dim: usize, seed: u64) -> Dataset {
    let mut rng = replica_rng(seed, 77);
    let x = normal_matrix(&mut rng, p + q, dim);
    let beta = normal_matrix(&mut rng, dim, 1).column(0).to_owned();
    let y: Array1<f64> = x.dot(&beta) / (dim as f64).sqrt();
    Dataset::new(
        x.slice(s![..p, ..]).to_owned(),
        y.slice(s![..p]).to_owned(),
        x.slice(s![p.., ..]).to_owned(),
        Some(y.slice(s![p..]).to_owned()),
    )
    .unwrap()
}
