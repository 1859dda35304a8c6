//! CPU implementation of the streaming attention-KL: forward and backward.
//!
//! # Work decomposition
//!
//! The valid positions of batch item `b` (mask ≠ 0) are listed once; kernels only ever touch
//! those ("compacted" order), so masked keys cost nothing and padded query rows are skipped.
//! Work items are `(b·h, range of query-row blocks)`: one range per `(b, h)` unless there are too
//! few pairs to keep every rayon thread busy, in which case each pair is split in a few ranges.
//!
//! An item first *packs* the keys of its `(b, h)` into per-thread scratch (compacted, converted to
//! `f32`, row-major `[n][d]`), then for each block of [`MB`] query rows packs the queries
//! transposed (`[d][MB]`, pre-multiplied by their scale) and streams over key tiles of [`NT`].
//! Scratch is thread-local and reused across calls; everything in it is O(L·d) or O(MB·NT) —
//! nothing of size L² exists anywhere.
//!
//! # Transposed score tiles
//!
//! For a key tile, the register-blocked micro-kernel computes `Sᵀ = K·Qᵀ` (`[NT keys][MB rows]`)
//! for the teacher (`A`) and the student (`B`). With keys as tile rows, one SIMD vector holds 8
//! *query rows*, so the online-softmax state of 8 rows (`m_a, Z_a, W, m_b, Z_b`) lives in vectors
//! and the whole update is vertical: no horizontal reductions, no scalar exponentials, no
//! sentinels for partial tiles (loops simply stop at the last valid key).
//!
//! # Forward
//!
//! Per row and tile: `m' = max(m, max_j a_j)`, rescale `Z_a` and `W` by `e^(m − m')`, add
//! `Σ e^(a_j − m')` and `Σ e^(a_j − m')(a_j − b_j)`; likewise `m_b`, `Z_b`. Each row ends with
//! `KL = W/Z_a − (m_a − m_b) − ln Z_a + ln Z_b` and saves `[m_a, ln Z_a, m_b, ln Z_b]`
//! (`lse = m + ln Z`, kept apart so that `a − lse = (a − m) − ln Z` stays accurate for large
//! scores).
//!
//! # Backward
//!
//! Per row block and key tile the scores are recomputed and
//! `dSᵀ = g·(softmax(b) − softmax(a))` overwrites `A`; then `dQ_block += dS·K_s` (accumulated in
//! scratch, scaled by `scale_s` and written out once per block) and
//! `dK[tile] += dSᵀ·(scale_s Q_s)_block` (accumulated in an `[n][d_s]` scratch buffer and written
//! out at the end of the item). When a `(b, h)` is split over several items, each writes its
//! `dK` to a partial buffer and the partials are summed afterwards.

use super::Problem;
use crate::simd::{gemm, Isa, Simd, LANES};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout};
use half::{bf16, f16};
use rayon::prelude::*;
use std::cell::RefCell;

mod backward;
pub(crate) use backward::backward;

/// Query rows per block: the width of the transposed score tiles (a multiple of 16, the
/// micro-kernel width).
pub(crate) const MB: usize = 32;
/// Keys per tile.
pub(crate) const NT: usize = 32;
/// Vectors per block row.
const GROUPS: usize = MB / LANES;
const _: () = assert!(MB.is_multiple_of(16) && NT > 0);

/// An element type the kernels read and write; all arithmetic is in `f32`.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Elem for f64 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x as f64
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

/// A contiguous, floating-point input slice in `[b, h, l, d]` order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Src<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> Src<'a> {
    /// Borrows the elements of a contiguous CPU tensor.
    pub(crate) fn new(s: &'a CpuStorage, l: &Layout, name: &str) -> candle_core::Result<Self> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("attention-kl: `{name}` must be contiguous");
        };
        fn get<'a, T>(
            v: &'a [T],
            r: std::ops::Range<usize>,
            name: &str,
        ) -> candle_core::Result<&'a [T]> {
            match v.get(r) {
                Some(x) => Ok(x),
                None => candle_core::bail!(
                    "attention-kl: `{name}` layout is out of bounds of its storage"
                ),
            }
        }
        Ok(match s {
            CpuStorage::F32(v) => Src::F32(get(v, start..end, name)?),
            CpuStorage::F64(v) => Src::F64(get(v, start..end, name)?),
            CpuStorage::BF16(v) => Src::BF16(get(v, start..end, name)?),
            CpuStorage::F16(v) => Src::F16(get(v, start..end, name)?),
            other => candle_core::bail!(
                "attention-kl: `{name}` has dtype {:?}, expected f32, f64, bf16 or f16",
                other.dtype()
            ),
        })
    }

    fn len(&self) -> usize {
        match self {
            Src::F32(x) => x.len(),
            Src::F64(x) => x.len(),
            Src::BF16(x) => x.len(),
            Src::F16(x) => x.len(),
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            Src::F32(_) => DType::F32,
            Src::F64(_) => DType::F64,
            Src::BF16(_) => DType::BF16,
            Src::F16(_) => DType::F16,
        }
    }
}

/// The four inputs and the key-padding mask (`[b, l]`, nonzero = valid).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'a> {
    pub q_t: Src<'a>,
    pub k_t: Src<'a>,
    pub q_s: Src<'a>,
    pub k_s: Src<'a>,
    pub mask: &'a [u8],
}

impl Inputs<'_> {
    fn check(&self, p: &Problem) -> candle_core::Result<()> {
        let t = p.b * p.h * p.l * p.d_t;
        let s = p.b * p.h * p.l * p.d_s;
        for (name, src, want) in [
            ("q_t", self.q_t, t),
            ("k_t", self.k_t, t),
            ("q_s", self.q_s, s),
            ("k_s", self.k_s, s),
        ] {
            if src.len() != want {
                candle_core::bail!(
                    "attention-kl: `{name}` has {} elements, expected {want}",
                    src.len()
                );
            }
        }
        if self.mask.len() != p.b * p.l {
            candle_core::bail!(
                "attention-kl: mask has {} elements, expected {}",
                self.mask.len(),
                p.b * p.l
            );
        }
        Ok(())
    }
}

/// Bounds-checked wrapper of [`gemm`]: asserts that every element it touches is in its slice.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_checked<S: Simd>(
    s: S,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len());
    if k > 0 {
        assert!((m - 1) * rsa + (k - 1) * csa < a.len());
        assert!((k - 1) * ldb + n <= b.len());
    }
    // SAFETY: bounds checked above; `c` is a unique borrow, so it aliases neither `a` nor `b`.
    unsafe {
        gemm(
            s,
            m,
            n,
            k,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            ldb,
            c.as_mut_ptr(),
            ldc,
            accumulate,
        )
    }
}

/// What the forward saves for the backward: `[m_a, ln Z_a, m_b, ln Z_b]` per row, in compacted
/// row order, `[b·h][l]`. O(B·H·L).
#[derive(Debug)]
pub(crate) struct RowStats {
    stats: Vec<[f32; 4]>,
}

/// Per batch item, the valid positions in order.
fn valid_positions(mask: &[u8], b: usize, l: usize) -> Vec<Vec<usize>> {
    (0..b)
        .map(|bi| (0..l).filter(|&j| mask[bi * l + j] != 0).collect())
        .collect()
}

/// `dst[r·d + e] = src[(base + positions[r])·d + e] · scale` for every listed row, then zero rows
/// up to `dst.len() / d`.
fn gather_rows(
    src: Src<'_>,
    base: usize,
    d: usize,
    positions: &[usize],
    scale: f32,
    dst: &mut [f32],
) {
    fn go<T: Elem>(
        src: &[T],
        base: usize,
        d: usize,
        positions: &[usize],
        scale: f32,
        dst: &mut [f32],
    ) {
        let (head, tail) = dst.split_at_mut(positions.len() * d);
        for (out, &j) in head.chunks_exact_mut(d).zip(positions) {
            let row = &src[(base + j) * d..(base + j + 1) * d];
            for (o, &x) in out.iter_mut().zip(row) {
                *o = x.to_f32() * scale;
            }
        }
        tail.fill(0.0);
    }
    if d == 0 {
        return;
    }
    match src {
        Src::F32(x) => go(x, base, d, positions, scale, dst),
        Src::F64(x) => go(x, base, d, positions, scale, dst),
        Src::BF16(x) => go(x, base, d, positions, scale, dst),
        Src::F16(x) => go(x, base, d, positions, scale, dst),
    }
}

/// Transposed gather: `dst[e·MB + r] = src[(base + positions[r])·d + e] · scale`, columns
/// `positions.len()..MB` zero. `dst` is `[d][MB]`.
fn gather_cols(
    src: Src<'_>,
    base: usize,
    d: usize,
    positions: &[usize],
    scale: f32,
    dst: &mut [f32],
) {
    fn go<T: Elem>(
        src: &[T],
        base: usize,
        d: usize,
        positions: &[usize],
        scale: f32,
        dst: &mut [f32],
    ) {
        dst.fill(0.0);
        for (r, &j) in positions.iter().enumerate() {
            let row = &src[(base + j) * d..(base + j + 1) * d];
            for (e, &x) in row.iter().enumerate() {
                dst[e * MB + r] = x.to_f32() * scale;
            }
        }
    }
    match src {
        Src::F32(x) => go(x, base, d, positions, scale, dst),
        Src::F64(x) => go(x, base, d, positions, scale, dst),
        Src::BF16(x) => go(x, base, d, positions, scale, dst),
        Src::F16(x) => go(x, base, d, positions, scale, dst),
    }
}

/// Per-thread scratch, reused across calls (see [`with_scratch`]).
#[derive(Default)]
struct Scratch {
    /// Teacher keys `[n][d_t]`.
    kt: Vec<f32>,
    /// Student keys `[n][d_s]`.
    ks: Vec<f32>,
    /// `(scale_t Q_t)ᵀ` of the row block, `[d_t][MB]`.
    qt: Vec<f32>,
    /// `(scale_s Q_s)ᵀ` of the row block, `[d_s][MB]`.
    qs: Vec<f32>,
    /// `scale_s Q_s` of the row block, row-major `[MB][d_s]` (backward).
    qs_rows: Vec<f32>,
    /// Score tiles `Aᵀ`, `Bᵀ`, `[NT][MB]`.
    sa: Vec<f32>,
    sb: Vec<f32>,
    /// `dQ` of the row block `[MB][d_s]` (backward).
    dq: Vec<f32>,
    /// `dK` of the item `[n][d_s]` (backward).
    dk: Vec<f32>,
}

/// Scratch larger than this (in floats, all buffers together) is released after use instead of
/// being kept for the next call.
const SCRATCH_KEEP: usize = 4 << 20;

impl Scratch {
    fn floats(&self) -> usize {
        [
            &self.kt,
            &self.ks,
            &self.qt,
            &self.qs,
            &self.qs_rows,
            &self.sa,
            &self.sb,
            &self.dq,
            &self.dk,
        ]
        .iter()
        .map(|v| v.capacity())
        .sum()
    }
}

/// `v[..n]`, growing `v` if needed (contents unspecified).
fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Runs `f` with this thread's scratch (a fresh one if it is already in use).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let r = f(&mut s);
            if s.floats() > SCRATCH_KEEP {
                *s = Scratch::default();
            }
            r
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

/// A work item's rows: compacted rows `r0..r1` of one `(b, h)`, which own the output positions
/// `orig0..orig1` (their own and the padded ones between them).
#[derive(Debug, Clone, Copy)]
struct ItemRange {
    chunk: usize,
    r0: usize,
    r1: usize,
    orig0: usize,
    orig1: usize,
}

/// What all items share.
struct Ctx<'a> {
    p: &'a Problem,
    x: &'a Inputs<'a>,
    pos: &'a [Vec<usize>],
    isa: Isa,
}

impl Ctx<'_> {
    fn positions(&self, bh: usize) -> &[usize] {
        &self.pos[bh / self.p.h]
    }

    /// How many row ranges each `(b, h)` is split into.
    fn chunks(&self) -> usize {
        let nbh = self.p.b * self.p.h;
        let threads = rayon::current_num_threads().max(1);
        (4 * threads)
            .div_ceil(nbh.max(1))
            .clamp(1, self.p.l.div_ceil(MB).max(1))
    }

    /// Row-block range `[r0, r1)` (compacted rows) of chunk `c` of `bh`.
    fn chunk_rows(&self, bh: usize, c: usize, chunks: usize) -> (usize, usize) {
        let n = self.positions(bh).len();
        let blocks = n.div_ceil(MB);
        (
            (c * blocks / chunks) * MB,
            ((c + 1) * blocks / chunks * MB).min(n),
        )
    }

    /// The non-empty work items of `bh`.
    fn item_ranges(&self, bh: usize, chunks: usize) -> Vec<ItemRange> {
        let pos = self.positions(bh);
        let (n, l) = (pos.len(), self.p.l);
        // Original position where compacted row `r` starts its item's share of the output.
        let orig = |r: usize| {
            if r >= n {
                l
            } else if r == 0 {
                0
            } else {
                pos[r]
            }
        };
        (0..chunks)
            .filter_map(|chunk| {
                let (r0, r1) = self.chunk_rows(bh, chunk, chunks);
                (r1 > r0).then(|| ItemRange {
                    chunk,
                    r0,
                    r1,
                    orig0: orig(r0),
                    orig1: orig(r1),
                })
            })
            .collect()
    }

    /// Packs the keys of `bh` into `scr.kt`, `scr.ks`.
    fn pack_keys(&self, bh: usize, scr: &mut Scratch) {
        let (p, pos) = (self.p, self.positions(bh));
        let n = pos.len();
        gather_rows(
            self.x.k_t,
            bh * p.l,
            p.d_t,
            pos,
            1.0,
            grow(&mut scr.kt, n * p.d_t),
        );
        gather_rows(
            self.x.k_s,
            bh * p.l,
            p.d_s,
            pos,
            1.0,
            grow(&mut scr.ks, n * p.d_s),
        );
    }

    /// Packs the (scaled, transposed) queries of compacted rows `row0..row0 + rows` of `bh`.
    fn pack_queries(&self, bh: usize, row0: usize, rows: usize, scr: &mut Scratch) {
        let (p, pos) = (self.p, &self.positions(bh)[row0..row0 + rows]);
        gather_cols(
            self.x.q_t,
            bh * p.l,
            p.d_t,
            pos,
            p.scale_t,
            grow(&mut scr.qt, p.d_t * MB),
        );
        gather_cols(
            self.x.q_s,
            bh * p.l,
            p.d_s,
            pos,
            p.scale_s,
            grow(&mut scr.qs, p.d_s * MB),
        );
    }

    /// Score tiles `Aᵀ`, `Bᵀ` (`[w][MB]`) of keys `j0..j0 + w` against the packed row block.
    #[inline(always)]
    fn scores<S: Simd>(&self, s: S, j0: usize, w: usize, scr: &mut Scratch) {
        let (dt, ds) = (self.p.d_t, self.p.d_s);
        let sa = grow(&mut scr.sa, NT * MB);
        gemm_checked(
            s,
            (w, MB, dt),
            &scr.kt[j0 * dt..],
            (dt, 1),
            &scr.qt[..dt * MB],
            MB,
            sa,
            MB,
            false,
        );
        let sb = grow(&mut scr.sb, NT * MB);
        gemm_checked(
            s,
            (w, MB, ds),
            &scr.ks[j0 * ds..],
            (ds, 1),
            &scr.qs[..ds * MB],
            MB,
            sb,
            MB,
            false,
        );
    }
}

/// Forward work item: compacted rows `row0..row1` of `bh`. `stats` holds those rows; `kl` is the
/// output `[l]` of `bh` from original position `orig0` on.
struct FwdItem<'a> {
    bh: usize,
    row0: usize,
    row1: usize,
    orig0: usize,
    stats: &'a mut [[f32; 4]],
    kl: &'a mut [f32],
}

#[inline(always)]
fn fwd_item<S: Simd>(s: S, c: &Ctx<'_>, it: FwdItem<'_>, scr: &mut Scratch) {
    let bh = it.bh;
    let n = c.positions(bh).len();
    c.pack_keys(bh, scr);
    for row0 in (it.row0..it.row1).step_by(MB) {
        let rows = (it.row1 - row0).min(MB);
        c.pack_queries(bh, row0, rows, scr);
        let neg = s.splat(f32::NEG_INFINITY);
        let (mut m_a, mut z_a, mut w_a) = ([neg; GROUPS], [s.zero(); GROUPS], [s.zero(); GROUPS]);
        let (mut m_b, mut z_b) = ([neg; GROUPS], [s.zero(); GROUPS]);
        for j0 in (0..n).step_by(NT) {
            let w = (n - j0).min(NT);
            c.scores(s, j0, w, scr);
            let (sa, sb) = (&scr.sa[..w * MB], &scr.sb[..w * MB]);
            for g in 0..GROUPS {
                let o = g * LANES;
                let (mut ta, mut tb) = (neg, neg);
                for (ra, rb) in sa.chunks_exact(MB).zip(sb.chunks_exact(MB)) {
                    ta = s.max(ta, s.load_slice(&ra[o..]));
                    tb = s.max(tb, s.load_slice(&rb[o..]));
                }
                let (na, nb) = (s.max(m_a[g], ta), s.max(m_b[g], tb));
                // e^(−inf) = 0 on the first tile.
                let (alpha_a, alpha_b) = (s.exp(s.sub(m_a[g], na)), s.exp(s.sub(m_b[g], nb)));
                let (mut za, mut wa, mut zb) = (
                    s.mul(z_a[g], alpha_a),
                    s.mul(w_a[g], alpha_a),
                    s.mul(z_b[g], alpha_b),
                );
                for (ra, rb) in sa.chunks_exact(MB).zip(sb.chunks_exact(MB)) {
                    let x = s.load_slice(&ra[o..]);
                    let y = s.load_slice(&rb[o..]);
                    let ea = s.exp(s.sub(x, na));
                    za = s.add(za, ea);
                    wa = s.fma(ea, s.sub(x, y), wa);
                    zb = s.add(zb, s.exp(s.sub(y, nb)));
                }
                (m_a[g], z_a[g], w_a[g], m_b[g], z_b[g]) = (na, za, wa, nb, zb);
            }
        }
        let spill = |v: [S::V; GROUPS]| {
            let mut out = [0.0f32; MB];
            for (g, v) in v.into_iter().enumerate() {
                s.store_slice(&mut out[g * LANES..], v);
            }
            out
        };
        let (m_a, z_a, w_a, m_b, z_b) =
            (spill(m_a), spill(z_a), spill(w_a), spill(m_b), spill(z_b));
        let pos = c.positions(bh);
        for r in 0..rows {
            let (lz_a, lz_b) = (z_a[r].ln(), z_b[r].ln());
            it.stats[row0 - it.row0 + r] = [m_a[r], lz_a, m_b[r], lz_b];
            it.kl[pos[row0 + r] - it.orig0] = w_a[r] / z_a[r] - (m_a[r] - m_b[r]) - lz_a + lz_b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_item_avx2(s: crate::simd::Avx2, c: &Ctx<'_>, it: FwdItem<'_>, scr: &mut Scratch) {
    fwd_item(s, c, it, scr)
}

fn fwd_item_dispatch(c: &Ctx<'_>, it: FwdItem<'_>, scr: &mut Scratch) {
    match c.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Avx2` token exists only when AVX2 and FMA were detected.
        Isa::Avx2(s) => unsafe { fwd_item_avx2(s, c, it, scr) },
        Isa::Portable(s) => fwd_item(s, c, it, scr),
    }
}

/// Splits `buf` into the pieces `[start·w, end·w)` of increasing, non-overlapping ranges.
fn carve<X>(
    mut buf: &mut [X],
    ranges: impl IntoIterator<Item = (usize, usize)>,
    w: usize,
) -> Vec<&mut [X]> {
    let mut at = 0;
    ranges
        .into_iter()
        .map(|(start, end)| {
            let (_, rest) = std::mem::take(&mut buf).split_at_mut((start - at) * w);
            let (mine, rest) = rest.split_at_mut((end - start) * w);
            buf = rest;
            at = end;
            mine
        })
        .collect()
}

/// Forward: per-row KL in `[b, h, l]` order (0 for padded query rows) and the saved statistics.
pub(crate) fn forward(p: &Problem, x: &Inputs<'_>) -> candle_core::Result<(Vec<f32>, RowStats)> {
    x.check(p)?;
    let nbh = p.b * p.h;
    let mut stats = vec![[0.0f32; 4]; nbh * p.l];
    let mut kl = vec![0.0f32; nbh * p.l];
    if nbh == 0 || p.l == 0 {
        return Ok((kl, RowStats { stats }));
    }
    let pos = valid_positions(x.mask, p.b, p.l);
    let c = Ctx {
        p,
        x,
        pos: &pos,
        isa: Isa::detect(),
    };
    let chunks = c.chunks();
    let mut items = Vec::new();
    for (bh, (stats_bh, kl_bh)) in stats.chunks_mut(p.l).zip(kl.chunks_mut(p.l)).enumerate() {
        let ranges = c.item_ranges(bh, chunks);
        let stats_parts = carve(stats_bh, ranges.iter().map(|r| (r.r0, r.r1)), 1);
        let kl_parts = carve(kl_bh, ranges.iter().map(|r| (r.orig0, r.orig1)), 1);
        for ((r, stats), kl) in ranges.iter().zip(stats_parts).zip(kl_parts) {
            items.push(FwdItem {
                bh,
                row0: r.r0,
                row1: r.r1,
                orig0: r.orig0,
                stats,
                kl,
            });
        }
    }
    items
        .into_par_iter()
        .for_each(|it| with_scratch(|scr| fwd_item_dispatch(&c, it, scr)));
    Ok((kl, RowStats { stats }))
}
