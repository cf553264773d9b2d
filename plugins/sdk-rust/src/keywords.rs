//! Keyword rules: which of a fixed set of ASCII keywords occur in a text, ignoring ASCII case,
//! in one pass and without copying the text.
//!
//! Five `text.to_lowercase().contains(..)` calls cost five passes and an allocation; in
//! WebAssembly they also miss the SIMD substring search native code gets, and each builds a
//! Two-Way searcher. A [`Keywords`] set is built at compile time and scans once.

/// A set of up to 64 ASCII keywords, built at compile time:
///
/// ```
/// use inquiry_plugin_sdk::Keywords;
///
/// const RULES: Keywords<3> = Keywords::new(["bulk order", "wholesale", "urgent"]);
/// let [bulk, wholesale, urgent] = RULES.find("URGENT: Need a Bulk Order");
/// assert!(bulk && !wholesale && urgent);
/// ```
#[derive(Debug, Clone)]
pub struct Keywords<const N: usize> {
    words: [&'static str; N],
    /// For each byte, the keywords that start with it (either case).
    starting_with: [u64; 256],
}

impl<const N: usize> Keywords<N> {
    /// The set of `words`: non-empty ASCII, at most 64 (checked at compile time in a `const`).
    pub const fn new(words: [&'static str; N]) -> Self {
        assert!(N <= 64, "at most 64 keywords");
        let mut starting_with = [0u64; 256];
        let mut i = 0;
        while i < N {
            let word = words[i].as_bytes();
            assert!(!word.is_empty() && word.is_ascii(), "keywords are non-empty ASCII");
            starting_with[word[0].to_ascii_lowercase() as usize] |= 1 << i;
            starting_with[word[0].to_ascii_uppercase() as usize] |= 1 << i;
            i += 1;
        }
        Keywords { words, starting_with }
    }

    /// For each keyword, in order, whether it occurs in `text` (ignoring ASCII case).
    pub fn find(&self, text: &str) -> [bool; N] {
        let all = if N == 64 { u64::MAX } else { (1u64 << N) - 1 };
        let text = text.as_bytes();
        let mut found = 0u64;
        for (at, byte) in text.iter().enumerate() {
            let mut candidates = self.starting_with[*byte as usize] & !found;
            while candidates != 0 {
                let i = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                let word = self.words[i].as_bytes();
                if text.len() - at >= word.len() && text[at..at + word.len()].eq_ignore_ascii_case(word) {
                    found |= 1 << i;
                }
            }
            if found == all {
                break;
            }
        }
        core::array::from_fn(|i| found & (1 << i) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Keywords<4> = Keywords::new(["crypto giveaway", "bulk order", "urgent", "refund"]);

    #[test]
    fn finds_every_keyword_ignoring_ascii_case_like_contains_does() {
        let samples = [
            "Bulk Order of 500, URGENT",
            "Ich möchte eine Rückerstattung (refund) — bitte",
            "bulk orde",
            "ururgent refun",
            "サイズ urgent について",
            "",
            "CRYPTO GIVEAWAY bulk orderrefund",
        ];
        for text in samples {
            let lower = text.to_ascii_lowercase();
            let expected = RULES.words.map(|word| lower.contains(word));
            assert_eq!(RULES.find(text), expected, "{text}");
        }
    }

    #[test]
    fn sixty_four_keywords_fit() {
        const WORDS: [&str; 64] = {
            let mut words = ["a"; 64];
            words[63] = "zz";
            words
        };
        let set = Keywords::new(WORDS);
        assert!(set.find("zz")[63]);
        assert!(!set.find("z")[63]);
    }
}
