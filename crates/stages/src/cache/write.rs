//! Building a cache: one pass of the teacher over the data, rows written to checksummed shards,
//! the index last.

use super::*;

fn check_in_order(batcher: &Batcher<'_>) -> Result<()> {
    let c = batcher.sampler().config();
    if c.shuffle_seed.is_some() || c.drop_last || batcher.cursor().position != 0 {
        return Err(StageError::Config(
            "teacher cache: the batcher must visit the whole dataset in file order \
             (BatchConfig::in_order, at the start of an epoch)"
                .into(),
        ));
    }
    Ok(())
}

/// Checks that a batch continues the dataset in order at example `next`.
fn check_indices(indices: &[usize], next: usize) -> Result<()> {
    if indices.iter().enumerate().any(|(i, &x)| x != next + i) {
        return Err(StageError::Config(format!(
            "teacher cache: expected examples {next}.. in file order, got {:?}",
            &indices[..indices.len().min(8)]
        )));
    }
    Ok(())
}

/// The valid (non-padding) token count of every example, in dataset order, from one in-order
/// pass of `batcher` (`BatchConfig::in_order`, at the start of an epoch; it ends at the start
/// of the next). For [`TeacherCache::estimate`].
pub fn example_lengths(batcher: &mut Batcher<'_>) -> Result<Vec<usize>> {
    check_in_order(batcher)?;
    let total = batcher.dataset().len();
    let mut lengths = Vec::with_capacity(total);
    for batch in batcher.epoch() {
        let batch = batch?;
        check_indices(&batch.indices, lengths.len())?;
        let seq = batch.encoded.seq;
        for row in batch.encoded.attention_mask.chunks(seq.max(1)) {
            lengths.push(row.iter().filter(|&&m| m != 0).count());
        }
    }
    if lengths.len() != total {
        return Err(StageError::Config(format!(
            "teacher cache: one pass gave {} of the {total} examples",
            lengths.len()
        )));
    }
    Ok(lengths)
}

/// Host copies of one batch's needed outputs, f32, each `[batch, seq, hidden]` row-major
/// (Q/K/V with heads merged back to the per-token layout), and the logits `[batch, classes]`.
struct HostBatch {
    tensors: Vec<Vec<f32>>,
    logits: Vec<f32>,
}

fn host_batch(out: &ModelOutput, needs: &TeacherNeeds) -> Result<HostBatch> {
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let mut tensors = Vec::new();
    for &l in &needs.hidden {
        tensors.push(flat(&out.hidden_states[l])?);
    }
    for (pick, set) in [(0usize, &needs.q), (1, &needs.k), (2, &needs.v)] {
        for &l in set {
            let a = &out.attentions[l - 1];
            // [b·s, heads·d]: heads concatenated per token, as stored.
            tensors.push(flat(match pick {
                0 => &a.query,
                1 => &a.key,
                _ => &a.value,
            })?);
        }
    }
    let logits = match (&out.logits, needs.logits) {
        (Some(z), true) => flat(z)?,
        _ => Vec::new(),
    };
    Ok(HostBatch { tensors, logits })
}

/// Accumulates examples into shards and writes each once it is full.
struct ShardWriter<'a> {
    dir: &'a Path,
    cfg: &'a CacheConfig,
    names: Vec<String>,
    hidden: usize,
    classes: usize,
    top_k: Option<usize>,
    per_token: u64,
    per_example: u64,
    bufs: Vec<Vec<f32>>,
    logit_values: Vec<f32>,
    logit_indices: Vec<u32>,
    tokens: usize,
    examples: usize,
    first_example: usize,
    shards: Vec<ShardMeta>,
    entries: Vec<(u32, u64, u32)>,
    bytes_written: u64,
}

impl<'a> ShardWriter<'a> {
    fn new(
        dir: &'a Path,
        needs: &TeacherNeeds,
        shape: &TeacherShape,
        cfg: &'a CacheConfig,
    ) -> Self {
        let names = needs.token_tensors();
        let (per_token, per_example) = unit_sizes(needs, shape, cfg);
        Self {
            dir,
            cfg,
            bufs: vec![Vec::new(); names.len()],
            names,
            hidden: shape.hidden,
            classes: if needs.logits { shape.num_labels } else { 0 },
            top_k: cfg.effective_top_k(shape.num_labels),
            per_token,
            per_example,
            logit_values: Vec::new(),
            logit_indices: Vec::new(),
            tokens: 0,
            examples: 0,
            first_example: 0,
            shards: Vec::new(),
            entries: Vec::new(),
            bytes_written: 0,
        }
    }

    /// Appends example `row` of a batch padded to `seq`, `len` valid tokens.
    fn push(&mut self, host: &HostBatch, row: usize, seq: usize, len: usize) -> Result<()> {
        let h = self.hidden;
        for (buf, src) in self.bufs.iter_mut().zip(&host.tensors) {
            buf.extend_from_slice(&src[row * seq * h..(row * seq + len) * h]);
        }
        if self.classes > 0 {
            let z = &host.logits[row * self.classes..(row + 1) * self.classes];
            match self.top_k {
                None => self.logit_values.extend_from_slice(z),
                Some(k) => {
                    let order =
                        |a: &u32, b: &u32| z[*b as usize].total_cmp(&z[*a as usize]).then(a.cmp(b));
                    let mut idx: Vec<u32> = (0..self.classes as u32).collect();
                    idx.select_nth_unstable_by(k - 1, order);
                    idx.truncate(k);
                    idx.sort_by(order);
                    self.logit_values.extend(idx.iter().map(|&i| z[i as usize]));
                    self.logit_indices.extend_from_slice(&idx);
                }
            }
        }
        self.entries
            .push((self.shards.len() as u32, self.tokens as u64, len as u32));
        self.tokens += len;
        self.examples += 1;
        let bytes = self.tokens as u64 * self.per_token + self.examples as u64 * self.per_example;
        if bytes >= self.cfg.shard_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.examples == 0 {
            return Ok(());
        }
        let cpu = Device::Cpu;
        let dtype = self.cfg.dtype;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, buf) in self.names.iter().zip(self.bufs.iter_mut()) {
            let t = Tensor::from_vec(std::mem::take(buf), (self.tokens, self.hidden), &cpu)?;
            tensors.insert(name.clone(), t.to_dtype(dtype)?);
        }
        if self.classes > 0 {
            let values = std::mem::take(&mut self.logit_values);
            match self.top_k {
                None => {
                    let t = Tensor::from_vec(values, (self.examples, self.classes), &cpu)?;
                    tensors.insert("logits".into(), t.to_dtype(dtype)?);
                }
                Some(k) => {
                    let t = Tensor::from_vec(values, (self.examples, k), &cpu)?;
                    tensors.insert("logits.values".into(), t.to_dtype(dtype)?);
                    let i = std::mem::take(&mut self.logit_indices);
                    tensors.insert(
                        "logits.indices".into(),
                        Tensor::from_vec(i, (self.examples, k), &cpu)?,
                    );
                }
            }
        }
        let file = format!("{SHARD_PREFIX}{:05}{SHARD_SUFFIX}", self.shards.len());
        let path = self.dir.join(&file);
        let (hash, bytes) = write_atomic_with(&path, |tmp| -> Result<(u64, u64)> {
            candle_core::safetensors::save(&tensors, tmp)?;
            xxh64_file(tmp).map_err(|e| io_err(tmp, e))
        })?;
        self.shards.push(ShardMeta {
            file,
            bytes,
            xxh64: format!("{hash:016x}"),
            first_example: self.first_example,
            examples: self.examples,
            tokens: self.tokens,
        });
        self.bytes_written += bytes;
        self.first_example += self.examples;
        self.examples = 0;
        self.tokens = 0;
        Ok(())
    }
}

/// Removes the index first (so a build that dies leaves no usable cache), then old shards and
/// temporary files.
fn clear_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let index = dir.join(INDEX);
    match std::fs::remove_file(&index) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&index, e)),
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with(SHARD_PREFIX) && name.ends_with(SHARD_SUFFIX))
            || (name.starts_with('.') && name.ends_with(".tmp"));
        if ours {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
        }
    }
    Ok(())
}

fn check_needs(needs: &TeacherNeeds, teacher: &ModelShape) -> Result<()> {
    let layers = teacher.layers;
    let bad = needs.hidden.iter().any(|&l| l > layers)
        || [&needs.q, &needs.k, &needs.v]
            .iter()
            .any(|s| s.iter().any(|&l| l == 0 || l > layers));
    if bad {
        return Err(StageError::Config(format!(
            "teacher cache: needs {needs:?} name layers the {layers}-layer teacher does not have"
        )));
    }
    if needs.logits && teacher.labels == 0 {
        return Err(StageError::Config(
            "teacher cache: the logit loss needs teacher logits, and the teacher has no \
             classification head"
                .into(),
        ));
    }
    Ok(())
}

impl TeacherCache {
    /// The expected size in bytes of a cache over examples of `lengths` valid tokens (see
    /// [`example_lengths`]): the stored tensors exactly, plus an allowance for the shard
    /// headers and the index.
    pub fn estimate(
        lengths: &[usize],
        needs: &TeacherNeeds,
        teacher: &ModelShape,
        cfg: &CacheConfig,
    ) -> u64 {
        let shape = TeacherShape::of(teacher);
        let (per_token, per_example) = unit_sizes(needs, &shape, cfg);
        let tokens: u64 = lengths.iter().map(|&l| l as u64).sum();
        let n = lengths.len() as u64;
        let data = tokens * per_token + n * per_example;
        let shards = data.div_ceil(cfg.shard_bytes.max(1)).max(1);
        let tensors = needs.token_tensors().len() as u64 + 2;
        // Shard header: ~100 bytes of JSON per tensor; index: ~24 bytes per example entry,
        // ~200 per shard entry, ~1 KiB of fixed fields.
        data + shards * (tensors * 100 + 200) + n * 24 + 1024
    }

    /// Runs `teacher` over the whole dataset of `batcher` (which must be `BatchConfig::in_order`
    /// at the start of an epoch; it passes twice: once for the lengths, once for the teacher)
    /// and writes the cache into `dir`, replacing what is there. Refuses, before running
    /// anything, when [`Self::estimate`] exceeds `cfg.budget_bytes`. `progress` is called after
    /// every batch.
    pub fn build(
        dir: &Path,
        key: &str,
        teacher: &dyn Model,
        batcher: &mut Batcher<'_>,
        needs: &TeacherNeeds,
        cfg: &CacheConfig,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<TeacherCache> {
        cfg.validate()?;
        let model_shape = teacher.shape();
        check_needs(needs, &model_shape)?;
        let shape = TeacherShape::of(&model_shape);
        let lengths = example_lengths(batcher)?;
        let expected = Self::estimate(&lengths, needs, &model_shape, cfg);
        if let Some(budget) = cfg.budget_bytes.filter(|&b| expected > b) {
            return Err(StageError::Config(format!(
                "teacher cache: {} would need about {} for {} examples, over the budget of {}; \
                 raise the budget, store f16/bf16, keep top-k logits, or turn the cache off",
                dir.display(),
                human_bytes(expected),
                lengths.len(),
                human_bytes(budget)
            )));
        }
        clear_dir(dir)?;
        let mut writer = ShardWriter::new(dir, needs, &shape, cfg);
        let total = lengths.len();
        let mut done = 0usize;
        for batch in batcher.epoch() {
            let batch = batch?;
            check_indices(&batch.indices, done)?;
            let t = batch.encoded.to_tensors(teacher.device())?;
            let out = teacher.forward_batch(&t, &ForwardOptions::default())?;
            let host = host_batch(&out, needs)?;
            let seq = batch.encoded.seq;
            for row in 0..batch.len() {
                let mask = &batch.encoded.attention_mask[row * seq..(row + 1) * seq];
                let len = mask.iter().filter(|&&m| m != 0).count();
                if lengths.get(done + row) != Some(&len) || mask[..len].contains(&0) {
                    return Err(StageError::Config(format!(
                        "teacher cache: example {} changed length between passes, or its \
                         padding is not on the right",
                        done + row
                    )));
                }
                writer.push(&host, row, seq, len)?;
            }
            done += batch.len();
            progress(BuildProgress {
                examples: done,
                total,
                bytes: writer.bytes_written,
            });
        }
        if done != total {
            return Err(StageError::Config(format!(
                "teacher cache: the second pass gave {done} of the {total} examples"
            )));
        }
        writer.flush()?;
        let index = Index {
            format: FORMAT,
            key: key.to_string(),
            needs: needs.clone(),
            dtype: dtype_name(cfg.dtype)?.to_string(),
            top_k_logits: cfg.top_k_logits,
            teacher: shape,
            checksum: "xxh64".into(),
            shards: writer.shards,
            examples: writer.entries,
        };
        let json = serde_json::to_vec(&index).map_err(|e| cache_err(e.to_string()))?;
        write_atomic(&dir.join(INDEX), &json)?;
        match Self::probe(dir, key, needs, cfg)? {
            Probe::Ready(cache) => Ok(*cache),
            Probe::Absent => Err(cache_err(format!(
                "{}: the index just written is gone",
                dir.display()
            ))),
            Probe::Stale(why) => Err(cache_err(format!(
                "{}: the cache just written does not verify: {why}",
                dir.display()
            ))),
        }
    }
}
