//! One's-complement checksum arithmetic (RFC 1071, RFC 1624), for the
//! rewrites whose checksum fields the kernel helpers cannot reach in one
//! call: several fields at once, and the headers an ICMP error quotes.
//!
//! Words are 16-bit values loaded in the machine's byte order straight from
//! the packet's bytes, as the kernel's own checksum code loads them: a
//! one's-complement sum commutes with swapping the bytes of every word, so
//! no conversion is needed, and a [`Diff`] can be handed to
//! `bpf_l3_csum_replace` / `bpf_l4_csum_replace` (size 0) as it is.

/// The change a rewrite makes to a one's-complement sum: the sum of the
/// complements of the old words and the new words, not folded.
#[derive(Clone, Copy, Default)]
pub struct Diff(pub u32);

impl Diff {
    /// No change.
    pub const NONE: Self = Self(0);

    /// Adds the change of one 16-bit word.
    #[inline(always)]
    pub const fn word(self, old: u16, new: u16) -> Self {
        // At most a dozen words are added, so 32 bits cannot overflow.
        Self(self.0 + (!old) as u32 + new as u32)
    }

    /// Adds the change of a 32-bit field (two words).
    #[inline(always)]
    pub const fn dword(self, old: u32, new: u32) -> Self {
        #[expect(clippy::cast_possible_truncation, reason = "splitting into the two 16-bit words")]
        let words = ((old as u16, new as u16), ((old >> 16) as u16, (new >> 16) as u16));
        self.word(words.0.0, words.0.1).word(words.1.0, words.1.1)
    }

    /// Adds another change.
    #[inline(always)]
    pub const fn add(self, other: Self) -> Self {
        // Fold first so repeated additions stay far from overflow.
        Self(fold32(self.0) + fold32(other.0))
    }

    /// The checksum field `check` after this change (RFC 1624, eqn. 3:
    /// `HC' = ~(~HC + ~m + m')`).
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        !fold((!check) as u32 + fold32(self.0))
    }
}

/// Folds a 32-bit sum to 17 bits at most.
#[inline(always)]
const fn fold32(sum: u32) -> u32 {
    (sum & 0xffff) + (sum >> 16)
}

/// Folds a 32-bit sum to 16 bits.
#[inline(always)]
const fn fold(sum: u32) -> u16 {
    let once = fold32(sum);
    let twice = fold32(once);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = twice as u16;
    folded
}
