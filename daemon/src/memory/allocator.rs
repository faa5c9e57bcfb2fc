//! glibc's malloc, told that this process loads and drops models for days.
//!
//! By default glibc raises its mmap threshold to the size of any large block that is freed (up to 32 MiB), so
//! after the first reload frees a model's weights, the next model's weights and ONNX Runtime's arenas are carved
//! from the heap instead of mapped on their own, and the holes they leave when their generation retires are
//! rarely returned. Measured with `configs/soak.toml`, SIGHUP every 1.5 s, 30 reloads: RSS 76 → 185 MiB with
//! glibc's defaults, 76.3 → 79.6 MiB, flat, with this module. Fixing the threshold (which also
//! switches the sliding off) keeps large blocks mapped, so dropping a generation gives them back to the kernel;
//! [`release_free_memory`] then returns the free pages of the heaps after a generation retires.
//!
//! This module holds the crate's only `unsafe`: two calls into the C library with plain integer arguments.
//! Other C libraries (musl) and platforms need nothing; the functions do nothing there.

/// Large blocks at or above this size are mapped on their own, so freeing them returns them to the kernel.
pub const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Fixes glibc's mmap and trim thresholds; call once at start-up, before models load. Returns whether the C
/// library accepted both (false on other C libraries, where nothing needs doing).
pub fn tune_for_reloads() -> bool {
    glibc::tune(MMAP_THRESHOLD_BYTES)
}

/// Returns the free pages of every malloc heap to the kernel (after a generation's models were dropped).
/// Takes a few milliseconds; not for the message path.
pub fn release_free_memory() {
    glibc::trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    // From glibc's malloc.h; the `libc` crate does not export mallopt's parameter numbers for every target.
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;

    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
        fn malloc_trim(pad: usize) -> i32;
    }

    pub fn tune(threshold: i32) -> bool {
        // SAFETY: mallopt only sets malloc's tuning parameters; it takes integers and touches no memory of ours.
        let mmap = unsafe { mallopt(M_MMAP_THRESHOLD, threshold) };
        // SAFETY: as above.
        let trim = unsafe { mallopt(M_TRIM_THRESHOLD, threshold) };
        mmap == 1 && trim == 1
    }

    pub fn trim() {
        // SAFETY: malloc_trim walks malloc's own arenas under their locks and releases free pages; it is safe to
        // call from any thread at any time.
        unsafe { malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn tune(_threshold: i32) -> bool {
        false
    }

    pub fn trim() {}
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_thresholds() {
        assert!(super::tune_for_reloads());
        super::release_free_memory();
    }
}
