//! The crate's error type.

use candle_core::{DType, DeviceLocation};

/// Errors of the fused kernels and their reference implementations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A tensor argument has the wrong shape.
    #[error("`{tensor}` has shape {actual:?}, expected {expected}")]
    Shape {
        /// The argument name, e.g. `q_s`.
        tensor: &'static str,
        /// The expected shape, e.g. `[b, h, l, d_s] = [2, 12, 128, _]`.
        expected: String,
        /// The shape it has.
        actual: Vec<usize>,
    },
    /// A tensor argument has an unsupported dtype.
    #[error("`{tensor}` has dtype {actual:?}, expected {expected}")]
    DType {
        /// The argument name.
        tensor: &'static str,
        /// The accepted dtypes.
        expected: &'static str,
        /// The dtype it has.
        actual: DType,
    },
    /// A tensor argument is on another device than `q_s`.
    #[error(
        "`{tensor}` is on {actual:?}, expected {expected:?} (the device of the student inputs)"
    )]
    Device {
        /// The argument name.
        tensor: &'static str,
        /// The device of the student inputs.
        expected: DeviceLocation,
        /// The device it is on.
        actual: DeviceLocation,
    },
    /// An invalid configuration value (non-finite scale, zero relation heads, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// CUDA cannot be used: built without the `cuda` feature, no device, or the driver failed
    /// (see [`crate::cuda_device`]).
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    /// An error from candle while running an op.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
