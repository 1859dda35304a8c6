//! The backward pass of the CPU attention-KL (see the parent module's "Backward" section):
//! scores recomputed per tile from the saved row statistics, `dQ_s` per row block, `dK_s` per
//! item (partial buffers summed when a `(b, h)` is split).

use super::*;

/// Where an item's `dK` goes.
enum DkOut<'a, T> {
    /// The item covers its whole `(b, h)`: the output `[l][d_s]` (original positions).
    Direct(&'a mut [T]),
    /// A partial buffer `[l][d_s]` (compacted rows), summed with the other chunks' afterwards.
    Partial(&'a mut [f32]),
}

/// Backward work item: compacted rows `row0..row1` of `bh`; `dq` is the output `[l][d_s]` of
/// `bh` from original position `orig0` on.
struct BwdItem<'a, T> {
    bh: usize,
    row0: usize,
    row1: usize,
    orig0: usize,
    dq: &'a mut [T],
    dk: DkOut<'a, T>,
}

/// The backward's extra inputs.
struct BwdIn<'a> {
    stats: &'a RowStats,
    /// Upstream gradient `[b, h, l]`.
    grad: &'a [f32],
}

#[inline(always)]
fn bwd_item<S: Simd, T: Elem>(
    s: S,
    c: &Ctx<'_>,
    bi: &BwdIn<'_>,
    it: BwdItem<'_, T>,
    scr: &mut Scratch,
) {
    let (p, bh) = (c.p, it.bh);
    let ds = p.d_s;
    let pos = c.positions(bh);
    let n = pos.len();
    c.pack_keys(bh, scr);
    grow(&mut scr.dk, n * ds).fill(0.0);
    for row0 in (it.row0..it.row1).step_by(MB) {
        let rows = (it.row1 - row0).min(MB);
        c.pack_queries(bh, row0, rows, scr);
        gather_rows(
            c.x.q_s,
            bh * p.l,
            ds,
            &pos[row0..row0 + rows],
            p.scale_s,
            grow(&mut scr.qs_rows, MB * ds),
        );
        grow(&mut scr.dq, MB * ds).fill(0.0);
        // Per-row constants; padded rows of the block get g = 0 (hence dS = 0).
        let (mut g, mut st) = ([0.0f32; MB], [[0.0f32; 4]; MB]);
        for r in 0..rows {
            g[r] = bi.grad[bh * p.l + pos[row0 + r]];
            st[r] = bi.stats.stats[bh * p.l + row0 + r];
        }
        let lanes = |k: usize| -> [S::V; GROUPS] {
            let col: [f32; MB] = std::array::from_fn(|r| st[r][k]);
            std::array::from_fn(|gi| s.load_slice(&col[gi * LANES..]))
        };
        let (m_a, lz_a, m_b, lz_b) = (lanes(0), lanes(1), lanes(2), lanes(3));
        let gv: [S::V; GROUPS] = std::array::from_fn(|gi| s.load_slice(&g[gi * LANES..]));
        for j0 in (0..n).step_by(NT) {
            let w = (n - j0).min(NT);
            c.scores(s, j0, w, scr);
            // dSᵀ = g·(softmax(b) − softmax(a)), in place of Aᵀ.
            let (sa, sb) = (&mut scr.sa[..w * MB], &scr.sb[..w * MB]);
            for gi in 0..GROUPS {
                let o = gi * LANES;
                for (ra, rb) in sa.chunks_exact_mut(MB).zip(sb.chunks_exact(MB)) {
                    let x = s.load_slice(&ra[o..]);
                    let y = s.load_slice(&rb[o..]);
                    let pa = s.exp(s.sub(s.sub(x, m_a[gi]), lz_a[gi]));
                    let pb = s.exp(s.sub(s.sub(y, m_b[gi]), lz_b[gi]));
                    s.store_slice(&mut ra[o..], s.mul(gv[gi], s.sub(pb, pa)));
                }
            }
            let dst = &scr.sa[..w * MB];
            // dQ_block += dS · K_s[tile]   (A(r, j) = dSᵀ[j][r]; scale_s applied on output)
            gemm_checked(
                s,
                (rows, ds, w),
                dst,
                (1, MB),
                &scr.ks[j0 * ds..],
                ds,
                &mut scr.dq,
                ds,
                true,
            );
            // dK[tile] += dSᵀ · (scale_s Q_s)_block
            gemm_checked(
                s,
                (w, ds, rows),
                dst,
                (MB, 1),
                &scr.qs_rows,
                ds,
                &mut scr.dk[j0 * ds..],
                ds,
                true,
            );
        }
        for r in 0..rows {
            let o = (pos[row0 + r] - it.orig0) * ds;
            for (out, &v) in it.dq[o..o + ds]
                .iter_mut()
                .zip(&scr.dq[r * ds..(r + 1) * ds])
            {
                *out = T::from_f32(v * p.scale_s);
            }
        }
    }
    match it.dk {
        DkOut::Direct(out) => {
            for (r, &j) in pos.iter().enumerate() {
                for (o, &v) in out[j * ds..(j + 1) * ds]
                    .iter_mut()
                    .zip(&scr.dk[r * ds..(r + 1) * ds])
                {
                    *o = T::from_f32(v);
                }
            }
        }
        DkOut::Partial(out) => out[..n * ds].copy_from_slice(&scr.dk[..n * ds]),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_item_avx2<T: Elem>(
    s: crate::simd::Avx2,
    c: &Ctx<'_>,
    bi: &BwdIn<'_>,
    it: BwdItem<'_, T>,
    scr: &mut Scratch,
) {
    bwd_item(s, c, bi, it, scr)
}

fn bwd_item_dispatch<T: Elem>(c: &Ctx<'_>, bi: &BwdIn<'_>, it: BwdItem<'_, T>, scr: &mut Scratch) {
    match c.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Avx2` token exists only when AVX2 and FMA were detected.
        Isa::Avx2(s) => unsafe { bwd_item_avx2(s, c, bi, it, scr) },
        Isa::Portable(s) => bwd_item(s, c, bi, it, scr),
    }
}

/// Backward: given the upstream gradient of the per-row KL (`[b, h, l]`, f32), returns
/// `[dQ_s; dK_s]` as one `[2, b, h, l, d_s]` buffer in the dtype of `Q_s`.
pub(crate) fn backward(
    p: &Problem,
    x: &Inputs<'_>,
    stats: &RowStats,
    grad: &[f32],
) -> candle_core::Result<CpuStorage> {
    x.check(p)?;
    let n_out = p.b * p.h * p.l;
    if grad.len() != n_out || stats.stats.len() != n_out {
        candle_core::bail!(
            "attention-kl backward: gradient or saved statistics do not match the inputs"
        );
    }
    let bi = BwdIn { stats, grad };
    Ok(match x.q_s.dtype() {
        DType::F64 => CpuStorage::F64(backward_t(p, x, &bi)),
        DType::BF16 => CpuStorage::BF16(backward_t(p, x, &bi)),
        DType::F16 => CpuStorage::F16(backward_t(p, x, &bi)),
        _ => CpuStorage::F32(backward_t(p, x, &bi)),
    })
}

fn backward_t<T: Elem>(p: &Problem, x: &Inputs<'_>, bi: &BwdIn<'_>) -> Vec<T> {
    let (nbh, ds) = (p.b * p.h, p.d_s);
    let per = p.l * ds;
    let mut out = vec![T::from_f32(0.0); 2 * nbh * per];
    if nbh == 0 || per == 0 {
        return out;
    }
    let pos = valid_positions(x.mask, p.b, p.l);
    let c = Ctx {
        p,
        x,
        pos: &pos,
        isa: Isa::detect(),
    };
    let chunks = c.chunks();
    let (out_q, out_k) = out.split_at_mut(nbh * per);
    // With one item per (b, h), dK goes straight into the output; otherwise into partials.
    let mut partial = vec![0.0f32; if chunks > 1 { nbh * chunks * per } else { 0 }];
    let mut partial_bh = partial.chunks_mut(chunks * per.max(1));
    let mut items = Vec::new();
    for (bh, (q_bh, k_bh)) in out_q.chunks_mut(per).zip(out_k.chunks_mut(per)).enumerate() {
        let ranges = c.item_ranges(bh, chunks);
        let dq_parts = carve(q_bh, ranges.iter().map(|r| (r.orig0, r.orig1)), ds);
        let mut dk_direct = Some(k_bh);
        let mut dk_partial: Vec<Option<&mut [f32]>> = partial_bh
            .next()
            .map(|pb| pb.chunks_mut(per).map(Some).collect())
            .unwrap_or_default();
        for (r, dq) in ranges.iter().zip(dq_parts) {
            let dk = match (
                chunks,
                dk_direct.take(),
                dk_partial.get_mut(r.chunk).and_then(Option::take),
            ) {
                (1, Some(out), _) => DkOut::Direct(out),
                (_, _, Some(buf)) => DkOut::Partial(buf),
                _ => continue, // unreachable: one item per chunk
            };
            items.push(BwdItem {
                bh,
                row0: r.r0,
                row1: r.r1,
                orig0: r.orig0,
                dq,
                dk,
            });
        }
    }
    items
        .into_par_iter()
        .for_each(|it| with_scratch(|scr| bwd_item_dispatch(&c, bi, it, scr)));
    if chunks > 1 {
        // Sum the partial dK of each (b, h) and scatter to the original positions.
        out_k
            .par_chunks_mut(per)
            .zip(partial.par_chunks(chunks * per))
            .enumerate()
            .for_each(|(bh, (out, parts))| {
                for (r, &j) in c.positions(bh).iter().enumerate() {
                    for e in 0..ds {
                        let sum: f32 = (0..chunks).map(|ch| parts[ch * per + r * ds + e]).sum();
                        out[j * ds + e] = T::from_f32(sum);
                    }
                }
            });
    }
    out
}
