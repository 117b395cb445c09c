//! Random bytes from the operating system, for stream IDs, salts and nonces.

/// Fills `buf` with random bytes from the operating system.
///
/// Panics only if the kernel's random source is unavailable, which leaves
/// nothing safe to do.
pub fn fill(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("the operating system's random source failed");
}
