//! Checkpoints: one folder per saved step (`step-00000120/`: `params.safetensors`,
//! `optimizer.safetensors`, `state.json`), written under a temporary name and renamed into
//! place, so a crash leaves either the whole checkpoint or none of it. The last `keep` are
//! kept, plus the best on dev.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use distillery_data::Cursor;
use distillery_util::fs::sync_dir;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, StageError};
use crate::strategy::CheckpointPolicy;

const PREFIX: &str = "step-";
const FORMAT: u32 = 1;

/// The best dev result so far, by the run's [`crate::BestMetric`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub global_step: usize,
    pub metric: f64,
}

/// Where training stands: everything besides tensors that a resumed run needs to continue
/// exactly as an uninterrupted one would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub format: u32,
    /// The stage to run next (0-based) and how many of its steps are done.
    pub stage: usize,
    pub step_in_stage: usize,
    pub global_step: usize,
    pub cursor: Cursor,
    /// The run's seed (dropout masks derive from it and the global step).
    pub seed: u64,
    /// Stage names and lengths, so that resuming under another schedule is refused.
    pub schedule: Vec<(String, usize)>,
    /// Per-parameter AdamW step counts.
    pub optimizer_steps: Vec<(String, u64)>,
    /// The dev metric (the run's [`crate::BestMetric`]) measured at this checkpoint, when one was.
    pub dev_metric: Option<f64>,
    pub best: Option<Best>,
}

impl TrainState {
    pub fn new(seed: u64, schedule: Vec<(String, usize)>, cursor: Cursor) -> Self {
        Self {
            format: FORMAT,
            stage: 0,
            step_in_stage: 0,
            global_step: 0,
            cursor,
            seed,
            schedule,
            optimizer_steps: Vec::new(),
            dev_metric: None,
            best: None,
        }
    }
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: TrainState,
    pub params: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// A folder of checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
    policy: CheckpointPolicy,
    abort_in: Option<usize>,
}

fn step_dir_name(step: usize) -> String {
    format!("{PREFIX}{step:08}")
}

impl CheckpointDir {
    /// `keep` (≥ 1) recent checkpoints are kept, plus the best.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self::with_policy(
            root,
            CheckpointPolicy {
                keep_last: keep,
                keep_best: true,
            },
        )
    }

    /// Keeps what `policy` says (at least the newest checkpoint).
    pub fn with_policy(root: impl Into<PathBuf>, policy: CheckpointPolicy) -> Self {
        Self {
            root: root.into(),
            policy: CheckpointPolicy {
                keep_last: policy.keep_last.max(1),
                ..policy
            },
            abort_in: None,
        }
    }

    /// Crash tests: the process aborts (no unwinding, nothing flushed, like SIGKILL) halfway
    /// through writing the checkpoint of global step `step`, after its parameters and before
    /// its optimiser state and `state.json`, leaving a partial temporary folder behind.
    pub fn abort_while_writing(mut self, step: Option<usize>) -> Self {
        self.abort_in = step;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<(usize, PathBuf)>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.root, e))?;
            let name = entry.file_name();
            let Some(step) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if entry.path().join("state.json").is_file() {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes a checkpoint for `state.global_step` and prunes old ones; returns its folder.
    pub fn save(
        &self,
        state: &TrainState,
        params: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.root).map_err(|e| io_err(&self.root, e))?;
        let name = step_dir_name(state.global_step);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let fin = self.root.join(&name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        let write = || -> Result<()> {
            save_tensors(params, &tmp.join("params.safetensors"))?;
            if self.abort_in == Some(state.global_step) {
                std::process::abort();
            }
            save_tensors(optimizer, &tmp.join("optimizer.safetensors"))?;
            let json = serde_json::to_vec_pretty(state)
                .map_err(|e| StageError::Checkpoint(e.to_string()))?;
            let path = tmp.join("state.json");
            let mut f = std::fs::File::create(&path).map_err(|e| io_err(&path, e))?;
            f.write_all(&json).map_err(|e| io_err(&path, e))?;
            f.sync_all().map_err(|e| io_err(&path, e))
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        sync_dir(&tmp);
        if fin.exists() {
            // Same step saved again (a resumed run passing its own checkpoint): swap, then drop
            // the old one, so that a crash in between still leaves a complete folder.
            let old = self.root.join(format!(".{name}.old"));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&fin, &old).map_err(|e| io_err(&fin, e))?;
            std::fs::rename(&tmp, &fin).map_err(|e| io_err(&fin, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, &fin).map_err(|e| io_err(&fin, e))?;
        }
        sync_dir(&self.root);
        self.prune(state.best.map(|b| b.global_step))?;
        Ok(fin)
    }

    /// Keeps the newest `keep_last` and, by the policy, the best; removes the rest.
    fn prune(&self, best: Option<usize>) -> Result<()> {
        let all = self.list()?;
        let cut = all.len().saturating_sub(self.policy.keep_last);
        let best = best.filter(|_| self.policy.keep_best);
        for (step, path) in &all[..cut] {
            if Some(*step) != best {
                std::fs::remove_dir_all(path).map_err(|e| io_err(path, e))?;
            }
        }
        Ok(())
    }

    /// Removes temporary folders a killed run left behind; a `.step-N.old` whose `step-N` is
    /// missing (killed between the two renames of a re-save) is put back instead.
    pub fn clean_partial(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy().into_owned();
            let p = entry.path();
            if let Some(step) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".old")) {
                let fin = self.root.join(step);
                if !fin.exists() {
                    std::fs::rename(&p, &fin).map_err(|e| io_err(&fin, e))?;
                    continue;
                }
            }
            if name.starts_with('.') && (name.ends_with(".tmp") || name.ends_with(".old")) {
                std::fs::remove_dir_all(&p).map_err(|e| io_err(&p, e))?;
            }
        }
        Ok(())
    }

    /// The complete checkpoint of global step `step`, loaded onto `device`, if it is kept.
    pub fn load_step(&self, step: usize, device: &Device) -> Result<Option<Checkpoint>> {
        match self.list()?.into_iter().find(|(s, _)| *s == step) {
            Some((_, path)) => load(&path, device).map(Some),
            None => Ok(None),
        }
    }

    /// The newest complete checkpoint, loaded onto `device`.
    pub fn latest(&self, device: &Device) -> Result<Option<Checkpoint>> {
        match self.list()?.pop() {
            Some((_, path)) => load(&path, device).map(Some),
            None => Ok(None),
        }
    }
}

fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&cpu, path)?;
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Loads the checkpoint in folder `path`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let state_path = path.join("state.json");
    let text = std::fs::read(&state_path).map_err(|e| io_err(&state_path, e))?;
    let state: TrainState = serde_json::from_slice(&text)
        .map_err(|e| StageError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    if state.format != FORMAT {
        return Err(StageError::Checkpoint(format!(
            "{}: format {} (this build reads {FORMAT})",
            state_path.display(),
            state.format
        )));
    }
    let read = |name: &str| -> Result<HashMap<String, Tensor>> {
        let p = path.join(name);
        candle_core::safetensors::load(&p, device)
            .map_err(|e| StageError::Checkpoint(format!("{}: {e}", p.display())))
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        state,
        params: read("params.safetensors")?,
        optimizer: read("optimizer.safetensors")?,
    })
}
