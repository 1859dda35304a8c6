//! The on-disk format: the index (`index.json`) with its shard list, and the checks that a
//! cache on disk is the one asked for and undamaged.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShardMeta {
    pub(super) file: String,
    pub(super) bytes: u64,
    /// XXH64 (seed 0) of the file's bytes, 16 lower-case hex digits.
    pub(super) xxh64: String,
    pub(super) first_example: usize,
    pub(super) examples: usize,
    pub(super) tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Index {
    pub(super) format: u32,
    pub(super) key: String,
    pub(super) needs: TeacherNeeds,
    pub(super) dtype: String,
    pub(super) top_k_logits: Option<usize>,
    pub(super) teacher: TeacherShape,
    /// The checksum algorithm of `shards[].xxh64`.
    pub(super) checksum: String,
    pub(super) shards: Vec<ShardMeta>,
    /// Per example in dataset order: (shard, token offset in the shard, valid length).
    pub(super) examples: Vec<(u32, u64, u32)>,
}

impl Index {
    /// The internal consistency a reader relies on; `Err` says what is off.
    pub(super) fn consistent(&self) -> std::result::Result<(), String> {
        if self.teacher.heads == 0 || !self.teacher.hidden.is_multiple_of(self.teacher.heads) {
            return Err(format!("bad teacher shape {:?}", self.teacher));
        }
        let mut next = 0;
        for (si, s) in self.shards.iter().enumerate() {
            if s.first_example != next {
                return Err(format!("{}: examples out of order", s.file));
            }
            let mut offset = 0u64;
            for (i, &(shard, off, len)) in self
                .examples
                .get(next..next + s.examples)
                .ok_or("fewer examples than the shards hold")?
                .iter()
                .enumerate()
            {
                if shard as usize != si || off != offset || len == 0 {
                    return Err(format!("example {} has a bad entry", next + i));
                }
                offset += u64::from(len);
            }
            if offset != s.tokens as u64 {
                return Err(format!("{}: token count does not add up", s.file));
            }
            next += s.examples;
        }
        if next != self.examples.len() {
            return Err("more examples than the shards hold".into());
        }
        Ok(())
    }
}

/// Bytes per stored token and per example.
pub(super) fn unit_sizes(
    needs: &TeacherNeeds,
    shape: &TeacherShape,
    cfg: &CacheConfig,
) -> (u64, u64) {
    let elem = cfg.dtype.size_in_bytes() as u64;
    let per_token = needs.token_tensors().len() as u64 * shape.hidden as u64 * elem;
    let per_example = if !needs.logits {
        0
    } else {
        match cfg.effective_top_k(shape.num_labels) {
            Some(k) => k as u64 * (elem + 4),
            None => shape.num_labels as u64 * elem,
        }
    };
    (per_token, per_example)
}

/// Checks that a shard holds every tensor the index promises, in the right dtype and shape.
pub(super) fn check_shard(
    st: &MmapedSafetensors,
    s: &ShardMeta,
    index: &Index,
    cfg: &CacheConfig,
) -> std::result::Result<(), String> {
    let want = index.dtype.to_uppercase();
    let check = |name: &str, dtype: &str, shape: &[usize], elem: usize| {
        let v = st
            .get(name)
            .map_err(|_| format!("has no tensor `{name}`"))?;
        let got = format!("{:?}", v.dtype());
        if got != dtype
            || v.shape() != shape
            || v.data().len() != shape.iter().product::<usize>() * elem
        {
            return Err(format!(
                "`{name}` is {} {:?}, expected {dtype} {shape:?}",
                got,
                v.shape()
            ));
        }
        Ok(())
    };
    let elem = cfg.dtype.size_in_bytes();
    let h = index.teacher.hidden;
    for name in index.needs.token_tensors() {
        check(&name, &want, &[s.tokens, h], elem)?;
    }
    if index.needs.logits {
        let c = index.teacher.num_labels;
        match index.top_k_logits.filter(|&k| k < c) {
            None => check("logits", &want, &[s.examples, c], elem)?,
            Some(k) => {
                check("logits.values", &want, &[s.examples, k], elem)?;
                check("logits.indices", "U32", &[s.examples, k], 4)?;
            }
        }
    }
    Ok(())
}
