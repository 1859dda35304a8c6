//! Creating a CUDA device without panicking.

use crate::error::{KernelError, Result};
use candle_core::Device;

/// Creates the CUDA device `ordinal`, or returns [`KernelError::CudaUnavailable`] saying why
/// not — never panics.
///
/// Without the `cuda` feature this always returns the error "built without CUDA". With it, the
/// device is created inside `catch_unwind` (cudarc panics instead of returning an error in a
/// few situations, e.g. when it cannot load a CUDA library at run time) and candle's errors
/// (no device, driver too old for the embedded PTX, out of memory) are passed on with context.
///
/// Note: candle 0.11.1 links the CUDA libraries at load time (cudarc's `dynamic-linking`), so
/// a binary built with the `cuda` feature needs `libcuda.so.1` (the driver), cuBLAS, cuRAND,
/// NVRTC and the CUDA runtime to *start*; on a machine without a driver it fails in the
/// dynamic loader, before any of this code runs. Build without the feature for such machines.
pub fn cuda_device(ordinal: usize) -> Result<Device> {
    imp::cuda_device(ordinal)
}

/// Whether this build has CUDA support (the `cuda` feature).
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;

    pub(super) fn cuda_device(ordinal: usize) -> Result<Device> {
        Err(KernelError::CudaUnavailable(format!(
            "cannot use CUDA device {ordinal}: this binary was built without CUDA support \
             (rebuild with the `cuda` feature of distillery-kernels)"
        )))
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    pub(super) fn cuda_device(ordinal: usize) -> Result<Device> {
        match catch_unwind(AssertUnwindSafe(|| Device::new_cuda(ordinal))) {
            Ok(Ok(device)) => Ok(device),
            Ok(Err(e)) => Err(KernelError::CudaUnavailable(format!(
                "cannot create CUDA device {ordinal}: {e}"
            ))),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                Err(KernelError::CudaUnavailable(format!(
                    "cannot create CUDA device {ordinal}: the CUDA libraries failed: {msg}"
                )))
            }
        }
    }
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_cuda_is_a_clear_error() {
        assert!(!cuda_compiled());
        match cuda_device(0) {
            Err(KernelError::CudaUnavailable(msg)) => assert!(msg.contains("without CUDA")),
            other => panic!("expected CudaUnavailable, got {other:?}"),
        }
    }
}
