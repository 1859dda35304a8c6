//! Allocator tuning for processes that train on the CPU.
//!
//! A training step allocates and frees the same few hundred large buffers every step. glibc's
//! malloc returns freed blocks above its (dynamic) mmap threshold to the kernel and trims the
//! heap top, so the next step faults every page back in and the kernel zeroes it: in the step
//! benchmark a sixth of all CPU time went to page faults (`clear_page_erms`). Keeping freed
//! blocks of up to 32 MiB (glibc's ceiling for the threshold) in the heap and never trimming it
//! makes them reusable; peak RSS grows by about 2% there. The process, not a library, decides
//! this, so the binaries call it first thing.

/// Keeps freed buffers of up to 32 MiB in the heap for reuse (glibc only; elsewhere a no-op).
/// Returns whether the allocator accepted the settings.
pub fn retain_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only changes allocator parameters; it is called with documented
        // parameters and values in range (the mmap threshold's maximum on 64-bit is 32 MiB).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
