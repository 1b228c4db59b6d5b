//! Finite-width fluctuations of the hidden-layer kernels: N·Var of the equal-time feature
//! kernel Φ^ℓ(t,t) and gradient kernel G^ℓ(t,t) of every hidden layer, and the kernel
//! signal-to-noise ratio of Bordelon & Pehlevan (*Dynamics of finite width kernel and
//! prediction fluctuations in mean field neural networks*), shared by every propagator that
//! computes them.

use ndarray::{Array1, Array3, s};

/// Infinite-width equal-time kernels of every hidden layer and N·Var of their entries at the
/// recorded steps. Vectors are indexed by layer ℓ − 1 (ℓ = 1..L); conventions are the
/// simulator's (`dmft_sim` records the same Φ^ℓ and G^ℓ), so each N·Var here is the limit of
/// N times the variance over seeds of the matching recorded entry.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelVariances {
    /// Φ^ℓ(t,t) over all points (train first), T_rec × (P+Q) × (P+Q).
    pub phi_kernel: Vec<Array3<f64>>,
    /// N·Var Φ^ℓ(t,t)_{ab}, same shape.
    pub var_phi_kernel: Vec<Array3<f64>>,
    /// G^ℓ(t,t) over the train points, T_rec × P × P.
    pub grad_kernel: Vec<Array3<f64>>,
    /// N·Var G^ℓ(t,t)_{μν}, same shape.
    pub var_grad_kernel: Vec<Array3<f64>>,
}

impl KernelVariances {
    /// Width-free signal-to-noise ratio of Φ^ℓ on the train block at each recorded step:
    /// ‖Φ^ℓ‖²_F / Σ_{μν} N·Var Φ^ℓ_{μν}. At width N the ratio ‖E Φ‖²_F / E‖Φ − E Φ‖²_F is N
    /// times this, to leading order.
    pub fn phi_snr(&self, layer: usize, p: usize) -> Array1<f64> {
        snr(
            &self.phi_kernel[layer - 1],
            &self.var_phi_kernel[layer - 1],
            p,
        )
    }

    /// The same for G^ℓ.
    pub fn grad_snr(&self, layer: usize, p: usize) -> Array1<f64> {
        snr(
            &self.grad_kernel[layer - 1],
            &self.var_grad_kernel[layer - 1],
            p,
        )
    }

    pub fn depth(&self) -> usize {
        self.phi_kernel.len()
    }
}

fn snr(kernel: &Array3<f64>, var: &Array3<f64>, p: usize) -> Array1<f64> {
    let signal = kernel.slice(s![.., ..p, ..p]);
    let noise = var.slice(s![.., ..p, ..p]);
    Array1::from_iter(
        signal
            .outer_iter()
            .zip(noise.outer_iter())
            .map(|(k, v)| k.iter().map(|x| x * x).sum::<f64>() / v.sum()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn snr_is_squared_frobenius_over_summed_variance_on_the_train_block() {
        // One recorded step, P = 1 train point and one test point: only the (0, 0) entry counts.
        let kernel = Array3::from_shape_vec((1, 2, 2), vec![2.0, 100.0, 100.0, 100.0]).unwrap();
        let var = Array3::from_shape_vec((1, 2, 2), vec![0.5, 9.0, 9.0, 9.0]).unwrap();
        let kv = KernelVariances {
            phi_kernel: vec![kernel.clone()],
            var_phi_kernel: vec![var.clone()],
            grad_kernel: vec![kernel],
            var_grad_kernel: vec![var],
        };
        assert_eq!(kv.phi_snr(1, 1)[0], 8.0);
        assert_eq!(kv.grad_snr(1, 1)[0], 8.0);
        assert_eq!(kv.depth(), 1);
    }
}
