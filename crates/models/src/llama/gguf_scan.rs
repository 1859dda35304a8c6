//! A second look at a GGUF header that candle's reader refused for an unknown tensor type:
//! candle stops without saying which tensor, so this walks the header (skipping metadata values
//! by type) to name it. Every length is checked against the bytes left, so a hostile header
//! cannot make it allocate or loop beyond the file.

use std::io::Read;
use std::path::Path;

/// The types candle's GGUF reader knows (ggml's numbering).
const KNOWN: [u32; 15] = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: u64) -> Option<&[u8]> {
        let n = usize::try_from(n).ok()?;
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let n = self.u64()?;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// Skips one metadata value of type `t` (arrays nest at most once in practice; deeper
    /// nesting is refused rather than recursed into without bound).
    fn skip(&mut self, t: u32, depth: u32) -> Option<()> {
        let size = match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                let n = self.u64()?;
                self.take(n)?;
                return Some(());
            }
            9 if depth < 2 => {
                let (inner, n) = (self.u32()?, self.u64()?);
                for _ in 0..n {
                    self.skip(inner, depth + 1)?;
                }
                return Some(());
            }
            _ => return None,
        };
        self.take(size).map(|_| ())
    }
}

/// The first tensor whose type candle does not know, and that type, if the header (GGUF v2 or
/// v3) can be walked that far.
pub(crate) fn unknown_type_tensor(path: &Path) -> Option<(String, u32)> {
    // Headers are small next to the data; 64 MiB covers any vocabulary seen in practice.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 << 20)
        .read_to_end(&mut bytes)
        .ok()?;
    let mut c = Cursor {
        bytes: &bytes,
        at: 0,
    };
    if c.u32()? != 0x4655_4747 || !matches!(c.u32()?, 2 | 3) {
        return None;
    }
    let (tensors, kvs) = (c.u64()?, c.u64()?);
    for _ in 0..kvs {
        c.string()?;
        let t = c.u32()?;
        c.skip(t, 0)?;
    }
    for _ in 0..tensors {
        let name = c.string()?;
        let dims = c.u32()?;
        c.take(u64::from(dims).checked_mul(8)?)?;
        let kind = c.u32()?;
        c.u64()?;
        if !KNOWN.contains(&kind) {
            return Some((name, kind));
        }
    }
    None
}
