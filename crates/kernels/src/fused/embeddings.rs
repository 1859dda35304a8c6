//! BERT's embedding sum `word[ids] + token_type[types] + position[0..s]` as one op.
//!
//! As candle ops it is six graph nodes, and the word-table gradient alone costs a zero-filled
//! vocab × hidden tensor plus an `index_add` that copies it again (2 × 47 MB for BERT-base's
//! vocabulary, every step). Here the backward writes each table's gradient once.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::{f32_slice, fused_applies};
use crate::error::Result;

#[derive(Debug, Clone)]
struct EmbeddingsOp {
    ids: Arc<Vec<u32>>,
    types: Arc<Vec<u32>>,
    batch: usize,
    seq: usize,
}

/// Checks every index against its table and returns the common width.
fn check(
    op: &EmbeddingsOp,
    word: &[usize],
    typ: &[usize],
    pos: &[usize],
) -> candle_core::Result<usize> {
    let (&[vocab, h], &[n_types, h2], &[n_pos, h3]) = (word, typ, pos) else {
        candle_core::bail!("embeddings: tables must be matrices, got {word:?} {typ:?} {pos:?}")
    };
    if h != h2 || h != h3 {
        candle_core::bail!("embeddings: table widths differ: {h}, {h2}, {h3}");
    }
    if op.seq > n_pos {
        candle_core::bail!(
            "embeddings: sequence length {} exceeds {n_pos} positions",
            op.seq
        );
    }
    if let Some(bad) = op.ids.iter().find(|&&i| i as usize >= vocab) {
        candle_core::bail!("embeddings: token id {bad} is outside the vocabulary of {vocab}");
    }
    if let Some(bad) = op.types.iter().find(|&&i| i as usize >= n_types) {
        candle_core::bail!("embeddings: token type {bad} is outside the {n_types} types");
    }
    Ok(h)
}

impl CustomOp3 for EmbeddingsOp {
    fn name(&self) -> &'static str {
        "distillery-embeddings"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = check(self, wl.dims(), tl.dims(), pl.dims())?;
        let (word, typ, pos) = (
            f32_slice(ws, wl, self.name())?,
            f32_slice(ts, tl, self.name())?,
            f32_slice(ps, pl, self.name())?,
        );
        let mut out = super::par_zeroed(self.ids.len() * h);
        for (r, o) in out.chunks_exact_mut(h.max(1)).enumerate() {
            let w = &word[self.ids[r] as usize * h..][..h];
            let t = &typ[self.types[r] as usize * h..][..h];
            let p = &pos[(r % self.seq) * h..][..h];
            for j in 0..h {
                // The reference's order: (word + type) + position.
                o[j] = (w[j] + t[j]) + p[j];
            }
        }
        Ok((CpuStorage::F32(out), (self.batch, self.seq, h).into()))
    }

    fn bwd(
        &self,
        word: &Tensor,
        typ: &Tensor,
        pos: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = word.dim(1)?;
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut dw = super::par_zeroed(word.elem_count());
        let mut dt = super::par_zeroed(typ.elem_count());
        let mut dp = super::par_zeroed(pos.elem_count());
        // Rows in order, as `index_add` adds them.
        for (r, gr) in g.chunks_exact(h.max(1)).enumerate() {
            for (table, row) in [
                (&mut dw, self.ids[r] as usize),
                (&mut dt, self.types[r] as usize),
                (&mut dp, r % self.seq),
            ] {
                for (d, v) in table[row * h..][..h].iter_mut().zip(gr) {
                    *d += v;
                }
            }
        }
        let dev = word.device();
        Ok((
            Some(Tensor::from_vec(dw, word.shape(), dev)?),
            Some(Tensor::from_vec(dt, typ.shape(), dev)?),
            Some(Tensor::from_vec(dp, pos.shape(), dev)?),
        ))
    }
}

/// `word[ids] + token_type[types] + position[0..s]` for `ids`, `types` [b, s] (any integer
/// dtype) and f32 tables [rows, h]: [b, s, h]. One op on f32 CPU tables, with gradients for all
/// three; [`embeddings_slow`] otherwise.
pub fn embeddings(
    word: &Tensor,
    token_type: &Tensor,
    position: &Tensor,
    ids: &Tensor,
    types: &Tensor,
) -> Result<Tensor> {
    if !(fused_applies(word) && fused_applies(token_type) && fused_applies(position)) {
        return embeddings_slow(word, token_type, position, ids, types);
    }
    let (batch, seq) = ids.dims2()?;
    let host = |t: &Tensor| -> Result<Arc<Vec<u32>>> {
        Ok(Arc::new(
            t.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?,
        ))
    };
    let op = EmbeddingsOp {
        ids: host(ids)?,
        types: host(types)?,
        batch,
        seq,
    };
    if op.types.len() != op.ids.len() {
        return Err(crate::KernelError::Config(format!(
            "embeddings: {} token types for {} ids",
            op.types.len(),
            op.ids.len()
        )));
    }
    Ok(word
        .contiguous()?
        .apply_op3(&token_type.contiguous()?, &position.contiguous()?, op)?)
}

/// The reference: `index_select` twice, `narrow`, and two adds.
pub fn embeddings_slow(
    word: &Tensor,
    token_type: &Tensor,
    position: &Tensor,
    ids: &Tensor,
    types: &Tensor,
) -> Result<Tensor> {
    let (b, s) = ids.dims2()?;
    let h = word.dim(1)?;
    let words = word
        .index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?
        .reshape((b, s, h))?;
    let typ = token_type
        .index_select(&types.to_dtype(DType::U32)?.flatten_all()?, 0)?
        .reshape((b, s, h))?;
    let pos = position.narrow(0, 0, s)?.unsqueeze(0)?;
    Ok(words.add(&typ)?.broadcast_add(&pos)?)
}
