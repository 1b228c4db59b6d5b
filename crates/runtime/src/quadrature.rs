//! Gauss–Hermite quadrature against the standard normal density.
//!
//! Nodes and weights come from the Golub–Welsch eigenproblem of the Jacobi matrix of the
//! probabilists' Hermite polynomials (off-diagonal √k), so Σ wᵢ p(xᵢ) = E[p(ξ)], ξ ~ N(0,1),
//! exactly for polynomials p of degree < 2n.

use crate::linalg::eigh;
use crate::{DmftError, Result};
use ndarray::{Array1, Array2};

/// The n-point rule: (nodes, weights), weights summing to 1.
pub fn gauss_hermite(n: usize) -> Result<(Array1<f64>, Array1<f64>)> {
    if n == 0 {
        return Err(DmftError::Invalid("Gauss–Hermite order must be ≥ 1".into()));
    }
    let mut jacobi = Array2::zeros((n, n));
    for k in 1..n {
        let b = (k as f64).sqrt();
        jacobi[[k, k - 1]] = b;
        jacobi[[k - 1, k]] = b;
    }
    let (nodes, vecs) = eigh(jacobi.view())?;
    let mut weights = vecs.row(0).mapv(|v| v * v);
    let total = weights.sum();
    weights /= total;
    Ok((nodes, weights))
}

/// Tensor-product rule in `dim` dimensions: rows of `nodes` are points in R^dim.
pub fn tensor_grid(order: usize, dim: usize) -> Result<(Array2<f64>, Array1<f64>)> {
    let (x, w) = gauss_hermite(order)?;
    let count = order
        .checked_pow(dim as u32)
        .ok_or_else(|| DmftError::Invalid(format!("quadrature grid {order}^{dim} is too large")))?;
    let mut nodes = Array2::zeros((count, dim));
    let mut weights = Array1::ones(count);
    for i in 0..count {
        let mut rest = i;
        for d in 0..dim {
            let j = rest % order;
            rest /= order;
            nodes[[i, d]] = x[j];
            weights[i] *= w[j];
        }
    }
    Ok((nodes, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double_factorial_odd(m: u32) -> f64 {
        (1..=m).map(|k| (2 * k - 1) as f64).product()
    }

    /// Exactness for polynomials of degree < 2n is the defining property; the tolerance is
    /// relative round-off of the eigen-solver on moments up to (2m−1)!! ≈ 2e6.
    #[test]
    fn integrates_gaussian_moments_exactly() {
        for n in [5, 12, 40] {
            let (x, w) = gauss_hermite(n).unwrap();
            for m in 0..n.min(8) as u32 {
                let got: f64 = x
                    .iter()
                    .zip(&w)
                    .map(|(x, w)| w * x.powi(2 * m as i32))
                    .sum();
                let want = double_factorial_odd(m);
                assert!(
                    (got - want).abs() < 1e-10 * want,
                    "n={n} m={m}: {got} vs {want}"
                );
                let odd: f64 = x
                    .iter()
                    .zip(&w)
                    .map(|(x, w)| w * x.powi(2 * m as i32 + 1))
                    .sum();
                assert!(odd.abs() < 1e-10 * want.max(1.0));
            }
        }
    }

    #[test]
    fn tensor_grid_weights_sum_to_one_and_cover_the_grid() {
        let (nodes, w) = tensor_grid(4, 3).unwrap();
        assert_eq!(nodes.dim(), (64, 3));
        assert!((w.sum() - 1.0).abs() < 1e-14);
        // E[ξ₀² ξ₂²] = 1 for independent standard normals.
        let m: f64 = (0..64)
            .map(|i| w[i] * nodes[[i, 0]].powi(2) * nodes[[i, 2]].powi(2))
            .sum();
        assert!((m - 1.0).abs() < 1e-12);
    }
}
