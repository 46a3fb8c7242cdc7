//! Prefetch hints: asking the CPU to start loading memory that will be
//! read soon, for data visited out of the order it lies in (a window's rows
//! by group, a restore's rows by rowid, keys in the vault's table). A hint
//! changes no result; where the CPU has none, these do nothing.

/// Starts loading the cache line at `p`.
#[inline(always)]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and loads nothing into
    // the program, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Starts loading the first two cache lines of `bytes` (most encoded rows
/// are shorter than 128 bytes).
#[inline(always)]
pub fn head(bytes: &[u8]) {
    line(bytes.as_ptr());
    if let Some(rest) = bytes.get(64..) {
        line(rest.as_ptr());
    }
}
