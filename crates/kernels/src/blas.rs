//! An optional system OpenBLAS for the large f32 products of the fused ops.
//!
//! On the step benchmark's shapes (4096×384 by 384×1536 and the like) OpenBLAS's hand-written
//! Haswell kernels run 15–25% faster than the `gemm` crate, and GEMM is about two thirds of a
//! training step's CPU time. It is loaded at run time (`dlopen("libopenblas.so.0")`), not linked,
//! so that building and running need no BLAS: where the library is missing, or
//! `DISTILLERY_BLAS=off`, every product goes through the `gemm` crate as before.
//! `DISTILLERY_BLAS=<path>` loads a specific LP64 OpenBLAS.
//!
//! On x86-64 the library's kernels are chosen for the CPU's features (`OPENBLAS_CORETYPE`,
//! unless the user set it), because DYNAMIC_ARCH builds fall back to their slow generic kernels
//! on CPUs they do not recognise; a library that still reports a generic core is not used.
//!
//! OpenBLAS runs single-threaded here (`openblas_set_num_threads(1)`) and the callers split a
//! product's rows across rayon's threads: two thread pools on the same cores would fight, and
//! OpenBLAS's threads spin after each call, stealing the core from the next rayon op. With more
//! rayon threads than [`MAX_THREADS`] it is not used: OpenBLAS builds have a fixed number of
//! per-thread buffers and abort the process when concurrent callers exceed it. OpenMP builds are
//! refused too (their thread count is per calling thread, so every rayon worker would start a team).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

/// Most concurrent callers that common OpenBLAS builds (NUM_THREADS=64, two buffers each) allow.
const MAX_THREADS: usize = 32;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

pub(crate) struct OpenBlas {
    sgemm: Sgemm,
}

/// What [`gemm_backend`] reports, decided once per process.
struct Choice {
    lib: Option<OpenBlas>,
    description: String,
}

fn choice() -> &'static Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    CHOICE.get_or_init(choose)
}

/// The loaded OpenBLAS, if any.
pub(crate) fn openblas() -> Option<&'static OpenBlas> {
    choice().lib.as_ref()
}

/// Which GEMM the fused f32 ops use, in words (for logs and benchmark reports), e.g.
/// `openblas (OpenBLAS 0.3.21 … from libopenblas.so.0)` or `gemm crate (…why…)`.
pub fn gemm_backend() -> &'static str {
    &choice().description
}

fn choose() -> Choice {
    choose_from(&std::env::var("DISTILLERY_BLAS").unwrap_or_default())
}

/// The choice for a `DISTILLERY_BLAS` setting.
fn choose_from(setting: &str) -> Choice {
    let fallback = |why: String| Choice {
        lib: None,
        description: format!("gemm crate ({why})"),
    };
    let path = match setting {
        "" | "auto" | "openblas" => "libopenblas.so.0",
        "off" | "none" | "gemm" => return fallback("DISTILLERY_BLAS=off".into()),
        other => other,
    };
    let threads = rayon::current_num_threads();
    if threads > MAX_THREADS {
        return fallback(format!(
            "{threads} threads: more than OpenBLAS's per-thread buffers allow"
        ));
    }
    match load(path) {
        Ok((lib, config)) => Choice {
            lib: Some(lib),
            description: format!("openblas ({config} from {path})"),
        },
        Err(why) => fallback(format!("{path}: {why}")),
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn load(path: &str) -> Result<(OpenBlas, String), String> {
    extern "C" {
        fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void;
        fn dlerror() -> *mut c_char;
    }
    const RTLD_NOW: c_int = 2;
    let last_error = || {
        // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call.
        let e = unsafe { dlerror() };
        if e.is_null() {
            "not found".to_string()
        } else {
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        }
    };
    let c_path = CString::new(path).map_err(|_| "path contains a NUL byte".to_string())?;
    let core_type = set_core_type();
    // SAFETY: a NUL-terminated path; the handle is never closed, so symbols stay valid.
    let handle = unsafe { dlopen(c_path.as_ptr(), RTLD_NOW) };
    if handle.is_null() {
        return Err(last_error());
    }
    let sym = |name: &CStr| {
        // SAFETY: a valid handle and a NUL-terminated name.
        let p = unsafe { dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(format!("no symbol {name:?}"))
        } else {
            Ok(p)
        }
    };
    let sgemm = sym(c"cblas_sgemm")?;
    // Its presence also tells OpenBLAS from other BLAS (and ILP64 builds, whose symbols carry a
    // suffix) whose cblas_sgemm takes different integers or threads differently.
    let set_threads = sym(c"openblas_set_num_threads")?;
    // SAFETY: the symbols of an LP64 OpenBLAS have exactly these C signatures.
    let (sgemm, set_threads) = unsafe {
        (
            std::mem::transmute::<*mut c_void, Sgemm>(sgemm),
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int)>(set_threads),
        )
    };
    // An OpenMP build (Debian's libopenblas0-openmp can be the libopenblas.so.0 alternative)
    // takes its thread count per calling thread, so each rayon worker could start a full team;
    // only the sequential and pthreads builds are used. 0 = sequential, 1 = pthreads, 2 = OpenMP.
    let parallel = sym(c"openblas_get_parallel")?;
    // SAFETY: `int openblas_get_parallel(void)`.
    let parallel =
        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(parallel)() };
    if parallel == 2 {
        return Err(
            "an OpenMP build of OpenBLAS (threads would multiply with rayon's); \
                    install the pthreads build (libopenblas0-pthread)"
                .into(),
        );
    }
    // SAFETY: as above; takes effect for all later calls.
    unsafe { set_threads(1) };
    let config = match sym(c"openblas_get_config") {
        Ok(p) => {
            // SAFETY: `char *openblas_get_config(void)` returns a static NUL-terminated string.
            let f = unsafe {
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const c_char>(p)
            };
            unsafe { CStr::from_ptr(f()) }
                .to_string_lossy()
                .trim()
                .to_string()
        }
        Err(_) => "OpenBLAS".to_string(),
    };
    // DYNAMIC_ARCH builds pick their kernels from the CPU model; on CPUs they do not know
    // (new or virtualised ones, e.g. "Intel Xeon Processor") they fall back to the SSE3
    // "Prescott" kernels, 3-4x slower than the gemm crate on the step's shapes. Refuse those.
    if let Some(core) = generic_core(&config) {
        return Err(format!(
            "it chose its generic {core} kernels on this AVX2 CPU (slower than the gemm crate){}",
            match &core_type {
                Some(t) => format!(" even with OPENBLAS_CORETYPE={t}"),
                None => String::new(),
            }
        ));
    }
    Ok((OpenBlas { sgemm }, config))
}

/// Sets `OPENBLAS_CORETYPE` before the library loads, when the user has not, to the kernels
/// this CPU can run (SkylakeX with AVX-512, Haswell with AVX2 + FMA); returns the value in
/// effect. OpenBLAS reads it once, while loading.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn set_core_type() -> Option<String> {
    if let Ok(v) = std::env::var("OPENBLAS_CORETYPE") {
        return Some(v);
    }
    let core = if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        "SkylakeX"
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        "Haswell"
    } else {
        return None;
    };
    // Process-wide, set once before the first product (`choice` runs under a OnceLock); no
    // other code of ours reads the environment concurrently.
    std::env::set_var("OPENBLAS_CORETYPE", core);
    Some(core.to_string())
}

/// The generic pre-AVX2 kernel OpenBLAS reports in `config` when the CPU has AVX2 + FMA.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn generic_core(config: &str) -> Option<&'static str> {
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    [
        "Prescott",
        "Core2",
        "Penryn",
        "Dunnington",
        "Nehalem",
        "Atom",
        "Katmai",
        "Coppermine",
    ]
    .into_iter()
    .find(|c| avx2 && config.split_whitespace().any(|w| w.eq_ignore_ascii_case(c)))
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn load(_path: &str) -> Result<(OpenBlas, String), String> {
    Err("only loaded on x86-64 Linux".into())
}

/// How one operand is laid out for cblas: transposed or not, and its leading dimension.
fn operand(rows: usize, cols: usize, (rs, cs): (usize, usize)) -> Option<(c_int, c_int)> {
    let ld = |s: usize, min: usize| c_int::try_from(s).ok().filter(|_| s >= min.max(1));
    if cs == 1 {
        Some((NO_TRANS, ld(rs, cols)?))
    } else if rs == 1 {
        Some((TRANS, ld(cs, rows)?))
    } else {
        None
    }
}

/// Whether cblas can express a product of these dims and operand strides (each operand needs a
/// unit stride; dims and leading dims must fit an `int`).
pub(crate) fn expressible(
    (m, n, k): (usize, usize, usize),
    a_strides: (usize, usize),
    b_strides: (usize, usize),
) -> bool {
    [m, n, k].iter().all(|&d| c_int::try_from(d).is_ok())
        && operand(m, k, a_strides).is_some()
        && operand(k, n, b_strides).is_some()
}

impl OpenBlas {
    /// `dst (m×n, row stride ld_dst) = beta·dst + alpha·a·b`, or `false` (nothing written) when
    /// the layout is not [`expressible`].
    ///
    /// # Safety
    /// `dst` points at m rows of n floats each `ld_dst` apart; `a` and `b` are valid for
    /// (m, k) and (k, n) at the given strides.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm(
        &self,
        dst: *mut f32,
        ld_dst: usize,
        beta: f32,
        (m, n, k): (usize, usize, usize),
        a: *const f32,
        a_strides: (usize, usize),
        b: *const f32,
        b_strides: (usize, usize),
        alpha: f32,
    ) -> bool {
        let dims = (c_int::try_from(m), c_int::try_from(n), c_int::try_from(k));
        let (Ok(mi), Ok(ni), Ok(ki)) = dims else {
            return false;
        };
        let (Some((ta, lda)), Some((tb, ldb)), Ok(ldc)) = (
            operand(m, k, a_strides),
            operand(k, n, b_strides),
            c_int::try_from(ld_dst),
        ) else {
            return false;
        };
        // SAFETY: the caller's contract; dims and leading dims checked to fit cblas's ints.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR, ta, tb, mi, ni, ki, alpha, a, lda, b, ldb, beta, dst, ldc,
            )
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_choose_the_backend_and_a_missing_library_falls_back_with_the_reason() {
        let off = choose_from("off");
        assert!(off.lib.is_none());
        assert_eq!(off.description, "gemm crate (DISTILLERY_BLAS=off)");
        let missing = choose_from("/nonexistent/libopenblas.so.0");
        assert!(missing.lib.is_none());
        assert!(
            missing
                .description
                .starts_with("gemm crate (/nonexistent/libopenblas.so.0: "),
            "{}",
            missing.description
        );
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn a_library_without_openblas_symbols_is_refused_not_called() {
        let other = choose_from("libm.so.6");
        assert!(other.lib.is_none(), "{}", other.description);
        assert!(
            other.description.contains("cblas_sgemm"),
            "{}",
            other.description
        );
    }

    #[test]
    fn operands_map_to_cblas_transposes_and_leading_dims() {
        assert_eq!(operand(4, 3, (3, 1)), Some((NO_TRANS, 3)));
        // A padded row-major matrix (row stride beyond the width).
        assert_eq!(operand(4, 3, (8, 1)), Some((NO_TRANS, 8)));
        // A transposed view of a 3×4 matrix.
        assert_eq!(operand(4, 3, (1, 4)), Some((TRANS, 4)));
        // Neither stride 1, or a leading dim shorter than a row: the gemm crate takes it.
        assert_eq!(operand(4, 3, (6, 2)), None);
        assert_eq!(operand(4, 3, (2, 1)), None);
    }
}
