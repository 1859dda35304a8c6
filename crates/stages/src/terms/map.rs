//! `map = "uniform" | "last-k" | [t1, t2, …]` in a term's table: which teacher layer each
//! student layer learns from (1-based teacher layers).

use std::fmt;

use distillery_losses::LayerMap;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::{TermError, TermResult};

/// Deserializes a layer map; hand-written rather than `#[serde(untagged)]`, whose error ("data
/// did not match any variant") would not say what is accepted.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LayerMap, D::Error> {
    struct MapVisitor;
    const EXPECTED: &str = "\"uniform\", \"last-k\" or a list of 1-based teacher layers";
    impl<'de> Visitor<'de> for MapVisitor {
        type Value = LayerMap;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<LayerMap, E> {
            match s {
                "uniform" => Ok(LayerMap::Uniform),
                "last-k" => Ok(LayerMap::LastK),
                _ => Err(E::invalid_value(de::Unexpected::Str(s), &EXPECTED)),
            }
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LayerMap, A::Error> {
            let mut v = Vec::new();
            while let Some(l) = seq.next_element::<usize>()? {
                v.push(l);
            }
            Ok(LayerMap::Explicit(v))
        }
    }
    d.deserialize_any(MapVisitor)
}

/// What can be checked without the models: an explicit list is non-empty and 1-based.
pub(crate) fn check(map: &LayerMap) -> TermResult<()> {
    if let LayerMap::Explicit(list) = map {
        if list.is_empty() {
            return Err(TermError::key("map", "is an empty list"));
        }
        if let Some(j) = list.iter().position(|&l| l == 0) {
            return Err(TermError::key(
                "map",
                format!(
                    "entry {j} is 0, but teacher layers are 1-based here (0 is the embedding output; \
                     use include_embeddings)"
                ),
            ));
        }
    }
    Ok(())
}

/// The map resolved for two models, as a key error on `map`.
pub(crate) fn resolve_for(
    map: &LayerMap,
    student: usize,
    teacher: usize,
) -> TermResult<Vec<distillery_losses::LayerPair>> {
    map.resolve(student, teacher)
        .map_err(|e| TermError::key("map", e))
}
