//! BLAKE3 over many short messages at once.
//!
//! custos hashes millions of short messages per run, each under its own
//! key: five key derivations and a nonce per shred group, a keyed chunk id
//! over each group's plaintext, a checksum term per row. One at a time, a
//! message of a block or a few costs about 90 ns a block (BLAKE3's
//! one-block compression, which cannot use the vector width). Here up to
//! 16 (AVX-512) or 8 (AVX2) messages are compressed side by side, one per
//! SIMD lane, each with its own key, length and flags: the same outputs as
//! `blake3::keyed_hash` and `blake3::derive_key`, bit for bit (the tests
//! compare them), at a fraction of the cost a message.
//!
//! Only messages of at most one BLAKE3 chunk (1024 bytes) take the lanes;
//! a longer one is hashed by the `blake3` crate, which already spreads
//! its chunks over the vector width. Without AVX2 every message is.
//!
//! The compression function is that of the BLAKE3 specification (section
//! 2.2): the IV, the message schedule and the flag values below are its
//! constants.
//!
//! [`hchacha_many`] does the same for HChaCha20, the first half of
//! XChaCha20 (draft-irtf-cfrg-xchacha, section 2.2): every chunk sealed
//! or opened needs one, under its own group's key; one at a time it cost
//! about 110 ns, a fifth of sealing a 256-byte chunk, against about 18 ns
//! in 16 lanes.

/// BLAKE3's IV (the SHA-256 IV).
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

/// The message word order of each of the seven rounds (the specification's
/// permutation applied round after round).
const SCHEDULE: [[usize; 16]; 7] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8],
    [3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1],
    [10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6],
    [12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4],
    [9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7],
    [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13],
];

const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const ROOT: u32 = 8;
/// The largest message the lanes take: one BLAKE3 chunk.
const CHUNK_LEN: usize = 1024;

/// What the 32-byte key of a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A key: the output is `blake3::keyed_hash(key, message)`.
    Keyed,
    /// A derivation's context key (`blake3::hazmat::hash_derive_key_context`):
    /// the output is `blake3::derive_key(context, message)`.
    DeriveKey,
}

impl Mode {
    fn flags(self) -> u32 {
        match self {
            Mode::Keyed => 16,
            Mode::DeriveKey => 64,
        }
    }

    /// One message through the `blake3` crate.
    fn one(self, key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
        use blake3::hazmat::HasherExt;
        match self {
            Mode::Keyed => *blake3::keyed_hash(key, msg).as_bytes(),
            Mode::DeriveKey => *blake3::Hasher::new_from_context_key(key)
                .update(msg)
                .finalize()
                .as_bytes(),
        }
    }
}

/// Which lanes this machine has, found once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

fn kernel() -> Kernel {
    static FOUND: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    })
}

/// How many messages a caller gathers for one [`hash_many`] (groups whose
/// keys it derives, rows whose checksum terms it sums): many lanefuls, and
/// still little memory (the keys, inputs and outputs of 256 messages).
pub const BATCH: usize = 256;

/// Hashes `jobs[i].1` under `jobs[i].0` (as `mode` says) into `out[i]`.
/// Messages of similar length should come together: the lanes of a batch
/// run as many blocks as its longest message (the messages are taken in
/// order of their block count when their counts differ).
pub fn hash_many(mode: Mode, jobs: &[(&[u8; 32], &[u8])], out: &mut [[u8; 32]]) {
    hash_many_with(kernel(), mode, jobs, out);
}

fn hash_many_with(k: Kernel, mode: Mode, jobs: &[(&[u8; 32], &[u8])], out: &mut [[u8; 32]]) {
    assert_eq!(jobs.len(), out.len(), "one output a message");
    let lanes = match k {
        Kernel::Avx512 => 16,
        Kernel::Avx2 => 8,
        Kernel::Portable => {
            for (o, (key, msg)) in out.iter_mut().zip(jobs) {
                *o = mode.one(key, msg);
            }
            return;
        }
    };
    let blocks = |msg: &[u8]| msg.len().div_ceil(64).max(1);
    let mut batch: Vec<usize> = Vec::with_capacity(lanes);
    let (mut b16, mut b8) = (Block::<16>::new(), Block::<8>::new());
    let mut run = |batch: &mut Vec<usize>, out: &mut [[u8; 32]]| {
        let mut lane_out = [[0u8; 32]; 16];
        let mut lane_jobs: [(&[u8; 32], &[u8]); 16] = [(&[0; 32], &[]); 16];
        for (l, &i) in batch.iter().enumerate() {
            lane_jobs[l] = jobs[i];
        }
        let n = batch.len();
        // SAFETY: the kernel was chosen by the CPU's features (`kernel`),
        // or by a test that checked them.
        unsafe {
            match k {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => {
                    x86::hash16(mode.flags(), &lane_jobs[..n], &mut b16, &mut lane_out)
                }
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => x86::hash8(mode.flags(), &lane_jobs[..n], &mut b8, &mut lane_out),
                _ => unreachable!("lanes only where the CPU has them"),
            }
        }
        for (l, &i) in batch.iter().enumerate() {
            out[i] = lane_out[l];
        }
        // SAFETY: a valid, exclusive reference.
        unsafe { std::ptr::write_volatile(&mut lane_out, [[0; 32]; 16]) };
        batch.clear();
    };
    // By block count, so that a batch's lanes finish together (messages of
    // one length, as derivations and nonces are, stay in order).
    let mut order: Vec<(u8, u32)> = Vec::with_capacity(jobs.len());
    for (i, (key, msg)) in jobs.iter().enumerate() {
        if msg.len() > CHUNK_LEN {
            out[i] = mode.one(key, msg);
        } else {
            order.push((blocks(msg) as u8, i as u32));
        }
    }
    order.sort_unstable();
    for (_, i) in order {
        batch.push(i as usize);
        if batch.len() == lanes {
            run(&mut batch, out);
        }
    }
    if !batch.is_empty() {
        run(&mut batch, out);
    }
}

/// HChaCha20's constants ("expand 32-byte k").
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646E, 0x7962_2D32, 0x6B20_6574];

/// `out[i]` = HChaCha20(`jobs[i].0`, `jobs[i].1`): the XChaCha20 subkey of
/// a key and the first 16 bytes of a nonce, the same bytes as
/// `chacha20::hchacha::<U10>`, up to 16 at a time.
pub fn hchacha_many(jobs: &[(&[u8; 32], &[u8; 16])], out: &mut [[u8; 32]]) {
    hchacha_many_with(kernel(), jobs, out);
}

fn hchacha_many_with(k: Kernel, jobs: &[(&[u8; 32], &[u8; 16])], out: &mut [[u8; 32]]) {
    assert_eq!(jobs.len(), out.len(), "one output a key");
    let lanes = match k {
        Kernel::Avx512 => 16,
        Kernel::Avx2 => 8,
        Kernel::Portable => {
            for (o, (key, input)) in out.iter_mut().zip(jobs) {
                *o = hchacha_one(key, input);
            }
            return;
        }
    };
    let mut lane_out = [[0u8; 32]; 16];
    for (jobs, out) in jobs.chunks(lanes).zip(out.chunks_mut(lanes)) {
        let n = jobs.len();
        // SAFETY: the kernel was chosen by the CPU's features (`kernel`),
        // or by a test that checked them.
        unsafe {
            match k {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => x86::hchacha16(jobs, &mut lane_out),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => x86::hchacha8(jobs, &mut lane_out),
                _ => unreachable!("lanes only where the CPU has them"),
            }
        }
        out.copy_from_slice(&lane_out[..n]);
    }
    // SAFETY: a valid, exclusive reference.
    unsafe { std::ptr::write_volatile(&mut lane_out, [[0; 32]; 16]) };
}

/// HChaCha20 of one key and input, one word at a time.
pub fn hchacha_one(key: &[u8; 32], input: &[u8; 16]) -> [u8; 32] {
    let mut sub = chacha20::hchacha::<chacha20::cipher::consts::U10>(key.into(), input.into());
    let mut out = [0u8; 32];
    out.copy_from_slice(&sub);
    super::wipe::bytes(sub.as_mut_slice());
    out
}

/// The words of up to `L` HChaCha20 inputs (state words 4 to 15: the
/// key's 8, then the input's 4), one row of 12 words a lane.
fn hchacha_words<const L: usize>(jobs: &[(&[u8; 32], &[u8; 16])]) -> [[u32; L]; 12] {
    let mut w = [[0u32; L]; 12];
    let le = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    for (l, (key, input)) in jobs.iter().enumerate() {
        for i in 0..8 {
            w[i][l] = le(&key[4 * i..4 * i + 4]);
        }
        for i in 0..4 {
            w[8 + i][l] = le(&input[4 * i..4 * i + 4]);
        }
    }
    w
}

/// The lanes' inputs for one block: each lane's 64 bytes (zero-padded),
/// length, flags, and whether the lane takes part.
struct Block<const L: usize> {
    bytes: [[u8; 64]; L],
    len: [u32; L],
    flags: [u32; L],
    active: [bool; L],
}

impl<const L: usize> Block<L> {
    fn new() -> Self {
        Block {
            bytes: [[0; 64]; L],
            len: [0; L],
            flags: [0; L],
            active: [false; L],
        }
    }

    /// Block `j` of each message (messages of at most `CHUNK_LEN` bytes).
    fn fill(&mut self, j: usize, base: u32, jobs: &[(&[u8; 32], &[u8])]) {
        for (l, (_, msg)) in jobs.iter().enumerate() {
            let count = msg.len().div_ceil(64).max(1);
            self.active[l] = j < count;
            if j >= count {
                continue;
            }
            let s = j * 64;
            let e = (s + 64).min(msg.len());
            // Words are little-endian, as the vector loads read them.
            let row = &mut self.bytes[l];
            if e - s == 64 {
                row.copy_from_slice(&msg[s..e]);
            } else {
                *row = [0; 64];
                row[..e - s].copy_from_slice(&msg[s..e]);
            }
            self.len[l] = (e - s) as u32;
            self.flags[l] = base
                | if j == 0 { CHUNK_START } else { 0 }
                | if j + 1 == count { CHUNK_END | ROOT } else { 0 };
        }
    }
}

impl<const L: usize> Drop for Block<L> {
    fn drop(&mut self) {
        // The blocks held message bytes (key material, plaintext).
        for row in &mut self.bytes {
            // SAFETY: a valid, exclusive reference.
            unsafe { std::ptr::write_volatile(row, [0; 64]) };
        }
    }
}

/// The most blocks any of these messages has (an empty message is one).
fn most_blocks(jobs: &[(&[u8; 32], &[u8])]) -> usize {
    jobs.iter()
        .map(|j| j.1.len().div_ceil(64).max(1))
        .max()
        .unwrap_or(0)
}

/// Each lane's output bytes from the chaining values' words (`words[w][l]`
/// is word `w` of lane `l`), for the first `n` lanes; `words` is wiped.
fn write_out<const L: usize>(words: &mut [[u32; L]; 8], n: usize, out: &mut [[u8; 32]; 16]) {
    for (l, o) in out.iter_mut().enumerate().take(n) {
        for (w, word) in words.iter().enumerate() {
            o[4 * w..4 * w + 4].copy_from_slice(&word[l].to_le_bytes());
        }
    }
    // SAFETY: a valid, exclusive reference.
    unsafe { std::ptr::write_volatile(words, [[0; L]; 8]) };
}

/// The keys of up to `L` messages, one row of 8 words a lane.
fn key_words<const L: usize>(jobs: &[(&[u8; 32], &[u8])]) -> [[u32; 8]; L] {
    let mut k = [[0u32; 8]; L];
    for (l, (key, _)) in jobs.iter().enumerate() {
        for (w, word) in k[l].iter_mut().enumerate() {
            *word = u32::from_le_bytes(key[4 * w..4 * w + 4].try_into().expect("4 bytes"));
        }
    }
    k
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{hchacha_words, key_words, most_blocks, write_out, Block, IV, SCHEDULE, SIGMA};
    use std::arch::x86_64::*;

    /// One G mixing step over four state vectors and two message vectors.
    macro_rules! g {
        ($add:ident, $xor:ident, $r16:expr, $r12:expr, $r8:expr, $r7:expr,
         $v:ident, $a:expr, $b:expr, $c:expr, $d:expr, $x:expr, $y:expr) => {
            $v[$a] = $add($add($v[$a], $v[$b]), $x);
            $v[$d] = $r16($xor($v[$d], $v[$a]));
            $v[$c] = $add($v[$c], $v[$d]);
            $v[$b] = $r12($xor($v[$b], $v[$c]));
            $v[$a] = $add($add($v[$a], $v[$b]), $y);
            $v[$d] = $r8($xor($v[$d], $v[$a]));
            $v[$c] = $add($v[$c], $v[$d]);
            $v[$b] = $r7($xor($v[$b], $v[$c]));
        };
    }

    /// The seven rounds of the compression function, state `v`, message `m`.
    macro_rules! rounds {
        ($add:ident, $xor:ident, $r16:expr, $r12:expr, $r8:expr, $r7:expr, $v:ident, $m:ident) => {
            for s in &SCHEDULE {
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 0, 4, 8, 12, $m[s[0]], $m[s[1]]);
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 1, 5, 9, 13, $m[s[2]], $m[s[3]]);
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 2, 6, 10, 14, $m[s[4]], $m[s[5]]);
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 3, 7, 11, 15, $m[s[6]], $m[s[7]]);
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 0, 5, 10, 15, $m[s[8]], $m[s[9]]);
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 1, 6, 11, 12, $m[s[10]], $m[s[11]]);
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 2, 7, 8, 13, $m[s[12]], $m[s[13]]);
                g!($add, $xor, $r16, $r12, $r8, $r7, $v, 3, 4, 9, 14, $m[s[14]], $m[s[15]]);
            }
        };
    }

    /// Writes zeros over vectors that held message or key words.
    ///
    /// Only arrays that live in memory are wiped: the message words (read
    /// by index from the schedule), the keys' and the outputs' words. The
    /// compression state and the rows being transposed live in registers;
    /// wiping them took their address, so the compiler kept them in memory
    /// and stored every step of the rounds there (in one build `hash16`
    /// took half as long again for a one-block message), and the registers
    /// themselves are overwritten by the next use anyway.
    fn wipe<T: Copy>(v: &mut [T]) {
        for x in v.iter_mut() {
            // SAFETY: `x` is a valid, aligned, exclusive reference; an
            // all-zero bit pattern is a valid SIMD vector.
            unsafe { std::ptr::write_volatile(x, std::mem::zeroed()) };
        }
    }

    /// Up to 16 messages (each at most 1024 bytes) in the 16 lanes of
    /// AVX-512 vectors; `out[l]` gets message `l`'s hash.
    #[target_feature(enable = "avx512f")]
    pub(super) fn hash16(
        base: u32,
        jobs: &[(&[u8; 32], &[u8])],
        block: &mut Block<16>,
        out: &mut [[u8; 32]; 16],
    ) {
        let n = jobs.len();
        debug_assert!(n <= 16);
        let count = most_blocks(jobs);
        let mut keys = key_words::<16>(jobs);
        // Word `w` of every lane's key, gathered (lane `l` reads
        // `keys[l][w]`, 8 words further on than lane `l - 1`). Written out
        // so: built word by word, the compiler chose gathers in one build
        // and some 200 scalar moves and inserts in another, a quarter more
        // time in this function for one-block messages.
        let lane_words = _mm512_setr_epi32(
            0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120,
        );
        let mut cv = [_mm512_setzero_si512(); 8];
        for (w, c) in cv.iter_mut().enumerate() {
            // SAFETY: each lane reads one word of `keys` (at most word
            // 15 * 8 + 7 of its 128).
            *c = unsafe {
                _mm512_i32gather_epi32::<4>(lane_words, keys.as_ptr().cast::<u32>().add(w).cast())
            };
        }
        wipe(&mut keys);
        let mut m = [_mm512_setzero_si512(); 16];
        for j in 0..count {
            block.fill(j, base, jobs);
            let mut rows = [_mm512_setzero_si512(); 16];
            for (r, row) in rows.iter_mut().enumerate() {
                // SAFETY: 64 readable bytes.
                *row = unsafe { _mm512_loadu_si512(block.bytes[r].as_ptr().cast()) };
            }
            transpose16(&rows, &mut m);
            // SAFETY: 64 readable bytes each.
            let (len, flags) = unsafe {
                (
                    _mm512_loadu_si512(block.len.as_ptr().cast()),
                    _mm512_loadu_si512(block.flags.as_ptr().cast()),
                )
            };
            let active = (0..n).fold(0u16, |k, l| k | (u16::from(block.active[l]) << l));
            let mut v = [
                cv[0],
                cv[1],
                cv[2],
                cv[3],
                cv[4],
                cv[5],
                cv[6],
                cv[7],
                _mm512_set1_epi32(IV[0] as i32),
                _mm512_set1_epi32(IV[1] as i32),
                _mm512_set1_epi32(IV[2] as i32),
                _mm512_set1_epi32(IV[3] as i32),
                _mm512_setzero_si512(),
                _mm512_setzero_si512(),
                len,
                flags,
            ];
            rounds!(
                _mm512_add_epi32,
                _mm512_xor_si512,
                _mm512_ror_epi32::<16>,
                _mm512_ror_epi32::<12>,
                _mm512_ror_epi32::<8>,
                _mm512_ror_epi32::<7>,
                v,
                m
            );
            for w in 0..8 {
                let next = _mm512_xor_si512(v[w], v[w + 8]);
                cv[w] = _mm512_mask_blend_epi32(active, cv[w], next);
            }
        }
        wipe(&mut m);
        let mut words = [[0u32; 16]; 8];
        for (w, c) in cv.iter().enumerate() {
            // SAFETY: 64 writable bytes.
            unsafe { _mm512_storeu_si512(words[w].as_mut_ptr().cast(), *c) };
        }
        wipe(&mut cv);
        write_out(&mut words, n, out);
    }

    /// One ChaCha quarter round over four state vectors.
    macro_rules! qr {
        ($add:ident, $xor:ident, $l16:expr, $l12:expr, $l8:expr, $l7:expr,
         $v:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {
            $v[$a] = $add($v[$a], $v[$b]);
            $v[$d] = $l16($xor($v[$d], $v[$a]));
            $v[$c] = $add($v[$c], $v[$d]);
            $v[$b] = $l12($xor($v[$b], $v[$c]));
            $v[$a] = $add($v[$a], $v[$b]);
            $v[$d] = $l8($xor($v[$d], $v[$a]));
            $v[$c] = $add($v[$c], $v[$d]);
            $v[$b] = $l7($xor($v[$b], $v[$c]));
        };
    }

    /// HChaCha20's ten double rounds (columns, then diagonals).
    macro_rules! hchacha_rounds {
        ($add:ident, $xor:ident, $l16:expr, $l12:expr, $l8:expr, $l7:expr, $v:ident) => {
            for _ in 0..10 {
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 0, 4, 8, 12);
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 1, 5, 9, 13);
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 2, 6, 10, 14);
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 3, 7, 11, 15);
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 0, 5, 10, 15);
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 1, 6, 11, 12);
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 2, 7, 8, 13);
                qr!($add, $xor, $l16, $l12, $l8, $l7, $v, 3, 4, 9, 14);
            }
        };
    }

    /// HChaCha20 of up to 16 keys and inputs in the lanes of AVX-512
    /// vectors; `out[l]` gets lane `l`'s subkey.
    #[target_feature(enable = "avx512f")]
    pub(super) fn hchacha16(jobs: &[(&[u8; 32], &[u8; 16])], out: &mut [[u8; 32]; 16]) {
        let n = jobs.len();
        debug_assert!(n <= 16);
        let mut words = hchacha_words::<16>(jobs);
        let mut v = [_mm512_setzero_si512(); 16];
        for (i, c) in SIGMA.iter().enumerate() {
            v[i] = _mm512_set1_epi32(*c as i32);
        }
        for (i, w) in words.iter().enumerate() {
            // SAFETY: 64 readable bytes.
            v[4 + i] = unsafe { _mm512_loadu_si512(w.as_ptr().cast()) };
        }
        wipe(&mut words);
        hchacha_rounds!(
            _mm512_add_epi32,
            _mm512_xor_si512,
            _mm512_rol_epi32::<16>,
            _mm512_rol_epi32::<12>,
            _mm512_rol_epi32::<8>,
            _mm512_rol_epi32::<7>,
            v
        );
        // The subkey is state words 0 to 3, then 12 to 15.
        let mut sub = [[0u32; 16]; 8];
        for (w, i) in [0, 1, 2, 3, 12, 13, 14, 15].into_iter().enumerate() {
            // SAFETY: 64 writable bytes.
            unsafe { _mm512_storeu_si512(sub[w].as_mut_ptr().cast(), v[i]) };
        }
        write_out(&mut sub, n, out);
    }

    #[target_feature(enable = "avx2")]
    fn rol12(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi32::<12>(x), _mm256_srli_epi32::<20>(x))
    }

    #[target_feature(enable = "avx2")]
    fn rol8(x: __m256i) -> __m256i {
        let k = _mm256_setr_epi8(
            3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9,
            10, 15, 12, 13, 14,
        );
        _mm256_shuffle_epi8(x, k)
    }

    #[target_feature(enable = "avx2")]
    fn rol7(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi32::<7>(x), _mm256_srli_epi32::<25>(x))
    }

    /// As [`hchacha16`], eight keys in the lanes of AVX2 vectors (a
    /// rotation by 16 is the same either way).
    #[target_feature(enable = "avx2")]
    pub(super) fn hchacha8(jobs: &[(&[u8; 32], &[u8; 16])], out: &mut [[u8; 32]; 16]) {
        let n = jobs.len();
        debug_assert!(n <= 8);
        let mut words = hchacha_words::<8>(jobs);
        let mut v = [_mm256_setzero_si256(); 16];
        for (i, c) in SIGMA.iter().enumerate() {
            v[i] = _mm256_set1_epi32(*c as i32);
        }
        for (i, w) in words.iter().enumerate() {
            // SAFETY: 32 readable bytes.
            v[4 + i] = unsafe { _mm256_loadu_si256(w.as_ptr().cast()) };
        }
        wipe(&mut words);
        hchacha_rounds!(
            _mm256_add_epi32,
            _mm256_xor_si256,
            rot16,
            rol12,
            rol8,
            rol7,
            v
        );
        let mut sub = [[0u32; 8]; 8];
        for (w, i) in [0, 1, 2, 3, 12, 13, 14, 15].into_iter().enumerate() {
            // SAFETY: 32 writable bytes.
            unsafe { _mm256_storeu_si256(sub[w].as_mut_ptr().cast(), v[i]) };
        }
        write_out(&mut sub, n, out);
    }

    /// `m[w]` = word `w` of every row (a 16 by 16 transpose of 32-bit words).
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &[__m512i; 16], m: &mut [__m512i; 16]) {
        // Pairs of rows interleaved by words, then by pairs of words: x[4g +
        // c] holds, in its 128-bit lane k, word 4k + c of rows 4g..4g + 4.
        let mut x = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
            let ab_lo = _mm512_unpacklo_epi32(a, b);
            let ab_hi = _mm512_unpackhi_epi32(a, b);
            let cd_lo = _mm512_unpacklo_epi32(c, d);
            let cd_hi = _mm512_unpackhi_epi32(c, d);
            x[4 * g] = _mm512_unpacklo_epi64(ab_lo, cd_lo);
            x[4 * g + 1] = _mm512_unpackhi_epi64(ab_lo, cd_lo);
            x[4 * g + 2] = _mm512_unpacklo_epi64(ab_hi, cd_hi);
            x[4 * g + 3] = _mm512_unpackhi_epi64(ab_hi, cd_hi);
        }
        // Then the 128-bit lanes gathered: word 4k + c of all 16 rows.
        for c in 0..4 {
            let lo01 = _mm512_shuffle_i32x4::<0b01_00_01_00>(x[c], x[4 + c]);
            let hi01 = _mm512_shuffle_i32x4::<0b11_10_11_10>(x[c], x[4 + c]);
            let lo23 = _mm512_shuffle_i32x4::<0b01_00_01_00>(x[8 + c], x[12 + c]);
            let hi23 = _mm512_shuffle_i32x4::<0b11_10_11_10>(x[8 + c], x[12 + c]);
            m[c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(lo01, lo23);
            m[4 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(lo01, lo23);
            m[8 + c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(hi01, hi23);
            m[12 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(hi01, hi23);
        }
    }

    #[target_feature(enable = "avx2")]
    fn rot16(x: __m256i) -> __m256i {
        let k = _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11,
            8, 9, 14, 15, 12, 13,
        );
        _mm256_shuffle_epi8(x, k)
    }

    #[target_feature(enable = "avx2")]
    fn rot12(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<12>(x), _mm256_slli_epi32::<20>(x))
    }

    #[target_feature(enable = "avx2")]
    fn rot8(x: __m256i) -> __m256i {
        let k = _mm256_setr_epi8(
            1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9, 10,
            11, 8, 13, 14, 15, 12,
        );
        _mm256_shuffle_epi8(x, k)
    }

    #[target_feature(enable = "avx2")]
    fn rot7(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<7>(x), _mm256_slli_epi32::<25>(x))
    }

    /// As [`hash16`], eight messages in the lanes of AVX2 vectors.
    #[target_feature(enable = "avx2")]
    pub(super) fn hash8(
        base: u32,
        jobs: &[(&[u8; 32], &[u8])],
        block: &mut Block<8>,
        out: &mut [[u8; 32]; 16],
    ) {
        let n = jobs.len();
        debug_assert!(n <= 8);
        let count = most_blocks(jobs);
        let mut keys = key_words::<8>(jobs);
        // Each lane's key as a row, transposed into words (as `hash16`
        // gathers them, and for the same reason).
        let mut rows = [_mm256_setzero_si256(); 8];
        for (r, row) in rows.iter_mut().enumerate() {
            // SAFETY: 32 readable bytes.
            *row = unsafe { _mm256_loadu_si256(keys[r].as_ptr().cast()) };
        }
        let mut cv = [_mm256_setzero_si256(); 8];
        transpose8(&rows, &mut cv);
        wipe(&mut keys);
        let mut m = [_mm256_setzero_si256(); 16];
        for j in 0..count {
            block.fill(j, base, jobs);
            for half in 0..2 {
                let mut rows = [_mm256_setzero_si256(); 8];
                for (r, row) in rows.iter_mut().enumerate() {
                    // SAFETY: 32 readable bytes (words 8 * half.. of a row).
                    *row =
                        unsafe { _mm256_loadu_si256(block.bytes[r][32 * half..].as_ptr().cast()) };
                }
                let cols: &mut [__m256i; 8] = (&mut m[8 * half..8 * half + 8])
                    .try_into()
                    .expect("8 vectors");
                transpose8(&rows, cols);
            }
            // SAFETY: 32 readable bytes each.
            let (len, flags) = unsafe {
                (
                    _mm256_loadu_si256(block.len.as_ptr().cast()),
                    _mm256_loadu_si256(block.flags.as_ptr().cast()),
                )
            };
            let act: [i32; 8] = std::array::from_fn(|l| -i32::from(l < n && block.active[l]));
            // SAFETY: 32 readable bytes.
            let active = unsafe { _mm256_loadu_si256(act.as_ptr().cast()) };
            let mut v = [
                cv[0],
                cv[1],
                cv[2],
                cv[3],
                cv[4],
                cv[5],
                cv[6],
                cv[7],
                _mm256_set1_epi32(IV[0] as i32),
                _mm256_set1_epi32(IV[1] as i32),
                _mm256_set1_epi32(IV[2] as i32),
                _mm256_set1_epi32(IV[3] as i32),
                _mm256_setzero_si256(),
                _mm256_setzero_si256(),
                len,
                flags,
            ];
            rounds!(
                _mm256_add_epi32,
                _mm256_xor_si256,
                rot16,
                rot12,
                rot8,
                rot7,
                v,
                m
            );
            for w in 0..8 {
                let next = _mm256_xor_si256(v[w], v[w + 8]);
                cv[w] = _mm256_blendv_epi8(cv[w], next, active);
            }
        }
        wipe(&mut m);
        let mut words = [[0u32; 8]; 8];
        for (w, c) in cv.iter().enumerate() {
            // SAFETY: 32 writable bytes.
            unsafe { _mm256_storeu_si256(words[w].as_mut_ptr().cast(), *c) };
        }
        wipe(&mut cv);
        write_out(&mut words, n, out);
    }

    /// `m[w]` = word `w` of every row (an 8 by 8 transpose of 32-bit words).
    #[target_feature(enable = "avx2")]
    fn transpose8(r: &[__m256i; 8], m: &mut [__m256i; 8]) {
        // x[4h + c] holds, in its 128-bit lane k, word 4k + c of rows
        // 4h..4h + 4.
        let mut x = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let (a, b, c, d) = (r[4 * h], r[4 * h + 1], r[4 * h + 2], r[4 * h + 3]);
            let ab_lo = _mm256_unpacklo_epi32(a, b);
            let ab_hi = _mm256_unpackhi_epi32(a, b);
            let cd_lo = _mm256_unpacklo_epi32(c, d);
            let cd_hi = _mm256_unpackhi_epi32(c, d);
            x[4 * h] = _mm256_unpacklo_epi64(ab_lo, cd_lo);
            x[4 * h + 1] = _mm256_unpackhi_epi64(ab_lo, cd_lo);
            x[4 * h + 2] = _mm256_unpacklo_epi64(ab_hi, cd_hi);
            x[4 * h + 3] = _mm256_unpackhi_epi64(ab_hi, cd_hi);
        }
        for c in 0..4 {
            m[c] = _mm256_permute2x128_si256::<0x20>(x[c], x[4 + c]);
            m[4 + c] = _mm256_permute2x128_si256::<0x31>(x[c], x[4 + c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    /// The kernels this machine can run (the portable one always).
    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                k.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                k.push(Kernel::Avx512);
            }
        }
        k
    }

    fn check(k: Kernel, mode: Mode, keys: &[[u8; 32]], msgs: &[Vec<u8>]) {
        let jobs: Vec<(&[u8; 32], &[u8])> =
            keys.iter().zip(msgs).map(|(k, m)| (k, &m[..])).collect();
        let mut out = vec![[0u8; 32]; jobs.len()];
        hash_many_with(k, mode, &jobs, &mut out);
        for (i, (key, msg)) in jobs.iter().enumerate() {
            let want = match mode {
                Mode::Keyed => *blake3::keyed_hash(key, msg).as_bytes(),
                Mode::DeriveKey => *blake3::Hasher::new_derive_key(CONTEXT)
                    .update(msg)
                    .finalize()
                    .as_bytes(),
            };
            assert_eq!(
                out[i],
                want,
                "{k:?} {mode:?}: message {i} of {} bytes",
                msg.len()
            );
        }
    }

    const CONTEXT: &str = "custos test lanes v1";

    #[test]
    fn every_kernel_gives_blake3s_output_for_every_length_up_to_past_a_chunk() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ctx = blake3::hazmat::hash_derive_key_context(CONTEXT);
        for k in kernels() {
            // Every length from empty to two chunks, one message each, in
            // batches of mixed lengths and in batches of one length.
            let msgs: Vec<Vec<u8>> = (0..=2 * CHUNK_LEN + 3)
                .map(|len| {
                    let mut m = vec![0u8; len];
                    rng.fill_bytes(&mut m);
                    m
                })
                .collect();
            let keys: Vec<[u8; 32]> = msgs.iter().map(|_| rng.gen()).collect();
            check(k, Mode::Keyed, &keys, &msgs);
            let ctxs = vec![ctx; msgs.len()];
            check(k, Mode::DeriveKey, &ctxs, &msgs);
            for len in [0usize, 1, 40, 63, 64, 65, 100, 128, 1000, 1023, 1024, 1025] {
                for n in [1usize, 7, 8, 9, 15, 16, 17, 33] {
                    let msgs: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            let mut m = vec![0u8; len];
                            rng.fill_bytes(&mut m);
                            m
                        })
                        .collect();
                    let keys: Vec<[u8; 32]> = msgs.iter().map(|_| rng.gen()).collect();
                    check(k, Mode::Keyed, &keys, &msgs);
                }
            }
        }
    }

    #[test]
    fn every_kernel_gives_hchacha20s_output_for_every_batch_size() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for k in kernels() {
            for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 100] {
                let keys: Vec<[u8; 32]> = (0..n).map(|_| rng.gen()).collect();
                let inputs: Vec<[u8; 16]> = (0..n).map(|_| rng.gen()).collect();
                let jobs: Vec<(&[u8; 32], &[u8; 16])> = keys.iter().zip(&inputs).collect();
                let mut out = vec![[0u8; 32]; n];
                hchacha_many_with(k, &jobs, &mut out);
                for (i, (key, input)) in jobs.iter().enumerate() {
                    let want = chacha20::hchacha::<chacha20::cipher::consts::U10>(
                        (*key).into(),
                        (*input).into(),
                    );
                    assert_eq!(&out[i][..], &want[..], "{k:?}: key {i} of {n}");
                }
            }
        }
    }

    #[test]
    fn hchacha20_gives_the_xchacha_drafts_test_vector() {
        // draft-irtf-cfrg-xchacha-03, section 2.2.1.
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let input: [u8; 16] = [
            0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x4a, 0x00, 0x00, 0x00, 0x00, 0x31, 0x41,
            0x59, 0x27,
        ];
        let want = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc";
        let hex = |b: &[u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&hchacha_one(&key, &input)), want);
        for k in kernels() {
            let mut out = [[0u8; 32]];
            hchacha_many_with(k, &[(&key, &input)], &mut out);
            assert_eq!(hex(&out[0]), want, "{k:?}");
        }
    }

    #[test]
    fn the_machines_kernel_is_the_widest_it_has_and_gives_blake3s_output() {
        assert_eq!(kernel(), *kernels().last().expect("portable at least"));
        // Through the entry point the rest of custos calls: mixed lengths,
        // long and empty messages in one batch, and an empty batch.
        let msgs: Vec<Vec<u8>> = [0usize, 40, 3000, 64, 1, 1024, 250, 65]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 31 % 251) as u8).collect())
            .collect();
        let keys: Vec<[u8; 32]> = (0..msgs.len() as u8).map(|i| [i; 32]).collect();
        let jobs: Vec<(&[u8; 32], &[u8])> =
            keys.iter().zip(&msgs).map(|(k, m)| (k, &m[..])).collect();
        let mut out = vec![[0u8; 32]; jobs.len()];
        hash_many(Mode::Keyed, &jobs, &mut out);
        for ((key, msg), got) in jobs.iter().zip(&out) {
            assert_eq!(
                got,
                blake3::keyed_hash(key, msg).as_bytes(),
                "{} bytes",
                msg.len()
            );
        }
        hash_many(Mode::Keyed, &[], &mut []);
    }
}
