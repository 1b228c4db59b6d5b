//! C ← αAB + βC on strided ndarray views through matrixmultiply.
//!
//! Called directly (rather than through `ndarray::dot`) so the products stay single-threaded
//! and independent of whichever BLAS backend the workspace enables for ndarray: parallelism
//! comes from running seeds on rayon threads, and a multithreaded BLAS inside each of them
//! would oversubscribe the cores. Transposed operands are free (they are just strides).

use ndarray::{ArrayView2, ArrayViewMut2};

/// C ← αAB + βC. When β = 0 the previous contents of C are ignored (may be garbage or NaN).
pub(crate) fn gemm(
    alpha: f64,
    a: ArrayView2<f64>,
    b: ArrayView2<f64>,
    beta: f64,
    mut c: ArrayViewMut2<f64>,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(
        k, k2,
        "gemm: inner dimensions differ ({m}×{k} times {k2}×{n})"
    );
    assert_eq!(
        c.dim(),
        (m, n),
        "gemm: output is {:?}, expected ({m}, {n})",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c *= beta;
        }
        return;
    }
    let (sa, sb) = (a.strides(), b.strides());
    let (rsc, csc) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were checked
    // above, so every index matrixmultiply forms is in bounds; `c` is a unique mutable view,
    // so it aliases neither `a` nor `b`, and its strides are those of an owned or sliced
    // array, never zero for an axis of length > 1.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            sa[0],
            sa[1],
            b.as_ptr(),
            sb[0],
            sb[1],
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn matches_naive_product_with_transposes_and_accumulation() {
        let a = array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let b = array![[1.0, -1.0], [0.5, 2.0], [-2.0, 1.0]];
        let mut c = Array2::from_elem((2, 2), 1.0);
        gemm(2.0, a.view(), b.view(), 0.5, c.view_mut());
        let expected = 2.0 * a.dot(&b) + 0.5;
        assert_eq!(c, expected);
        // Aᵀ-stored operands: (bᵀ)ᵀ = b, read through swapped strides.
        let bt = b.t().to_owned();
        let mut c2 = Array2::from_elem((2, 2), f64::NAN);
        gemm(1.0, a.view(), bt.t(), 0.0, c2.view_mut());
        assert_eq!(c2, a.dot(&b));
    }
}
