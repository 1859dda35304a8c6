//! Where a model's parameters come from: a safetensors file, a map of tensors (a teacher's,
//! renamed for a student), or seeded random initialisation; and whether they are trainable.
//!
//! Names are Hugging Face `BertModel` names without the `bert.` prefix
//! (`encoder.layer.0.attention.self.query.weight`), plus `classifier.*` for the head.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{ModelError, Result};
use crate::rng::SplitMix64;

/// How a parameter is initialised when no stored value exists for it.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    /// Normal with one row zeroed: word embeddings, whose padding row BERT initialises to 0.
    NormalZeroRow(f64, usize),
    Zeros,
    Ones,
}

/// Stored values to read parameters from.
pub enum Stored {
    None,
    /// A memory-mapped safetensors file; `prefix` is prepended to encoder names ("bert." or "").
    File {
        path: PathBuf,
        st: MmapedSafetensors,
        prefix: String,
    },
    /// Explicit tensors keyed by canonical name (e.g. teacher layers renamed for a student).
    Map(HashMap<String, Tensor>),
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => write!(f, "Stored::None"),
            Self::File { path, prefix, .. } => {
                write!(f, "Stored::File({path:?}, prefix {prefix:?})")
            }
            Self::Map(m) => write!(f, "Stored::Map({} tensors)", m.len()),
        }
    }
}

/// Hands out parameters by name and shape; registers them in a `VarMap` when trainable.
pub struct ParamBuilder {
    stored: Stored,
    /// Seed for names missing from `stored`; `None` makes a missing name an error.
    random_seed: Option<u64>,
    varmap: Option<VarMap>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for ParamBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamBuilder")
            .field("stored", &self.stored)
            .field("random_seed", &self.random_seed)
            .field("trainable", &self.varmap.is_some())
            .finish_non_exhaustive()
    }
}

impl ParamBuilder {
    pub fn new(
        stored: Stored,
        random_seed: Option<u64>,
        trainable: bool,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            stored,
            random_seed,
            varmap: trainable.then(VarMap::new),
            dtype,
            device: device.clone(),
        }
    }

    pub fn trainable(&self) -> bool {
        self.varmap.is_some()
    }

    pub fn into_varmap(self) -> Option<VarMap> {
        self.varmap
    }

    /// Whether a stored value exists for `name` (used for optional parts such as the pooler).
    pub fn has(&self, name: &str) -> bool {
        match &self.stored {
            Stored::None => false,
            Stored::File { st, prefix, .. } => st.get(&stored_name(prefix, name)).is_ok(),
            Stored::Map(m) => m.contains_key(name),
        }
    }

    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let t = match self.load_stored(name, shape)? {
            Some(t) => t,
            None => match self.random_seed {
                Some(seed) => self.init(name, shape, init, seed)?,
                None => return Err(self.missing(name, shape)),
            },
        };
        let t = t.to_dtype(self.dtype)?.to_device(&self.device)?;
        match &self.varmap {
            Some(vm) => {
                let var = Var::from_tensor(&t)?;
                let tensor = var.as_tensor().clone();
                let mut data = vm
                    .data()
                    .lock()
                    .map_err(|_| ModelError::Student("parameter map lock poisoned".into()))?;
                data.insert(name.to_string(), var);
                Ok(tensor)
            }
            None => Ok(t),
        }
    }

    fn load_stored(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let (t, path) = match &self.stored {
            Stored::None => return Ok(None),
            Stored::File { path, st, prefix } => {
                let full = stored_name(prefix, name);
                if st.get(&full).is_err() {
                    return Ok(None);
                }
                (st.load(&full, &Device::Cpu)?, path.clone())
            }
            Stored::Map(m) => match m.get(name) {
                Some(t) => (t.clone(), PathBuf::from("<teacher>")),
                None => return Ok(None),
            },
        };
        if t.dims() != shape {
            return Err(ModelError::TensorShape {
                path,
                name: name.to_string(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(Some(t))
    }

    fn missing(&self, name: &str, shape: &[usize]) -> ModelError {
        let (path, full) = match &self.stored {
            Stored::File { path, prefix, .. } => (path.clone(), stored_name(prefix, name)),
            _ => (PathBuf::from("<parameters>"), name.to_string()),
        };
        ModelError::MissingTensor {
            path,
            name: full,
            expected: shape.to_vec(),
        }
    }

    fn init(&self, name: &str, shape: &[usize], init: Init, seed: u64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let t = match init {
            Init::Zeros => Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
            Init::Ones => Tensor::ones(shape, DType::F32, &Device::Cpu)?,
            Init::Normal(std) | Init::NormalZeroRow(std, _) => {
                let mut rng = SplitMix64::derive(seed, name);
                let mut v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
                if let (Init::NormalZeroRow(_, row), [_, cols]) = (init, shape) {
                    v.iter_mut()
                        .skip(row * cols)
                        .take(*cols)
                        .for_each(|x| *x = 0.0);
                }
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
        };
        Ok(t)
    }
}

fn stored_name(prefix: &str, name: &str) -> String {
    if name.starts_with("classifier.") {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}
