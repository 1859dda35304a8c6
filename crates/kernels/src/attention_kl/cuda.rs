//! CUDA implementation of the streaming attention-KL: launches the kernels of
//! `crates/kernels/cuda/attention_kl.cu` (embedded as PTX, see [`crate::ptx`]) through candle's
//! CUDA device and cudarc.
//!
//! The kernels take teacher and student inputs of one dtype (f32, bf16 or f16). Other
//! combinations (mixed teacher/student dtypes, f64) are converted to f32 on the device first;
//! the kernels compute in f32 anyway, so this changes no value, only costs a copy. The saved
//! statistics stay on the device: `[b, h, l, 4]` f32, `(m_a, ln Z_a, m_b, ln Z_b)` per row.
//!
//! bf16 and f16 inputs compute their score tiles on the tensor cores (wmma, f32 accumulation)
//! unless [`set_cuda_tensor_cores`]`(false)` or `DISTILLERY_CUDA_TENSOR_CORES=0`; f32 inputs
//! always use the CUDA cores (tensor cores would round them to tf32).
//!
//! The shared-memory sizes below mirror `fwd_smem_bytes` / `bwd_smem_bytes` of the `.cu` file
//! (the kernels trap if they get less than they carve).

use super::Problem;
use crate::ptx;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout, Result, WithDType};
use half::{bf16, f16};
use std::sync::atomic::{AtomicU8, Ordering};

/// Query rows per block, keys per tile, threads per block (as in the `.cu`).
const BM: usize = 64;
const BN: usize = 64;
const NTHREADS: u32 = 256;
/// Largest student head dim of the backward kernels (their register tiles are templated on
/// 32, 64 and 128).
pub(crate) const MAX_D_S: usize = 128;
/// Dynamic shared memory a kernel may use without opting in.
const SMEM_DEFAULT: usize = 48 * 1024;

/// Shared-memory layout of the `.cu` file, for tiles of `elem`-byte elements (4: f32 tiles on
/// the CUDA cores; 2: bf16/f16 tiles on the tensor cores).
mod smem {
    /// Padding of a tile row: 4 floats or 8 16-bit elements.
    fn pad(elem: usize) -> usize {
        if elem == 4 {
            4
        } else {
            8
        }
    }
    /// Filled columns of a tile of width `d`.
    fn width(d: usize, elem: usize) -> usize {
        let m = if elem == 4 { 32 } else { 16 };
        d.max(1).div_ceil(m) * m
    }
    /// Bytes of one piece of `n` elements (every piece is 128-byte aligned).
    fn carve(n: usize, size: usize) -> usize {
        (n * size).div_ceil(128) * 128
    }
    /// Row stride of the tensor-core score tiles and of the dS tiles (floats).
    const SST: usize = 80;
    const DST: usize = 68;

    pub(super) fn fwd(d_t: usize, d_s: usize, elem: usize) -> usize {
        let ld = |d: usize| width(d, elem) + pad(elem);
        2 * carve(64 * ld(d_t), elem)
            + 2 * carve(64 * ld(d_s), elem)
            + if elem == 4 { 0 } else { 2 * carve(64 * SST, 4) }
            + carve(64, 4)
    }

    pub(super) fn bwd(d_t: usize, ds_max: usize, elem: usize) -> usize {
        2 * carve(64 * (width(d_t, elem) + pad(elem)), elem)
            + 2 * carve(64 * (ds_max + pad(elem)), elem)
            + if elem == 4 { 0 } else { 2 * carve(64 * SST, 4) }
            + carve(64 * DST, 4)
            + carve(64, 4)
            + carve(64 * 4, 4)
            + carve(64, 4)
    }
}

/// 0: not decided yet (read `DISTILLERY_CUDA_TENSOR_CORES`), 1: off, 2: on.
static TENSOR_CORES: AtomicU8 = AtomicU8::new(0);

/// Whether bf16/f16 attention-KL computes its score tiles on the tensor cores (the default;
/// `DISTILLERY_CUDA_TENSOR_CORES=0` turns it off at start-up).
pub fn cuda_tensor_cores() -> bool {
    match TENSOR_CORES.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("DISTILLERY_CUDA_TENSOR_CORES").map_or(true, |v| v != "0");
            // A concurrent `set_cuda_tensor_cores` wins.
            let _ = TENSOR_CORES.compare_exchange(
                0,
                1 + u8::from(on),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            TENSOR_CORES.load(Ordering::Relaxed) == 2
        }
        v => v == 2,
    }
}

/// Selects tensor cores (`true`) or CUDA cores (`false`) for the score tiles of bf16/f16
/// attention-KL from now on (process-wide; both give the same values up to rounding).
pub fn set_cuda_tensor_cores(on: bool) {
    TENSOR_CORES.store(1 + u8::from(on), Ordering::Relaxed);
}

/// The kernel family for inputs of dtype `T`: its name infix and its tiles' element size.
fn family<T: WithDType>() -> (String, usize) {
    let dt = T::DTYPE.as_str();
    if T::DTYPE != DType::F32 && cuda_tensor_cores() {
        (format!("tc_{dt}"), 2)
    } else {
        (format!("{dt}_{dt}"), 4)
    }
}

/// The statistics the forward saves for the backward, on the device.
pub(crate) struct RowStats {
    stats: CudaSlice<f32>,
}

impl std::fmt::Debug for RowStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda::RowStats({} floats)", self.stats.len())
    }
}

/// A contiguous device input in the kernels' dtype: borrowed when it already is one, else a
/// converted copy.
enum Arg<'a> {
    Borrowed(&'a CudaStorage, usize, usize),
    Owned(CudaStorage, usize),
}

impl<'a> Arg<'a> {
    fn new(s: &'a CudaStorage, l: &Layout, dtype: DType) -> Result<Self> {
        match l.contiguous_offsets() {
            Some((start, end)) if s.dtype() == dtype => Ok(Arg::Borrowed(s, start, end)),
            _ => Ok(Arg::Owned(s.to_dtype(l, dtype)?, l.shape().elem_count())),
        }
    }

    fn view<T: CudaDType>(&self) -> Result<CudaView<'_, T>> {
        let (s, start, end) = match self {
            Arg::Borrowed(s, start, end) => (*s, *start, *end),
            Arg::Owned(s, n) => (s, 0, *n),
        };
        Ok(s.as_cuda_slice::<T>()?.slice(start..end))
    }
}

/// The device inputs of both passes.
pub(crate) struct Inputs<'a> {
    pub q_t: (&'a CudaStorage, &'a Layout),
    pub k_t: (&'a CudaStorage, &'a Layout),
    pub q_s: (&'a CudaStorage, &'a Layout),
    pub k_s: (&'a CudaStorage, &'a Layout),
    pub mask: (&'a CudaStorage, &'a Layout),
}

/// The inputs converted for the kernels.
struct Args<'a> {
    q_t: Arg<'a>,
    k_t: Arg<'a>,
    q_s: Arg<'a>,
    k_s: Arg<'a>,
    mask: Arg<'a>,
}

/// The dtype the kernels run in: the common dtype of teacher and student if they have one the
/// kernels support, else f32.
fn kernel_dtype(teacher: DType, student: DType) -> DType {
    match (teacher, student) {
        (t, s) if t == s && matches!(t, DType::F32 | DType::BF16 | DType::F16) => t,
        _ => DType::F32,
    }
}

impl<'a> Inputs<'a> {
    fn check(&self, p: &Problem) -> Result<DType> {
        let (nt, ns) = (p.b * p.h * p.l * p.d_t, p.b * p.h * p.l * p.d_s);
        for (name, (_, l), want) in [
            ("q_t", self.q_t, nt),
            ("k_t", self.k_t, nt),
            ("q_s", self.q_s, ns),
            ("k_s", self.k_s, ns),
            ("mask", self.mask, p.b * p.l),
        ] {
            if l.shape().elem_count() != want {
                candle_core::bail!(
                    "attention-kl (cuda): `{name}` has {} elements, expected {want}",
                    l.shape().elem_count()
                );
            }
        }
        if self.q_t.0.dtype() != self.k_t.0.dtype() || self.q_s.0.dtype() != self.k_s.0.dtype() {
            candle_core::bail!("attention-kl (cuda): q and k of one model must share a dtype");
        }
        if self.mask.0.dtype() != DType::U8 {
            candle_core::bail!("attention-kl (cuda): the mask must be u8");
        }
        if p.d_s > MAX_D_S {
            candle_core::bail!(
                "attention-kl (cuda): student head dim d_s = {} is above the supported {MAX_D_S}",
                p.d_s
            );
        }
        Ok(kernel_dtype(self.q_t.0.dtype(), self.q_s.0.dtype()))
    }

    fn convert(&self, dtype: DType) -> Result<Args<'a>> {
        Ok(Args {
            q_t: Arg::new(self.q_t.0, self.q_t.1, dtype)?,
            k_t: Arg::new(self.k_t.0, self.k_t.1, dtype)?,
            q_s: Arg::new(self.q_s.0, self.q_s.1, dtype)?,
            k_s: Arg::new(self.k_s.0, self.k_s.1, dtype)?,
            mask: Arg::new(self.mask.0, self.mask.1, DType::U8)?,
        })
    }
}

/// Integer kernel parameters and the launch configuration.
struct Launch {
    h: i32,
    l: i32,
    d_t: i32,
    d_s: i32,
    cfg: LaunchConfig,
}

impl Launch {
    fn new(p: &Problem, block_rows: usize, smem: usize) -> Result<Self> {
        let int = |x: usize, what: &str| -> Result<i32> {
            match i32::try_from(x) {
                Ok(v) => Ok(v),
                Err(_) => candle_core::bail!("attention-kl (cuda): {what} = {x} is too large"),
            }
        };
        let blocks = p.b * p.h * p.l.div_ceil(block_rows);
        let grid = match u32::try_from(blocks) {
            Ok(g) if g <= i32::MAX as u32 => g,
            _ => candle_core::bail!("attention-kl (cuda): {blocks} thread blocks are too many"),
        };
        Ok(Self {
            h: int(p.h, "heads")?,
            l: int(p.l, "sequence length")?,
            d_t: int(p.d_t, "d_t")?,
            d_s: int(p.d_s, "d_s")?,
            cfg: LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (NTHREADS, 1, 1),
                shared_mem_bytes: smem as u32,
            },
        })
    }
}

/// Loads kernel `name` from the PTX for the device's architecture and lets it use `smem` bytes
/// of dynamic shared memory.
fn load(dev: &CudaDevice, name: &str, smem: usize) -> Result<CudaFunction> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let (major, minor) = ctx.compute_capability().w()?;
    let (module, ptx) = match major {
        9.. => ("distillery_attention_kl_sm90", ptx::ATTENTION_KL_SM90),
        8 => ("distillery_attention_kl_sm80", ptx::ATTENTION_KL_SM80),
        _ => candle_core::bail!(
            "attention-kl (cuda): needs a GPU of compute capability 8.0 or newer, found {major}.{minor}"
        ),
    };
    let limit = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .w()?;
    if smem > limit.max(0) as usize {
        candle_core::bail!(
            "attention-kl (cuda): `{name}` needs {smem} bytes of shared memory per block for \
             these head dims, the device allows {limit}"
        );
    }
    let func = dev
        .get_or_load_custom_func(name, module, ptx)?
        .into_cuda_function();
    if smem > SMEM_DEFAULT {
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .w()?;
    }
    Ok(func)
}

/// Forward: per-row KL `[b, h, l]` (f32) and the saved statistics.
pub(crate) fn forward(p: &Problem, x: &Inputs<'_>) -> Result<(CudaStorage, RowStats)> {
    let kd = x.check(p)?;
    let dev = x.q_s.0.device().clone();
    let n = p.b * p.h * p.l;
    let mut kl = dev.alloc_zeros::<f32>(n.max(1))?;
    let mut stats = dev.alloc_zeros::<f32>((4 * n).max(1))?;
    if n > 0 {
        let args = x.convert(kd)?;
        match kd {
            DType::F32 => launch_fwd::<f32>(&dev, p, &args, &mut kl, &mut stats)?,
            DType::BF16 => launch_fwd::<bf16>(&dev, p, &args, &mut kl, &mut stats)?,
            DType::F16 => launch_fwd::<f16>(&dev, p, &args, &mut kl, &mut stats)?,
            other => candle_core::bail!("attention-kl (cuda): no kernel for {other:?}"),
        }
    }
    Ok((CudaStorage::wrap_cuda_slice(kl, dev), RowStats { stats }))
}

fn launch_fwd<T: CudaDType + DeviceRepr + WithDType>(
    dev: &CudaDevice,
    p: &Problem,
    a: &Args<'_>,
    kl: &mut CudaSlice<f32>,
    stats: &mut CudaSlice<f32>,
) -> Result<()> {
    let (q_t, k_t) = (a.q_t.view::<T>()?, a.k_t.view::<T>()?);
    let (q_s, k_s) = (a.q_s.view::<T>()?, a.k_s.view::<T>()?);
    let mask = a.mask.view::<u8>()?;
    let (fam, elem) = family::<T>();
    let smem = smem::fwd(p.d_t, p.d_s, elem);
    let func = load(dev, &format!("akl_fwd_{fam}"), smem)?;
    let ln = Launch::new(p, BM, smem)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&q_t);
    b.arg(&k_t);
    b.arg(&q_s);
    b.arg(&k_s);
    b.arg(&mask);
    b.arg(kl);
    b.arg(stats);
    b.arg(&ln.h);
    b.arg(&ln.l);
    b.arg(&ln.d_t);
    b.arg(&ln.d_s);
    b.arg(&p.scale_t);
    b.arg(&p.scale_s);
    // SAFETY: the arguments match the kernel's signature (pointers to buffers of the sizes
    // checked in `Inputs::check`, then i32 dims and f32 scales); every thread block writes only
    // its own rows of `kl` and `stats`.
    unsafe { b.launch(ln.cfg) }.w()?;
    Ok(())
}

/// Backward: `[dQ_s; dK_s]` as one `[2, b, h, l, d_s]` buffer in the dtype of `q_s`, given the
/// upstream gradient of the per-row KL (`[b, h, l]`, f32).
pub(crate) fn backward(
    p: &Problem,
    x: &Inputs<'_>,
    stats: &RowStats,
    grad: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let kd = x.check(p)?;
    let out_dtype = x.q_s.0.dtype();
    let n = p.b * p.h * p.l;
    if stats.stats.len() != (4 * n).max(1) || grad.1.shape().elem_count() != n {
        candle_core::bail!(
            "attention-kl backward (cuda): gradient or saved statistics do not match the inputs"
        );
    }
    let dev = x.q_s.0.device().clone();
    let args = x.convert(kd)?;
    let grad = Arg::new(grad.0, grad.1, DType::F32)?;
    let out = match kd {
        DType::F32 => launch_bwd::<f32>(&dev, p, &args, stats, &grad)?,
        DType::BF16 => launch_bwd::<bf16>(&dev, p, &args, stats, &grad)?,
        DType::F16 => launch_bwd::<f16>(&dev, p, &args, stats, &grad)?,
        other => candle_core::bail!("attention-kl (cuda): no kernel for {other:?}"),
    };
    if kd == out_dtype {
        return Ok(out);
    }
    let len = match &out.slice {
        candle_core::cuda_backend::CudaStorageSlice::F32(s) => s.len(),
        _ => candle_core::bail!("attention-kl backward (cuda): expected an f32 buffer"),
    };
    out.to_dtype(&Layout::contiguous(len), out_dtype)
}

fn launch_bwd<T: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType>(
    dev: &CudaDevice,
    p: &Problem,
    a: &Args<'_>,
    stats: &RowStats,
    grad: &Arg<'_>,
) -> Result<CudaStorage> {
    let n = p.b * p.h * p.l * p.d_s;
    let mut out = dev.alloc_zeros::<T>((2 * n).max(1))?;
    if n > 0 {
        let (q_t, k_t) = (a.q_t.view::<T>()?, a.k_t.view::<T>()?);
        let (q_s, k_s) = (a.q_s.view::<T>()?, a.k_s.view::<T>()?);
        let mask = a.mask.view::<u8>()?;
        let grad = grad.view::<f32>()?;
        let ds_max = match p.d_s {
            0..=32 => 32,
            33..=64 => 64,
            _ => 128,
        };
        let (fam, elem) = family::<T>();
        let smem = smem::bwd(p.d_t, ds_max, elem);
        for (which, range) in [("dq", 0..n), ("dk", n..2 * n)] {
            let func = load(dev, &format!("akl_bwd_{which}_{fam}_{ds_max}"), smem)?;
            let ln = Launch::new(p, BM.max(BN), smem)?;
            let mut dst = out.slice_mut(range);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&q_t);
            b.arg(&k_t);
            b.arg(&q_s);
            b.arg(&k_s);
            b.arg(&mask);
            b.arg(&stats.stats);
            b.arg(&grad);
            b.arg(&mut dst);
            b.arg(&ln.h);
            b.arg(&ln.l);
            b.arg(&ln.d_t);
            b.arg(&ln.d_s);
            b.arg(&p.scale_t);
            b.arg(&p.scale_s);
            // SAFETY: the arguments match the kernel's signature; `dst` is `[b, h, l, d_s]` and
            // every thread block writes only its own rows (dQ) or keys (dK) of it.
            unsafe { b.launch(ln.cfg) }.w()?;
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

fn cuda_storage<'a>(s: &'a candle_core::Storage, name: &str) -> Result<&'a CudaStorage> {
    match s {
        candle_core::Storage::Cuda(s) => Ok(s),
        _ => candle_core::bail!(
            "attention-kl: `{name}` is not on the GPU while the student inputs are"
        ),
    }
}

/// `cuda_fwd` of the forward op: per-row KL and the statistics to save.
pub(crate) fn forward_op(
    sh: &super::Shared,
    q_s: (&CudaStorage, &Layout),
    k_s: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, RowStats)> {
    let (qt, qt_l) = sh.q_t.storage_and_layout();
    let (kt, kt_l) = sh.k_t.storage_and_layout();
    let (mask, mask_l) = sh.mask.storage_and_layout();
    let inputs = Inputs {
        q_t: (cuda_storage(&qt, "q_t")?, qt_l),
        k_t: (cuda_storage(&kt, "k_t")?, kt_l),
        q_s,
        k_s,
        mask: (cuda_storage(&mask, "mask")?, mask_l),
    };
    forward(&sh.problem, &inputs)
}

/// `cuda_fwd` of the backward op: `[dQ_s; dK_s]`.
pub(crate) fn backward_op(
    sh: &super::Shared,
    stats: &RowStats,
    q_s: (&CudaStorage, &Layout),
    k_s: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let (qt, qt_l) = sh.q_t.storage_and_layout();
    let (kt, kt_l) = sh.k_t.storage_and_layout();
    let (mask, mask_l) = sh.mask.storage_and_layout();
    let inputs = Inputs {
        q_t: (cuda_storage(&qt, "q_t")?, qt_l),
        k_t: (cuda_storage(&kt, "k_t")?, kt_l),
        q_s,
        k_s,
        mask: (cuda_storage(&mask, "mask")?, mask_l),
    };
    backward(&sh.problem, &inputs, stats, grad)
}
