//! The tangent pass with eight directions' state held in AVX-512 registers.
//!
//! The row kernel sweeps each point's δh row over every direction of a block, so every
//! element update loads and stores δh, δz' and the accumulator (measured ≈ 1.05 cycles per
//! element, bound by those read-modify-write streams). Here a tile of eight directions is
//! marched through all steps with δh (one register per point) and δz never leaving
//! registers: per element only the accumulator is loaded and stored, and the multiply-adds
//! are fused. The coefficients every tile reads are tabulated once per site
//! ([`StepLayout`]). Directions are α-major within a block, so a tile holds one training
//! point's consecutive source steps and, for relu, often only directions born zero
//! (h_α(j) ≤ 0): such tiles are skipped. Both together took the benchmark case from 28.8 s
//! to 18.5 s (docs/performance.md).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

/// Directions per tile: one 512-bit register of f64.
pub(super) const LANES: usize = 8;

/// Most points the register state holds (n rows of δh, plus δz and the accumulator in flight
/// within the 32 registers); larger problems take the row kernel.
const MAX_ROWS: usize = 24;

/// Register rows for n points (one instantiation per n, so that every loop over the rows
/// unrolls and the state is indexed by constants only), or None above [`MAX_ROWS`] or on a
/// CPU without AVX-512.
pub(super) fn register_rows(n: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if (1..=MAX_ROWS).contains(&n) && is_x86_feature_detected!("avx512f") {
        return Some(n);
    }
    None
}

/// One step's record of a site's coefficient table, for `rows` register rows and P training
/// points: a (rows), b (rows), v (rows), slope (rows), the birth sources of δh and δz (P
/// each), the number of curved training points, then (β, coefficient) for each (P slots).
#[derive(Clone, Copy)]
pub(super) struct StepLayout {
    pub rows: usize,
    pub p: usize,
}

impl StepLayout {
    pub fn len(&self) -> usize {
        4 * self.rows + 4 * self.p + 1
    }
    pub fn a(&self) -> usize {
        0
    }
    pub fn b(&self) -> usize {
        self.rows
    }
    pub fn v(&self) -> usize {
        2 * self.rows
    }
    pub fn slope(&self) -> usize {
        3 * self.rows
    }
    pub fn birth_h(&self) -> usize {
        4 * self.rows
    }
    pub fn birth_z(&self) -> usize {
        4 * self.rows + self.p
    }
    pub fn curved_count(&self) -> usize {
        4 * self.rows + 2 * self.p
    }
    pub fn curved(&self) -> usize {
        4 * self.rows + 2 * self.p + 1
    }
}

/// The equal-time entries read at the recorded steps (NTK, or Φ and G): out_e += c_x δh_x +
/// c_y δh_y + c_z δz, with three coefficients per entry and recorded step.
pub(super) struct Entries<'a> {
    pub rows: &'a [(usize, usize)],
    /// This site's coefficients, [r][e][3].
    pub coefficients: &'a [f64],
}

/// What the march of one site over one block of directions reads.
pub(super) struct TileSite<'a> {
    pub n: usize,
    pub steps: usize,
    pub block: Range<usize>,
    pub layout: StepLayout,
    /// This site's (T + 1) step records.
    pub table: &'a [f64],
    /// K^x_νβ at β·n + ν.
    pub kx_columns: &'a [f64],
    pub recorded: &'a [Option<usize>],
    pub ntk: Entries<'a>,
    pub kernels: Option<Entries<'a>>,
}

/// Adds the site's tangents for the directions of `site.block` to the accumulators: rows as
/// the row kernel's, directions α-major (d = α·L + j − j₀ for a block of L steps).
///
/// # Safety
/// The CPU must have AVX-512F, and `rows` must come from [`register_rows`].
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn march_block(
    rows: usize,
    site: &TileSite,
    acc: &mut [f64],
    ntk_acc: &mut [f64],
    kernel_acc: Option<&mut [f64]>,
) {
    macro_rules! dispatch {
        ($($rows:literal)*) => {
            match rows {
                // SAFETY: the caller promises AVX-512F.
                $($rows => unsafe { march::<$rows>(site, acc, ntk_acc, kernel_acc) },)*
                _ => unreachable!("register_rows gives 1..={MAX_ROWS}"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn march<const N: usize>(
    site: &TileSite,
    acc: &mut [f64],
    ntk_acc: &mut [f64],
    mut kernel_acc: Option<&mut [f64]>,
) {
    let TileSite { steps, layout, .. } = *site;
    let p = layout.p;
    let start = site.block.start;
    let width = site.block.len() * p;
    let len = layout.len();
    assert_eq!((site.n, layout.rows), (N, N), "one register row per point");
    // Every accumulator row (k·N + ν)·width + d0 + lane lies below this bound, so the loops
    // address them unchecked.
    assert!(acc.len() >= (steps + 1) * N * width, "D_f block layout");
    for entries in std::iter::once(&site.ntk).chain(&site.kernels) {
        assert_eq!(
            entries.coefficients.len() % (3 * entries.rows.len().max(1)),
            0
        );
    }
    let acc_base = acc.as_mut_ptr();
    let recorded_count = site.ntk.coefficients.len() / (3 * site.ntk.rows.len().max(1));
    assert!(ntk_acc.len() >= recorded_count * site.ntk.rows.len() * width);
    if let (Some(entries), Some(out)) = (&site.kernels, kernel_acc.as_deref()) {
        assert!(out.len() >= recorded_count * entries.rows.len() * width);
    }
    // Directions are α-major within the block, d = α·L + (j − j₀), so that a tile holds one
    // training point's consecutive source steps. A direction whose sources vanish (relu with
    // h_α(j) ≤ 0: g_α = φ_α = 0) is born zero and, the tangents being linear, stays zero: a
    // tile of such directions is skipped, and a tile starts at its first live birth.
    let block_len = site.block.len();
    let source = |lane_d: usize| {
        let (j, alpha) = (start + lane_d % block_len, lane_d / block_len);
        let rec = &site.table[j * len..(j + 1) * len];
        (
            j,
            alpha,
            rec[layout.birth_h() + alpha],
            rec[layout.birth_z() + alpha],
        )
    };
    for d0 in (0..width).step_by(LANES) {
        let lanes = (width - d0).min(LANES);
        let mask = ((1u32 << lanes) - 1) as __mmask8;
        let live = (d0..d0 + lanes)
            .map(source)
            .filter(|&(_, _, h, z)| h != 0.0 || z != 0.0)
            .map(|(j, ..)| j);
        let Some((first, last_birth)) = live.fold(None, |span, j| match span {
            None => Some((j, j)),
            Some((a, b)) => Some((j.min(a), j.max(b))),
        }) else {
            continue;
        };
        let mut dh = [_mm512_setzero_pd(); N];
        let mut dz = _mm512_setzero_pd();
        // δh before this step's update, for the rows picked at run time (curved points and
        // the entries' pairs); the live state is only ever indexed by constants, so it stays
        // in registers.
        let mut old = [_mm512_setzero_pd(); N];
        for k in first..=steps {
            let rec = &site.table[k * len..(k + 1) * len];
            if k > first {
                let curved_count = rec[layout.curved_count()] as usize;
                if site.recorded[k].is_some() || curved_count > 0 {
                    old = dh;
                }
                if let Some(r) = site.recorded[k] {
                    // SAFETY: AVX-512F as above; rows within the accumulators' layout.
                    unsafe {
                        add_entries(&site.ntk, r, &old, dz, (ntk_acc, width, d0, mask));
                        if let (Some(entries), Some(out)) =
                            (&site.kernels, kernel_acc.as_deref_mut())
                        {
                            add_entries(entries, r, &old, dz, (out, width, d0, mask));
                        }
                    }
                }
                let a: &[f64; N] = rec[layout.a()..][..N].try_into().expect("N rows");
                let b: &[f64; N] = rec[layout.b()..][..N].try_into().expect("N rows");
                // SAFETY (all `row` pointers): below the bound asserted on entry.
                let row = |nu: usize| unsafe { acc_base.add((k * N + nu) * width + d0) };
                if k == steps {
                    each_row::<N>(|nu| {
                        let out = row(nu);
                        // SAFETY: the masked lanes lie within the accumulator.
                        unsafe {
                            let sum = _mm512_maskz_loadu_pd(mask, out);
                            let sum = _mm512_fmadd_pd(_mm512_set1_pd(b[nu]), dz, sum);
                            let sum = _mm512_fmadd_pd(_mm512_set1_pd(a[nu]), dh[nu], sum);
                            _mm512_mask_storeu_pd(out, mask, sum);
                        }
                    });
                    break;
                }
                let v: &[f64; N] = rec[layout.v()..][..N].try_into().expect("N rows");
                let slope: &[f64; N] = rec[layout.slope()..][..N].try_into().expect("N rows");
                let mut dz_next = dz;
                each_row::<N>(|nu| {
                    let x = dh[nu];
                    let out = row(nu);
                    // SAFETY: the masked lanes lie within the accumulator.
                    unsafe {
                        let sum = _mm512_maskz_loadu_pd(mask, out);
                        let sum = _mm512_fmadd_pd(_mm512_set1_pd(b[nu]), dz, sum);
                        let sum = _mm512_fmadd_pd(_mm512_set1_pd(a[nu]), x, sum);
                        _mm512_mask_storeu_pd(out, mask, sum);
                    }
                    dz_next = _mm512_fmadd_pd(_mm512_set1_pd(slope[nu]), x, dz_next);
                    dh[nu] = _mm512_fmadd_pd(_mm512_set1_pd(v[nu]), dz, x);
                });
                let curved = &rec[layout.curved()..][..2 * curved_count];
                for pair in curved.chunks_exact(2) {
                    let beta = pair[0] as usize;
                    let scaled = _mm512_mul_pd(_mm512_set1_pd(pair[1]), old[beta]);
                    let column: &[f64; N] =
                        site.kx_columns[beta * N..][..N].try_into().expect("N rows");
                    each_row::<N>(|nu| {
                        dh[nu] = _mm512_fmadd_pd(_mm512_set1_pd(column[nu]), scaled, dh[nu]);
                    });
                }
                dz = dz_next;
            }
            // Directions born at step k: a unit shift of Δ_α(k) moves h(k+1) by c K_{·α} g_α
            // and z(k+1) by c φ_α; until then their lanes are zero.
            if k <= last_birth {
                let mut born_h = [[0.0f64; LANES]; N];
                let mut born_z = [0.0f64; LANES];
                for lane in 0..lanes {
                    let (j, alpha, source_h, source_z) = source(d0 + lane);
                    if j != k {
                        continue;
                    }
                    for (nu, born) in born_h.iter_mut().enumerate() {
                        born[lane] = site.kx_columns[alpha * N + nu] * source_h;
                    }
                    born_z[lane] = source_z;
                }
                // SAFETY: each load reads one whole [f64; LANES].
                unsafe {
                    each_row::<N>(|nu| {
                        dh[nu] = _mm512_add_pd(dh[nu], _mm512_loadu_pd(born_h[nu].as_ptr()));
                    });
                    dz = _mm512_add_pd(dz, _mm512_loadu_pd(born_z.as_ptr()));
                }
            }
        }
    }
}

/// Calls `f` on 0..N with each index a literal: the loops over the register rows unroll by
/// construction (left to the compiler's heuristics, a slightly larger loop body stays rolled
/// and the state spills to the stack, measured 1.45× slower).
#[inline(always)]
fn each_row<const N: usize>(mut f: impl FnMut(usize)) {
    macro_rules! upto {
        ($($nu:literal)*) => {
            $(if $nu < N {
                f($nu);
            })*
        };
    }
    const _: () = assert!(MAX_ROWS == 24, "each_row lists 24 rows");
    upto!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23);
}

/// out_e += c_x δh_x + c_y δh_y + c_z δz for every entry e at recorded step r.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_entries<const N: usize>(
    entries: &Entries,
    r: usize,
    old: &[__m512d; N],
    dz: __m512d,
    (acc, width, d0, mask): (&mut [f64], usize, usize, __mmask8),
) {
    let count = entries.rows.len();
    let coefficients = &entries.coefficients[3 * r * count..][..3 * count];
    for (e, (&(x, y), c)) in entries
        .rows
        .iter()
        .zip(coefficients.chunks_exact(3))
        .enumerate()
    {
        // SAFETY: AVX-512F is enabled; `march` asserted the accumulator's length.
        unsafe {
            let out = acc.as_mut_ptr().add((r * count + e) * width + d0);
            let sum = _mm512_maskz_loadu_pd(mask, out);
            let sum = _mm512_fmadd_pd(_mm512_set1_pd(c[2]), dz, sum);
            let sum = _mm512_fmadd_pd(_mm512_set1_pd(c[1]), old[y], sum);
            let sum = _mm512_fmadd_pd(_mm512_set1_pd(c[0]), old[x], sum);
            _mm512_mask_storeu_pd(out, mask, sum);
        }
    }
}
