//! Dense symmetric linear algebra on top of LAPACK (ndarray-linalg / OpenBLAS).
//!
//! DMFT covariances over (time, sample) are positive semi-definite and often singular, so
//! every factorization here works in the eigenbasis and drops directions whose eigenvalue is
//! below a relative threshold instead of failing like a plain Cholesky would.

use crate::{DmftError, Result};
use ndarray::{Array1, Array2, ArrayView2, ShapeBuilder};
use ndarray_linalg::{Eigh, UPLO};

/// Relative eigenvalue threshold under which a covariance direction is treated as absent.
/// Round-off in covariances assembled from O(1) entries is ~1e-15 relative; 1e-12 keeps
/// three orders of magnitude of margin while dropping only numerically null directions.
pub const RANK_TOL: f64 = 1e-12;

/// Eigen-decomposition of a symmetric matrix: eigenvalues ascending, eigenvectors as columns.
pub fn eigh(a: ArrayView2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    a.to_owned()
        .eigh(UPLO::Lower)
        .map_err(|e| DmftError::Numerical(format!("symmetric eigendecomposition failed: {e}")))
}

/// Eigenvalues of a symmetric matrix, ascending.
pub fn eigvalsh(a: ArrayView2<f64>) -> Result<Array1<f64>> {
    Ok(eigh(a)?.0)
}

/// A factor F (n × r) with F Fᵀ = A on the numerical range of the PSD matrix A, so that
/// x = F ξ with ξ ~ N(0, I_r) has covariance A. Directions with eigenvalue ≤ RANK_TOL·λ_max
/// (including slightly negative round-off) are dropped.
pub fn psd_factor(a: ArrayView2<f64>) -> Result<Array2<f64>> {
    let n = a.nrows();
    if n == 0 {
        return Ok(Array2::zeros((0, 0)));
    }
    let sym = (&a + &a.t()) * 0.5;
    let (vals, vecs) = eigh(sym.view())?;
    let lmax = vals.iter().cloned().fold(0.0_f64, f64::max);
    if !lmax.is_finite() {
        return Err(DmftError::Numerical(
            "covariance has non-finite entries".into(),
        ));
    }
    let keep: Vec<usize> = (0..n)
        .filter(|&i| vals[i] > RANK_TOL * lmax && lmax > 0.0)
        .collect();
    let mut f = Array2::zeros((n, keep.len()));
    for (col, &i) in keep.iter().enumerate() {
        let s = vals[i].sqrt();
        f.column_mut(col).assign(&(&vecs.column(i) * s));
    }
    Ok(f)
}

/// Symmetrizes in place: A ← (A + Aᵀ)/2, removing round-off asymmetry of assembled kernels.
pub fn symmetrize(a: &mut Array2<f64>) {
    let t = a.t().to_owned();
    *a += &t;
    *a *= 0.5;
}

/// Frobenius norm.
pub fn fro(a: ArrayView2<f64>) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Solves A X = B for every column of B with one LU factorization: LAPACK getrf, then getrs
/// with all right-hand sides at once. ndarray-linalg's LU solves one vector per call, a full
/// pass over the factors each, which at q ≈ 10⁴ unknowns and 10³ columns costs more than
/// the factorization itself.
pub fn solve_many(a: Array2<f64>, rhs: ArrayView2<f64>) -> Result<Array2<f64>> {
    let n = a.nrows();
    let too_large = |what: &str| {
        DmftError::Numerical(format!("solve_many: {what} exceeds LAPACK's 32-bit sizes"))
    };
    if a.ncols() != n || rhs.nrows() != n {
        return Err(DmftError::Numerical(format!(
            "solve_many: a {}×{} system with {} right-hand-side rows",
            n,
            a.ncols(),
            rhs.nrows()
        )));
    }
    let order = i32::try_from(n.max(1)).map_err(|_| too_large("the order"))?;
    let columns = i32::try_from(rhs.ncols()).map_err(|_| too_large("the column count"))?;
    // Row-major A read as column-major is Aᵀ: factor Aᵀ = P L U and solve the transpose.
    let mut factors = a.as_standard_layout().into_owned();
    let mut solution = Array2::<f64>::zeros((n, rhs.ncols()).f());
    solution.assign(&rhs);
    if n == 0 || rhs.ncols() == 0 {
        return Ok(solution);
    }
    let mut pivots = vec![0_i32; n];
    let mut info = 0;
    // SAFETY: the buffers are contiguous with the sizes passed (n × n factors, n × columns
    // right-hand sides in column-major order, n pivots).
    unsafe {
        dgetrf_(
            &order,
            &order,
            factors.as_mut_ptr(),
            &order,
            pivots.as_mut_ptr(),
            &mut info,
        )
    };
    if info != 0 {
        return Err(DmftError::Numerical(format!(
            "solve_many: LU factorization failed (LAPACK info {info}: singular at that pivot when positive)"
        )));
    }
    let transposed = b'T' as std::ffi::c_char;
    // SAFETY: as above; `factors` and `pivots` hold getrf's output.
    unsafe {
        dgetrs_(
            &transposed,
            &order,
            &columns,
            factors.as_ptr(),
            &order,
            pivots.as_ptr(),
            solution.as_mut_ptr(),
            &order,
            &mut info,
        )
    };
    if info != 0 {
        return Err(DmftError::Numerical(format!(
            "solve_many: LU substitution failed (LAPACK info {info})"
        )));
    }
    Ok(solution)
}

/// Adds rowsᵀ·rows to the lower triangle of `sum` (BLAS syrk, half the work of a GEMM);
/// the upper triangle is left as it was, so read the result through [`mirror_lower`].
/// `rows` must have contiguous rows (any row stride), `sum` standard layout.
pub fn add_gram_lower(rows: ArrayView2<f64>, sum: &mut Array2<f64>) {
    let (k, n) = rows.dim();
    assert_eq!(sum.dim(), (n, n), "add_gram_lower: sum is not {n} × {n}");
    assert!(
        sum.is_standard_layout(),
        "add_gram_lower: sum is not row-major"
    );
    if k == 0 || n == 0 {
        return;
    }
    assert!(
        rows.strides()[1] == 1 && rows.strides()[0] >= n as isize,
        "add_gram_lower: rows are not contiguous"
    );
    let to_i32 = |v: usize| i32::try_from(v).expect("add_gram_lower: size exceeds BLAS's 32 bits");
    let (order, depth, lda) = (to_i32(n), to_i32(k), to_i32(rows.strides()[0] as usize));
    // Row-major `rows` (k × n) read as column-major is A = rowsᵀ (n × k, lda = row stride),
    // so A·Aᵀ = rowsᵀ·rows; the column-major upper triangle of `sum` is its row-major lower one.
    let (upper, no_transpose) = (b'U' as std::ffi::c_char, b'N' as std::ffi::c_char);
    // SAFETY: `rows` spans (k − 1)·lda + n elements from its pointer and `sum` n·n
    // contiguous ones, the sizes passed.
    unsafe {
        dsyrk_(
            &upper,
            &no_transpose,
            &order,
            &depth,
            &1.0,
            rows.as_ptr(),
            &lda,
            &1.0,
            sum.as_mut_ptr(),
            &order,
        )
    };
}

/// Copies the lower triangle of a square matrix onto its upper one.
pub fn mirror_lower(a: &mut Array2<f64>) {
    for i in 0..a.nrows() {
        for j in 0..i {
            a[[j, i]] = a[[i, j]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn psd_factor_reproduces_singular_covariance() {
        // Rank-2 covariance in 3 dimensions: v1 v1ᵀ + v2 v2ᵀ.
        let v = array![[1.0, 0.5], [2.0, -1.0], [3.0, 0.5]];
        let a = v.dot(&v.t());
        let f = psd_factor(a.view()).unwrap();
        assert_eq!(f.ncols(), 2);
        let back = f.dot(&f.t());
        // Exact up to LAPACK round-off on O(10) entries.
        assert!(fro((&back - &a).view()) < 1e-12 * fro(a.view()));
    }

    /// Guards opened and closed out of order on two threads: OpenBLAS stays serial until the
    /// last one closes (the per-guard restore this replaced turned it back on under the
    /// second guard).
    #[test]
    fn overlapping_serial_guards_keep_blas_serial() {
        let threads = || unsafe { openblas_get_num_threads() };
        let first = SerialBlas::new();
        let (opened, close) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _second = SerialBlas::new();
                opened.wait();
                close.wait();
                assert_eq!(threads(), 1, "OpenBLAS threaded under the second guard");
            });
            opened.wait();
            drop(first);
            close.wait();
        });
    }

    /// Against the plain product Aᵀ·A on a row slice with a row stride wider than a row.
    #[test]
    fn gram_update_matches_the_product() {
        let mut rng = crate::sampling::replica_rng(4, 2);
        let wide = crate::sampling::normal_matrix(&mut rng, 9, 7);
        let rows = wide.slice(ndarray::s![..5, ..6]);
        let start = crate::sampling::normal_matrix(&mut rng, 6, 6);
        let mut sum = &start + &start.t();
        add_gram_lower(rows, &mut sum);
        mirror_lower(&mut sum);
        let expected = &start + &start.t() + rows.t().dot(&rows);
        // Round-off of 5-term sums of O(1) products.
        assert!(fro((&sum - &expected).view()) < 1e-13 * fro(expected.view()));
    }

    /// Against ndarray-linalg's one-column LU solve on a random nonsymmetric system, and the
    /// residual A X − B (both at round-off for a well-conditioned 40 × 40 matrix).
    #[test]
    fn solve_many_matches_column_solves() {
        use ndarray_linalg::Solve;
        let mut rng = crate::sampling::replica_rng(3, 1);
        let a = crate::sampling::normal_matrix(&mut rng, 40, 40) + Array2::<f64>::eye(40) * 8.0;
        let b = crate::sampling::normal_matrix(&mut rng, 40, 7);
        let x = solve_many(a.clone(), b.view()).unwrap();
        for j in 0..7 {
            let col = a.solve(&b.column(j)).unwrap();
            assert!(fro((&x.column(j) - &col).insert_axis(ndarray::Axis(1)).view()) < 1e-12);
        }
        assert!(fro((a.dot(&x) - &b).view()) < 1e-12 * fro(b.view()));
        let singular = Array2::<f64>::zeros((3, 3));
        let e = solve_many(singular, b.slice(ndarray::s![..3, ..]).view()).unwrap_err();
        assert!(e.to_string().contains("LU factorization failed"), "{e}");
    }

    #[test]
    fn psd_factor_of_zero_is_empty() {
        let f = psd_factor(Array2::<f64>::zeros((3, 3)).view()).unwrap();
        assert_eq!(f.ncols(), 0);
    }
}

unsafe extern "C" {
    fn openblas_get_num_threads() -> std::ffi::c_int;
    fn openblas_set_num_threads(threads: std::ffi::c_int);
    // BLAS and LAPACK, from the same OpenBLAS.
    fn dgetrf_(
        m: *const i32,
        n: *const i32,
        a: *mut f64,
        lda: *const i32,
        ipiv: *mut i32,
        info: *mut i32,
    );
    fn dsyrk_(
        uplo: *const std::ffi::c_char,
        trans: *const std::ffi::c_char,
        n: *const i32,
        k: *const i32,
        alpha: *const f64,
        a: *const f64,
        lda: *const i32,
        beta: *const f64,
        c: *mut f64,
        ldc: *const i32,
    );
    fn dgetrs_(
        trans: *const std::ffi::c_char,
        n: *const i32,
        nrhs: *const i32,
        a: *const f64,
        lda: *const i32,
        ipiv: *const i32,
        b: *mut f64,
        ldb: *const i32,
        info: *mut i32,
    );
}

/// Keeps OpenBLAS on the calling thread while it lives. Inside rayon's site loops every
/// worker calls BLAS on small matrices; OpenBLAS's own threads would then spin in
/// `sched_yield` beside them (measured: 18 % of the propagator's CPU time and 25 % of its
/// wall time on 2 cores), and its threaded LU keeps per-CPU job tables on the caller's
/// stack, which overflows the 2 MiB stacks of rayon and test threads (measured: SIGSEGV in a
/// test thread of the deep linear propagator).
pub struct SerialBlas {
    _guard: (),
}

/// Live [`SerialBlas`] guards and OpenBLAS's thread count before the first of them. Guards
/// overlap (one per rayon task in the mean shift, parallel tests), so each restoring the
/// count it saw would switch the threads back on under a guard still alive: only the last
/// one restores.
static SERIAL_GUARDS: std::sync::Mutex<(usize, std::ffi::c_int)> = std::sync::Mutex::new((0, 1));

fn serial_guards() -> std::sync::MutexGuard<'static, (usize, std::ffi::c_int)> {
    SERIAL_GUARDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SerialBlas {
    pub fn new() -> Self {
        let mut guards = serial_guards();
        if guards.0 == 0 {
            // SAFETY: plain getter and setter of OpenBLAS's global thread count.
            guards.1 = unsafe { openblas_get_num_threads() };
            unsafe { openblas_set_num_threads(1) };
        }
        guards.0 += 1;
        SerialBlas { _guard: () }
    }
}

impl Default for SerialBlas {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SerialBlas {
    fn drop(&mut self) {
        let mut guards = serial_guards();
        guards.0 -= 1;
        if guards.0 == 0 {
            // SAFETY: as in `new`.
            unsafe { openblas_set_num_threads(guards.1) };
        }
    }
}
