//! Wiping secrets: zeroing memory that held keys (or rows and subject ids
//! on their way into a keyed hash) so that the compiler cannot drop the
//! zeroing as a store nobody reads.
//!
//! The `zeroize` crate makes that guarantee with a volatile store per
//! element, so a 32-byte key takes 32 one-byte stores. A backup, restore
//! or check wipes several keys and derivation inputs per shred group
//! (4.3 M groups at 1 GiB), and those stores were about 3% of a check's
//! CPU samples. Here the bytes are zeroed with ordinary (vector) stores,
//! then their address is handed to an empty `asm!` block. The compiler must
//! assume that block reads the memory behind the pointer (it is not marked
//! `nomem`), so the zeros have to be in memory before it runs, and code
//! after it (a free, say) cannot make them dead. This is the barrier C
//! libraries use after `memset` for the same purpose.
//!
//! On architectures other than x86-64 and AArch64 the `zeroize` crate is
//! used instead.

/// Zeroes `bytes` (see the module's comment: never elided).
#[inline]
pub fn bytes(bytes: &mut [u8]) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        bytes.fill(0);
        // SAFETY: the block is empty: it reads and writes nothing, uses no
        // stack and keeps the flags. Its input is the address of the bytes
        // just zeroed, which the compiler must then treat as read here.
        unsafe {
            core::arch::asm!(
                "/* {0} */",
                in(reg) bytes.as_ptr(),
                options(nostack, preserves_flags, readonly)
            )
        };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    zeroize::Zeroize::zeroize(bytes);
}

/// Zeroes every key (or other fixed-size secret) of `keys`.
#[inline]
pub fn keys<const N: usize>(keys: &mut [[u8; N]]) {
    bytes(keys.as_flattened_mut());
}

/// Zeroes a vector's whole allocation, its spare capacity too, and leaves
/// it empty (as `zeroize` does for a `Vec<u8>`).
pub fn vec(v: &mut Vec<u8>) {
    let capacity = v.capacity();
    v.resize(capacity, 0);
    bytes(v);
    v.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_zeroed() {
        for len in [0, 1, 7, 31, 32, 33, 64, 255, 4096 + 3] {
            let mut b: Vec<u8> = (1..=len).map(|i| (i % 251 + 1) as u8).collect();
            bytes(&mut b[..]);
            assert!(b.iter().all(|&x| x == 0), "{len} bytes");
        }
        let mut k = [[0xa5u8; 32]; 5];
        keys(&mut k);
        assert_eq!(k, [[0u8; 32]; 5]);
        // Only the bytes given: a neighbour is left as it was.
        let mut b = [9u8; 16];
        bytes(&mut b[4..12]);
        assert_eq!(b, [9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9]);
    }

    #[test]
    fn a_vector_is_zeroed_to_its_capacity_and_emptied() {
        let mut v = Vec::with_capacity(100);
        v.extend_from_slice(&[7u8; 60]);
        // Bytes once written beyond the length (a truncated secret).
        v.truncate(20);
        let capacity = v.capacity();
        vec(&mut v);
        assert!(v.is_empty());
        assert_eq!(v.capacity(), capacity, "no reallocation");
        // SAFETY: every byte of the allocation was written (zeroed) by
        // `vec`, and u8 has no invalid values.
        let all = unsafe { std::slice::from_raw_parts(v.as_ptr(), capacity) };
        assert!(all.iter().all(|&x| x == 0));
    }
}
