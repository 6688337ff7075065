//! The load generator's randomness: fast, seeded per run, not secure (it
//! picks message bytes and abuse kinds, nothing an attacker may guess).

/// A seed that differs per run and per process; never zero.
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15) | 1
}

/// xorshift64*: the next number from `state` (which must not be zero).
pub fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}
