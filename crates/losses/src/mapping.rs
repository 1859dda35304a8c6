//! Which student layer learns from which teacher layer.
//!
//! Layers are numbered as `ModelOutput::hidden_states`: 0 is the embedding output, 1..=N the
//! encoder layers. A map pairs each student layer 1..=S with a teacher layer in 1..=T; the
//! embedding pair (0, 0) is added by the losses that ask for it.

use crate::error::{LossError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerMap {
    /// TinyBERT's g(m) = m·T/S (rounded down): student layer m learns from teacher layer m·k.
    Uniform,
    /// Student layer m learns from teacher layer T − S + m (the top S layers).
    LastK,
    /// Teacher layer of each student layer in order: entry j is the teacher layer of student
    /// layer j + 1, each in 1..=T.
    Explicit(Vec<usize>),
}

/// A resolved (student layer, teacher layer) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerPair {
    pub student: usize,
    pub teacher: usize,
}

impl LayerMap {
    /// Resolves the map for a student of `s` layers and a teacher of `t` layers.
    pub fn resolve(&self, s: usize, t: usize) -> Result<Vec<LayerPair>> {
        if s == 0 || t == 0 {
            return Err(LossError::Mapping(format!(
                "need at least one layer each (student {s}, teacher {t})"
            )));
        }
        let teacher_layers: Vec<usize> = match self {
            Self::Uniform => {
                if s > t {
                    return Err(LossError::Mapping(format!(
                        "uniform map needs the student ({s} layers) no deeper than the teacher ({t} layers)"
                    )));
                }
                (1..=s).map(|m| m * t / s).collect()
            }
            Self::LastK => {
                if s > t {
                    return Err(LossError::Mapping(format!(
                        "last-k map needs the student ({s} layers) no deeper than the teacher ({t} layers)"
                    )));
                }
                (1..=s).map(|m| t - s + m).collect()
            }
            Self::Explicit(list) => {
                if list.len() != s {
                    return Err(LossError::Mapping(format!(
                        "explicit map has {} entries but the student has {s} layers (one teacher layer per student layer)",
                        list.len()
                    )));
                }
                if let Some((j, &bad)) = list.iter().enumerate().find(|(_, &l)| l == 0 || l > t) {
                    return Err(LossError::Mapping(format!(
                        "entry {j} (student layer {}) is teacher layer {bad}, out of range: the teacher has layers 1..={t} \
                         (0 is the embedding output, mapped separately)",
                        j + 1
                    )));
                }
                list.clone()
            }
        };
        Ok(teacher_layers
            .into_iter()
            .enumerate()
            .map(|(j, teacher)| LayerPair {
                student: j + 1,
                teacher,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teachers(v: Vec<LayerPair>) -> Vec<usize> {
        v.into_iter().map(|p| p.teacher).collect()
    }

    #[test]
    fn uniform_last_k_and_explicit() {
        assert_eq!(
            teachers(LayerMap::Uniform.resolve(3, 6).unwrap_or_default()),
            [2, 4, 6]
        );
        assert_eq!(
            teachers(LayerMap::Uniform.resolve(4, 12).unwrap_or_default()),
            [3, 6, 9, 12]
        );
        assert_eq!(
            teachers(LayerMap::Uniform.resolve(4, 6).unwrap_or_default()),
            [1, 3, 4, 6]
        );
        assert_eq!(
            teachers(LayerMap::LastK.resolve(2, 6).unwrap_or_default()),
            [5, 6]
        );
        assert_eq!(
            teachers(
                LayerMap::Explicit(vec![1, 3, 6])
                    .resolve(3, 6)
                    .unwrap_or_default()
            ),
            [1, 3, 6]
        );
    }

    #[test]
    fn invalid_maps_say_which_index_and_why() {
        let e = LayerMap::Explicit(vec![1, 7, 6])
            .resolve(3, 6)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("entry 1") && e.contains("teacher layer 7") && e.contains("1..=6"),
            "{e}"
        );
        let e = LayerMap::Explicit(vec![1, 2])
            .resolve(3, 6)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("2 entries") && e.contains("3 layers"), "{e}");
        let e = LayerMap::Explicit(vec![0])
            .resolve(1, 6)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("entry 0") && e.contains("embedding"), "{e}");
        assert!(LayerMap::Uniform.resolve(7, 6).is_err());
        assert!(LayerMap::LastK.resolve(7, 6).is_err());
    }
}
