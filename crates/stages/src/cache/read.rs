//! Reading a cache: opening (every shard verified) and handing back a batch's teacher outputs.

use super::*;

impl TeacherCache {
    /// The cache in `dir` when it was built for `key`, `needs` and `cfg`'s dtype and top-k and
    /// every shard verifies; `None` otherwise (rebuild it).
    pub fn open(
        dir: &Path,
        key: &str,
        needs: &TeacherNeeds,
        cfg: &CacheConfig,
    ) -> Result<Option<TeacherCache>> {
        Ok(match Self::probe(dir, key, needs, cfg)? {
            Probe::Ready(c) => Some(*c),
            Probe::Absent | Probe::Stale(_) => None,
        })
    }

    /// As [`Self::open`], saying why a cache cannot be used. `Err` only for I/O failures other
    /// than a missing file.
    pub fn probe(dir: &Path, key: &str, needs: &TeacherNeeds, cfg: &CacheConfig) -> Result<Probe> {
        cfg.validate()?;
        let path = dir.join(INDEX);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Absent),
            Err(e) => return Err(io_err(&path, e)),
        };
        let stale = |why: String| Ok(Probe::Stale(why));
        let index: Index = match serde_json::from_slice(&bytes) {
            Ok(i) => i,
            Err(e) => return stale(format!("{}: unreadable ({e})", path.display())),
        };
        if index.format != FORMAT {
            return stale(format!(
                "format {} (this build writes {FORMAT})",
                index.format
            ));
        }
        if index.key != key {
            return stale(format!(
                "built for key {}, this run's key is {key}",
                index.key
            ));
        }
        if index.needs != *needs {
            return stale(format!(
                "built for teacher outputs {:?}, this run needs {needs:?}",
                index.needs
            ));
        }
        let want = dtype_name(cfg.dtype)?;
        if index.dtype != want {
            return stale(format!("stored as {}, configured {want}", index.dtype));
        }
        if index.top_k_logits != cfg.top_k_logits {
            return stale(format!(
                "built with top-k logits {:?}, configured {:?}",
                index.top_k_logits, cfg.top_k_logits
            ));
        }
        if let Err(why) = index.consistent() {
            return stale(format!("{}: {why}", path.display()));
        }
        let mut shards = Vec::with_capacity(index.shards.len());
        for s in &index.shards {
            let p = dir.join(&s.file);
            if s.file.contains(['/', '\\']) || s.file.starts_with('.') {
                return stale(format!("{}: bad shard name {:?}", path.display(), s.file));
            }
            let len = match std::fs::metadata(&p) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return stale(format!("{}: missing", p.display()))
                }
                Err(e) => return Err(io_err(&p, e)),
            };
            if len != s.bytes {
                return stale(format!(
                    "{}: {len} bytes, the index says {} (truncated or rewritten)",
                    p.display(),
                    s.bytes
                ));
            }
            let (hash, _) = xxh64_file(&p).map_err(|e| io_err(&p, e))?;
            if format!("{hash:016x}") != s.xxh64 {
                return stale(format!(
                    "{}: checksum {hash:016x}, the index says {} (corrupted)",
                    p.display(),
                    s.xxh64
                ));
            }
            // SAFETY: the file is opened read-only and this process does not modify it while
            // mapped; a concurrent writer elsewhere is outside what any mmap-based reader can
            // defend against (as for the models' weights).
            let st = match unsafe { MmapedSafetensors::new(&p) } {
                Ok(st) => st,
                Err(e) => return stale(format!("{}: {e}", p.display())),
            };
            if let Err(why) = check_shard(&st, s, &index, cfg) {
                return stale(format!("{}: {why}", p.display()));
            }
            shards.push(st);
        }
        Ok(Probe::Ready(Box::new(TeacherCache {
            dir: dir.to_path_buf(),
            index,
            dtype: cfg.dtype,
            shards,
        })))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(&self) -> &str {
        &self.index.key
    }

    pub fn needs(&self) -> &TeacherNeeds {
        &self.index.needs
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn teacher_shape(&self) -> TeacherShape {
        self.index.teacher
    }

    /// Examples held (the dataset's size).
    pub fn len(&self) -> usize {
        self.index.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.examples.is_empty()
    }

    /// Bytes of all shards.
    pub fn shard_bytes(&self) -> u64 {
        self.index.shards.iter().map(|s| s.bytes).sum()
    }

    /// The stored valid length of example `i`.
    pub fn length(&self, i: usize) -> Option<usize> {
        self.index.examples.get(i).map(|e| e.2 as usize)
    }

    /// The teacher outputs of examples `indices` (indices into the dataset the cache was built
    /// on), padded with zeros to `seq`, as f32 on `device` — what a teacher forward on the
    /// batch would return at every valid position. `mask` is the batch's `[batch, seq]`
    /// attention mask (1 = token, right padding); each row's token count must equal the
    /// example's stored length (an error otherwise: the cache is from other data or another
    /// tokenizer).
    ///
    /// - `hidden_states` has the teacher's `layers + 1` entries and `attentions` its `layers`,
    ///   so `hidden_states[l]` / `attentions[l - 1]` index as usual; the layers and
    ///   projections the cache does not hold are zero-size placeholders
    ///   (`[batch, seq, 0]`, `[batch·seq, 0]`) that fail any shape check.
    /// - Padded positions are zeros, not the teacher's values there: every loss excludes them.
    /// - `scores`, `probs` and `pooled` are `None`; `logits` is `None` unless needed. Top-k
    ///   logits come back with [`MISSING_LOGIT`] for the dropped classes.
    pub fn outputs(
        &self,
        indices: &[usize],
        seq: usize,
        mask: &Tensor,
        device: &Device,
    ) -> Result<ModelOutput> {
        let b = indices.len();
        if mask.dims() != [b, seq] {
            return Err(cache_err(format!(
                "the mask has shape {:?}, expected [{b}, {seq}]",
                mask.dims()
            )));
        }
        let host_mask: Vec<Vec<f32>> = mask
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
        let mut rows = Vec::with_capacity(b);
        for (row, (&i, m)) in indices.iter().zip(&host_mask).enumerate() {
            let &(shard, offset, len) = self.index.examples.get(i).ok_or_else(|| {
                cache_err(format!(
                    "example {i} is out of range (the cache holds {})",
                    self.len()
                ))
            })?;
            let (shard, offset, len) = (shard as usize, offset as usize, len as usize);
            let count = m.iter().filter(|&&x| x != 0.0).count();
            if count != len {
                return Err(cache_err(format!(
                    "example {i} (batch row {row}) has {count} tokens, the cache stored {len} \
                     (built from other data, or another tokenizer or maximum length?)"
                )));
            }
            if m[..len].contains(&0.0) {
                return Err(cache_err(format!(
                    "example {i} (batch row {row}): padding must be on the right"
                )));
            }
            let example_row = i - self.index.shards[shard].first_example;
            rows.push((shard, offset, len, example_row));
        }
        let shape = self.index.teacher;
        let (h, heads) = (shape.hidden, shape.heads);
        let elem = self.dtype.size_in_bytes();
        let needs = &self.index.needs;
        let view = |shard: usize, name: &str| -> Result<&[u8]> {
            Ok(self.shards[shard].get(name)?.data())
        };
        let tokens = |name: &str| -> Result<Tensor> {
            let row_bytes = h * elem;
            let mut buf = vec![0u8; b * seq * row_bytes];
            for (i, &(shard, offset, len, _)) in rows.iter().enumerate() {
                let src = &view(shard, name)?[offset * row_bytes..(offset + len) * row_bytes];
                buf[i * seq * row_bytes..][..len * row_bytes].copy_from_slice(src);
            }
            Ok(
                Tensor::from_raw_buffer(&buf, self.dtype, &[b, seq, h], device)?
                    .to_dtype(DType::F32)?,
            )
        };
        let hidden_states = (0..=shape.layers)
            .map(|l| {
                if needs.hidden.contains(&l) {
                    tokens(&format!("hidden.{l}"))
                } else {
                    Ok(Tensor::zeros((b, seq, 0), DType::F32, device)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        // Q, K, V as the model hands them out: [b·seq, heads·d], heads side by side per token.
        let packed = |name: &str, l: usize, set: &std::collections::BTreeSet<usize>| {
            if set.contains(&l) {
                Ok(tokens(&format!("{name}.{l}"))?.reshape((b * seq, h))?)
            } else {
                Ok::<_, StageError>(Tensor::zeros((b * seq, 0), DType::F32, device)?)
            }
        };
        let attentions = (1..=shape.layers)
            .map(|l| {
                Ok(LayerAttention {
                    query: packed("q", l, &needs.q)?,
                    key: packed("k", l, &needs.k)?,
                    value: packed("v", l, &needs.v)?,
                    batch: b,
                    heads,
                    kv_heads: heads,
                    scores: None,
                    probs: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let logits = if needs.logits {
            let c = shape.num_labels;
            Some(match self.top_k() {
                None => {
                    let row_bytes = c * elem;
                    let mut buf = vec![0u8; b * row_bytes];
                    for (i, &(shard, _, _, r)) in rows.iter().enumerate() {
                        let src = &view(shard, "logits")?[r * row_bytes..(r + 1) * row_bytes];
                        buf[i * row_bytes..(i + 1) * row_bytes].copy_from_slice(src);
                    }
                    Tensor::from_raw_buffer(&buf, self.dtype, &[b, c], device)?
                        .to_dtype(DType::F32)?
                }
                Some(k) => {
                    let mut full = vec![MISSING_LOGIT; b * c];
                    for (i, &(shard, _, _, r)) in rows.iter().enumerate() {
                        let vals = &view(shard, "logits.values")?[r * k * elem..(r + 1) * k * elem];
                        let vals: Vec<f32> =
                            Tensor::from_raw_buffer(vals, self.dtype, &[k], &Device::Cpu)?
                                .to_dtype(DType::F32)?
                                .to_vec1()?;
                        let idx = &view(shard, "logits.indices")?[r * k * 4..(r + 1) * k * 4];
                        for (v, ib) in vals.iter().zip(idx.chunks_exact(4)) {
                            let ci = u32::from_le_bytes([ib[0], ib[1], ib[2], ib[3]]) as usize;
                            if ci >= c {
                                return Err(cache_err(format!(
                                    "a top-k class index {ci} is out of range ({c} classes)"
                                )));
                            }
                            full[i * c + ci] = *v;
                        }
                    }
                    Tensor::from_vec(full, (b, c), device)?
                }
            })
        } else {
            None
        };
        Ok(ModelOutput {
            hidden_states,
            attentions,
            pooled: None,
            logits,
            token_logits: None,
            causal: false,
            mask: mask.to_dtype(DType::F32)?,
        })
    }

    /// The number of logits kept per example when the cache drops the rest (top-k, fewer than
    /// the classes); `None` when it holds every logit.
    pub fn top_k(&self) -> Option<usize> {
        self.index
            .top_k_logits
            .filter(|&k| k < self.index.teacher.num_labels)
    }
}
