//! The `custos` binary: a thin layer over the library (see `cli`).

mod cli;

/// mimalloc: the backup pipeline allocates many small buffers across
/// threads, where glibc's allocator spent over a quarter of the CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (versions 2 and 3; the Rust
/// bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    prefer_base_pages();
    // Freed memory goes back to the system at once instead of after 10 ms:
    // a restore or check at 1 GiB otherwise peaks 100 to 200 MiB higher on
    // memory it no longer uses, for no measurable gain in time. An
    // operator's MIMALLOC_PURGE_DELAY still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one process-wide allocator option to a documented
        // value; mimalloc reads it at each purge, from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    cli::main()
}

/// Asks the kernel for base pages only (no transparent huge pages) for the
/// rest of the process, unless the operator set `MIMALLOC_ALLOW_THP`.
///
/// With THP enabled, a 2 MiB page is resident as soon as one byte of it is
/// touched, and a purge of part of it keeps the rest resident. At 1 GiB a
/// restore peaked about 50 MiB lower with base pages in the same wall time,
/// a check about 80 MiB lower for about 8% more time, an initial backup
/// about 70 MiB lower in the same time, and an incremental backup about
/// 100 MiB lower and 15% faster (docs/PERFORMANCE.md, "Restore and check:
/// base pages" and "Backup: batches, subject keys on two threads, base
/// pages"). Every command asks for them.
fn prefer_base_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory
    // map; it takes no pointers. A kernel without it returns an error,
    // which changes nothing and is ignored.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
