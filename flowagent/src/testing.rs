//! Helpers shared by the unit tests of several modules.

/// A tiny deterministic generator (xorshift64*), so randomised tests are
/// reproducible without a dependency.
pub(crate) struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
