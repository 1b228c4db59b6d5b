//! The tangent pass with a tile of directions' state held in vector registers: eight with
//! AVX-512, four with AVX2 and FMA (≈ 1.1× the row kernel on the benchmark machine, where
//! the AVX-512 copy is 1.56×).
//!
//! The row kernel sweeps each point's δh row over every direction of a block, so every
//! element update loads and stores δh, δz' and the accumulator (measured ≈ 1.05 cycles per
//! element, bound by those read-modify-write streams). Here a tile of directions, one
//! register wide, is marched through all steps with δh (one register per point) and δz never leaving
//! registers: per element only the accumulator is loaded and stored, and the multiply-adds
//! are fused. The coefficients every tile reads are tabulated once per site
//! ([`StepLayout`]). Directions are α-major within a block, so a tile holds one training
//! point's consecutive source steps and, for relu, often only directions born zero
//! (h_α(j) ≤ 0): such tiles are skipped. Both together took the benchmark case from 28.8 s
//! to 18.4 s (docs/performance.md).

// Elsewhere no instruction set is offered and the kernel's types go unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

/// Most points the register state holds: n rows of δh plus δz and the values in flight fit
/// AVX-512's 32 registers. Larger problems take the row kernel.
const MAX_ROWS: usize = 24;

/// Most points of the AVX2 copy: its 16 registers already spill a few values at 12 rows,
/// where it was measured 1.1× faster than the row kernel; beyond, the row kernel runs.
const MAX_AVX2_ROWS: usize = 12;

/// The most lanes of any instruction set, for the scratch arrays of the births.
const MAX_LANES: usize = 8;

/// The instruction set a register kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// Directions per tile: one register of f64.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 => 4,
        }
    }
}

/// The register kernels this CPU runs for n points, fastest first (one instantiation per n,
/// so that every loop over the rows unrolls and the state is indexed by constants only):
/// AVX-512 up to [`MAX_ROWS`] points, AVX2 with FMA up to [`MAX_AVX2_ROWS`].
pub(super) fn register_isas(n: usize) -> Vec<Isa> {
    let mut isas = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if n >= 1 {
        if n <= MAX_ROWS && is_x86_feature_detected!("avx512f") {
            isas.push(Isa::Avx512);
        }
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if n <= MAX_AVX2_ROWS && avx2 {
            isas.push(Isa::Avx2);
        }
    }
    isas
}

/// The vector operations of the march, for one instruction set: `V` holds one tile's lanes,
/// `Mask` the lanes of a tile that lie inside the block. Each method is compiled for its
/// instruction set, so it inlines into the march copy compiled for the same set; calling one
/// is sound only on a CPU that has it.
#[cfg(target_arch = "x86_64")]
trait Lanes {
    const LANES: usize;
    type V: Copy;
    type Mask: Copy;
    unsafe fn mask(lanes: usize) -> Self::Mask;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f64) -> Self::V;
    /// a·b + c.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// Loads the masked lanes from `at` (zero elsewhere); the others are not read.
    unsafe fn load(at: *const f64, mask: Self::Mask) -> Self::V;
    /// Stores the masked lanes to `at`; the others are not written.
    unsafe fn store(at: *mut f64, mask: Self::Mask, v: Self::V);
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    const LANES: usize = 8;
    type V = __m512d;
    type Mask = __mmask8;
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mask(lanes: usize) -> __mmask8 {
        ((1u32 << lanes) - 1) as __mmask8
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero() -> __m512d {
        _mm512_setzero_pd()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(x: f64) -> __m512d {
        _mm512_set1_pd(x)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fmadd(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        _mm512_fmadd_pd(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add(a: __m512d, b: __m512d) -> __m512d {
        _mm512_add_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mul(a: __m512d, b: __m512d) -> __m512d {
        _mm512_mul_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(at: *const f64, mask: __mmask8) -> __m512d {
        unsafe { _mm512_maskz_loadu_pd(mask, at) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(at: *mut f64, mask: __mmask8, v: __m512d) {
        unsafe { _mm512_mask_storeu_pd(at, mask, v) }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    const LANES: usize = 4;
    type V = __m256d;
    /// The number of lanes and, for a partial tile, the maskload/maskstore mask.
    type Mask = (usize, __m256i);
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mask(lanes: usize) -> (usize, __m256i) {
        let on = |lane: usize| if lane < lanes { -1 } else { 0 };
        (lanes, _mm256_setr_epi64x(on(0), on(1), on(2), on(3)))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256d {
        _mm256_setzero_pd()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(x: f64) -> __m256d {
        _mm256_set1_pd(x)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fmadd(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        _mm256_fmadd_pd(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add(a: __m256d, b: __m256d) -> __m256d {
        _mm256_add_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul(a: __m256d, b: __m256d) -> __m256d {
        _mm256_mul_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(at: *const f64, (lanes, mask): (usize, __m256i)) -> __m256d {
        // Full tiles are the rule; maskload is slow on some CPUs, so only partial ones use it.
        unsafe {
            if lanes == 4 {
                _mm256_loadu_pd(at)
            } else {
                _mm256_maskload_pd(at, mask)
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(at: *mut f64, (lanes, mask): (usize, __m256i), v: __m256d) {
        unsafe {
            if lanes == 4 {
                _mm256_storeu_pd(at, v)
            } else {
                _mm256_maskstore_pd(at, mask, v)
            }
        }
    }
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
/// c_y δh_y + c_z δz.
pub(super) struct Entries<'a> {
    pub rows: &'a [(usize, usize)],
    /// This site's coefficients per recorded step, [`compact_entries`] of [`entries_len`].
    pub coefficients: &'a [f64],
}

/// Length of one recorded step's compacted coefficients for `count` entries.
pub(super) fn entries_len(count: usize) -> usize {
    1 + 4 * count
}

/// Compacts three coefficients per entry (`triples`) to the number of entries with a
/// non-zero one, then (e, c_x, c_y, c_z) for each: for relu about a quarter of the entries
/// pair two inactive units and vanish, and skipping them by a test in the march
/// mispredicted (measured slower than adding zeros).
pub(super) fn compact_entries(triples: &[f64], out: &mut [f64]) {
    let mut live = 0;
    for (e, c) in triples.chunks_exact(3).enumerate() {
        if c.iter().any(|&x| x != 0.0) {
            out[1 + 4 * live] = e as f64;
            out[2 + 4 * live..5 + 4 * live].copy_from_slice(c);
            live += 1;
        }
    }
    out[0] = live as f64;
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
/// `isa` must come from [`register_isas`] for `site.n` points on this CPU.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn march_block(
    isa: Isa,
    site: &TileSite,
    acc: &mut [f64],
    ntk_acc: &mut [f64],
    kernel_acc: Option<&mut [f64]>,
) {
    macro_rules! dispatch {
        ($($wide:literal)*; $($narrow:literal)*) => {
            match (isa, site.n) {
                // SAFETY: the caller promises the instruction set.
                $((Isa::Avx512, $wide) => unsafe {
                    march_avx512::<$wide>(site, acc, ntk_acc, kernel_acc)
                },)*
                $((Isa::Avx2, $narrow) => unsafe {
                    march_avx2::<$narrow>(site, acc, ntk_acc, kernel_acc)
                },)*
                _ => unreachable!("register_isas serves at most {MAX_ROWS} points"),
            }
        };
    }
    const _: () = assert!(
        MAX_ROWS == 24 && MAX_AVX2_ROWS == 12,
        "dispatch lists the sizes"
    );
    dispatch!(
        1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24;
        1 2 3 4 5 6 7 8 9 10 11 12
    )
}

/// The march, one copy per instruction set, each compiled with that set (a generic function
/// without it would not inline the vector operations, nor would its closures: measured 7–8×
/// slower).
macro_rules! register_march {
    ($name:ident, $entries:ident, $features:literal, $S:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const N: usize>(
            site: &TileSite,
            acc: &mut [f64],
            ntk_acc: &mut [f64],
            mut kernel_acc: Option<&mut [f64]>,
        ) {
            type S = $S;
            let add_entries = $entries::<N>;
            // SAFETY: the caller promises the instruction set S is compiled for; every accumulator
            // pointer stays below the lengths asserted first, and the masked lanes inside the
            // block.
            unsafe {
                let TileSite { steps, layout, .. } = *site;
                let p = layout.p;
                let start = site.block.start;
                let width = site.block.len() * p;
                let len = layout.len();
                assert_eq!((site.n, layout.rows), (N, N), "one register row per point");
                // Every accumulator row (k·N + ν)·width + d0 + lane lies below this bound, so the
                // loops address them unchecked.
                assert!(acc.len() >= (steps + 1) * N * width, "D_f block layout");
                for entries in std::iter::once(&site.ntk).chain(&site.kernels) {
                    assert_eq!(
                        entries.coefficients.len() % entries_len(entries.rows.len()),
                        0
                    );
                }
                let acc_base = acc.as_mut_ptr();
                let recorded_count = site.ntk.coefficients.len() / entries_len(site.ntk.rows.len());
                assert!(ntk_acc.len() >= recorded_count * site.ntk.rows.len() * width);
                if let (Some(entries), Some(out)) = (&site.kernels, kernel_acc.as_deref()) {
                    assert!(out.len() >= recorded_count * entries.rows.len() * width);
                }
                // Directions are α-major within the block, d = α·L + (j − j₀), so that a tile holds
                // one training point's consecutive source steps. A direction whose sources vanish
                // (relu with h_α(j) ≤ 0: g_α = φ_α = 0) is born zero and, the tangents being
                // linear, stays zero: a tile of such directions is skipped, and a tile starts at
                // its first live birth.
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
                let full = S::mask(S::LANES);
                for d0 in (0..width).step_by(S::LANES) {
                    let lanes = (width - d0).min(S::LANES);
                    let mask = S::mask(lanes);
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
                    let mut dh = [S::zero(); N];
                    let mut dz = S::zero();
                    // δh before this step's update, for the rows picked at run time (curved points
                    // and the entries' pairs); the live state is only ever indexed by constants, so
                    // it stays in registers.
                    let mut old = [S::zero(); N];
                    for k in first..=steps {
                        let rec = &site.table[k * len..(k + 1) * len];
                        if k > first {
                            let curved_count = rec[layout.curved_count()] as usize;
                            if site.recorded[k].is_some() || curved_count > 0 {
                                old = dh;
                            }
                            if let Some(r) = site.recorded[k] {
                                add_entries(&site.ntk, r, &old, dz, (ntk_acc, width, d0, mask));
                                if let (Some(entries), Some(out)) =
                                    (&site.kernels, kernel_acc.as_deref_mut())
                                {
                                    add_entries(entries, r, &old, dz, (out, width, d0, mask));
                                }
                            }
                            let a: &[f64; N] = rec[layout.a()..][..N].try_into().expect("N rows");
                            let b: &[f64; N] = rec[layout.b()..][..N].try_into().expect("N rows");
                            let row = |nu: usize| acc_base.add((k * N + nu) * width + d0);
                            if k == steps {
                                each_row::<N>(|nu| {
                                    let out = row(nu);
                                    let sum = S::load(out, mask);
                                    let sum = S::fmadd(S::splat(b[nu]), dz, sum);
                                    let sum = S::fmadd(S::splat(a[nu]), dh[nu], sum);
                                    S::store(out, mask, sum);
                                });
                                break;
                            }
                            let v: &[f64; N] = rec[layout.v()..][..N].try_into().expect("N rows");
                            let slope: &[f64; N] =
                                rec[layout.slope()..][..N].try_into().expect("N rows");
                            let mut dz_next = dz;
                            each_row::<N>(|nu| {
                                let x = dh[nu];
                                let out = row(nu);
                                let sum = S::load(out, mask);
                                let sum = S::fmadd(S::splat(b[nu]), dz, sum);
                                let sum = S::fmadd(S::splat(a[nu]), x, sum);
                                S::store(out, mask, sum);
                                dz_next = S::fmadd(S::splat(slope[nu]), x, dz_next);
                                dh[nu] = S::fmadd(S::splat(v[nu]), dz, x);
                            });
                            let curved = &rec[layout.curved()..][..2 * curved_count];
                            for pair in curved.chunks_exact(2) {
                                let beta = pair[0] as usize;
                                let scaled = S::mul(S::splat(pair[1]), old[beta]);
                                let column: &[f64; N] =
                                    site.kx_columns[beta * N..][..N].try_into().expect("N rows");
                                each_row::<N>(|nu| {
                                    dh[nu] = S::fmadd(S::splat(column[nu]), scaled, dh[nu]);
                                });
                            }
                            dz = dz_next;
                        }
                        // Directions born at step k: a unit shift of Δ_α(k) moves h(k+1) by c
                        // K_{·α} g_α and z(k+1) by c φ_α; until then their lanes are zero.
                        if k <= last_birth {
                            let mut born_h = [[0.0f64; MAX_LANES]; N];
                            let mut born_z = [0.0f64; MAX_LANES];
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
                            each_row::<N>(|nu| {
                                dh[nu] = S::add(dh[nu], S::load(born_h[nu].as_ptr(), full));
                            });
                            dz = S::add(dz, S::load(born_z.as_ptr(), full));
                        }
                    }
                }
            }
        }

        /// out_e += c_x δh_x + c_y δh_y + c_z δz for every entry e at recorded step r.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $entries<const N: usize>(
            entries: &Entries,
            r: usize,
            old: &[<$S as Lanes>::V; N],
            dz: <$S as Lanes>::V,
            (acc, width, d0, mask): (&mut [f64], usize, usize, <$S as Lanes>::Mask),
        ) {
            type S = $S;
            let count = entries.rows.len();
            let len = entries_len(count);
            let compacted = &entries.coefficients[r * len..][..len];
            let live = compacted[0] as usize;
            for c in compacted[1..1 + 4 * live].chunks_exact(4) {
                let (e, c) = (c[0] as usize, &c[1..]);
                let (x, y) = entries.rows[e];
                // SAFETY: `march` asserted the accumulator's length.
                unsafe {
                    let out = acc.as_mut_ptr().add((r * count + e) * width + d0);
                    let sum = S::load(out, mask);
                    let sum = S::fmadd(S::splat(c[2]), dz, sum);
                    let sum = S::fmadd(S::splat(c[1]), old[y], sum);
                    let sum = S::fmadd(S::splat(c[0]), old[x], sum);
                    S::store(out, mask, sum);
                }
            }
        }
    };
}

register_march!(march_avx512, entries_avx512, "avx512f", Avx512);
register_march!(march_avx2, entries_avx2, "avx2,fma", Avx2);

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
