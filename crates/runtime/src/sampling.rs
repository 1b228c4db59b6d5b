//! Random draws for Monte Carlo site averages, and statistics over independent replicas.
//!
//! A Monte Carlo average over M interacting sites is a width-M network: its error is the
//! O(1/√M) fluctuation propagated through Δ plus an O(1/M) bias. The solvers run R
//! independent replicas of M/R sites, whose spread measures the first honestly, and one
//! population of M sites; extrapolating between the two (bias b/M against bR/M) cancels the
//! O(1/M) bias (`record::replica_trajectory`).

use crate::{DmftError, Result};
use ndarray::{Array2, Array3, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Number of independent replicas a Monte Carlo run is split into.
pub const MC_REPLICAS: usize = 16;

/// Fewest sites a replica may have.
pub const MIN_SITES_PER_REPLICA: usize = 8;

/// One reproducible stream per (seed, replica), independent of thread scheduling.
pub fn replica_rng(seed: u64, replica: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(splitmix(seed ^ splitmix(replica.wrapping_add(0x9E37))))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// rows × cols standard normal draws, filled row by row.
pub fn normal_matrix(rng: &mut impl Rng, rows: usize, cols: usize) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.sample(StandardNormal))
}

/// Sizes of the replicas a run of `sites` sites is split into.
pub fn replica_sizes(sites: usize) -> Result<Vec<usize>> {
    if sites < MC_REPLICAS * MIN_SITES_PER_REPLICA {
        return Err(DmftError::Invalid(format!(
            "theory.sites must be ≥ {} for Monte Carlo ({MC_REPLICAS} replicas of ≥ {MIN_SITES_PER_REPLICA} sites), got {sites}",
            MC_REPLICAS * MIN_SITES_PER_REPLICA
        )));
    }
    let base = sites / MC_REPLICAS;
    let extra = sites % MC_REPLICAS;
    Ok((0..MC_REPLICAS)
        .map(|i| base + usize::from(i < extra))
        .collect())
}

/// Mean and standard error of the mean over replicas of equally shaped matrices.
pub struct ReplicaStats {
    pub mean: Array2<f64>,
    pub se: Array2<f64>,
}

impl ReplicaStats {
    pub fn new<'a>(runs: impl Iterator<Item = ArrayView2<'a, f64>>) -> Self {
        let runs: Vec<_> = runs.collect();
        let r = runs.len() as f64;
        let mut mean = Array2::zeros(runs[0].dim());
        for x in &runs {
            mean += x;
        }
        mean /= r;
        let mut se = Array2::zeros(mean.dim());
        if runs.len() > 1 {
            for x in &runs {
                let d = x - &mean;
                se += &(&d * &d);
            }
            se.mapv_inplace(|v| (v / (r - 1.0) / r).sqrt());
        }
        ReplicaStats { mean, se }
    }
}

pub fn mean3<'a>(runs: impl Iterator<Item = &'a Array3<f64>>) -> Array3<f64> {
    let runs: Vec<_> = runs.collect();
    let mut mean = Array3::zeros(runs[0].dim());
    for x in &runs {
        mean += *x;
    }
    mean / runs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_sizes_add_up_and_reject_too_few_sites() {
        let sizes = replica_sizes(1000).unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.iter().all(|&m| m == 62 || m == 63));
        let err = replica_sizes(10).unwrap_err().to_string();
        assert!(err.contains("theory.sites"));
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = normal_matrix(&mut replica_rng(3, 0), 4, 2);
        let b = normal_matrix(&mut replica_rng(3, 0), 4, 2);
        let c = normal_matrix(&mut replica_rng(3, 1), 4, 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
