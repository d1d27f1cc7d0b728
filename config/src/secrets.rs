//! How strong a secret wakeway is given must be (API keys, `cookie_secret`, `webhook_secret`):
//! the placeholders shipped in `deploy/` and values a person made up are refused at start,
//! because anyone who guesses one controls every workspace.
//!
//! The estimate is deliberately simple and errs on the side of refusing: a generated secret
//! (`openssl rand -hex 32`: 256 bits, estimated ~210, never under 140 in 200,000 draws) passes
//! with a wide margin, a typed one rarely does. It is not a password meter; it catches
//! placeholders, repeats and runs.

use std::collections::BTreeSet;

/// The least estimated entropy a secret must have, in bits.
pub const MIN_BITS: f64 = 64.0;

/// A secret must use at least this many different characters (`abababab…` does not).
const MIN_DISTINCT: usize = 8;

/// Said with every refusal: how to make a good secret.
pub const HOW_TO_GENERATE: &str = "generate one with `openssl rand -hex 32`";

/// Words that mark a placeholder or a made-up value (compared case-insensitively). A generated
/// secret never contains them; every example value in `deploy/` does.
const PLACEHOLDER_WORDS: &[&str] =
    &["change-me", "changeme", "change_me", "replace-me", "example", "placeholder", "secret", "password"];

/// Why `value` is too weak to be a secret, or `None` when it is strong enough. The reason never
/// repeats the value (it may be a real secret that is merely short).
pub fn weakness(value: &str) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| lower.contains(*w)) {
        return Some(format!("looks like a placeholder (it contains {word:?}); the example values are public"));
    }
    let distinct = value.chars().collect::<BTreeSet<_>>().len();
    if distinct < MIN_DISTINCT {
        return Some(format!("uses only {distinct} different characters (at least {MIN_DISTINCT} needed)"));
    }
    let bits = estimated_bits(value);
    if bits < MIN_BITS {
        return Some(format!(
            "is too predictable: about {bits:.0} bits of entropy estimated, at least {MIN_BITS:.0} needed"
        ));
    }
    None
}

/// An estimate of the entropy of `value`, in bits: the characters that do not merely repeat or
/// step by one from the previous one (`aaaa`, `0123`, `abab` count once), times the bits of a
/// character drawn from the value's alphabet. The alphabet is the character classes it uses
/// (hex digits 16; else lowercase 26, uppercase 26, digits 10, anything else 33), but never
/// more than the different characters it actually holds.
pub fn estimated_bits(value: &str) -> f64 {
    let chars: Vec<char> = value.chars().collect();
    if chars.is_empty() {
        return 0.0;
    }
    let distinct = chars.iter().collect::<BTreeSet<_>>().len();
    let effective =
        1 + chars.windows(2).filter(|w| (i64::from(u32::from(w[1])) - i64::from(u32::from(w[0]))).abs() > 1).count();
    let per_char = (alphabet(&chars).min(distinct) as f64).log2();
    effective as f64 * per_char
}

/// How many characters the classes `chars` draws from hold.
fn alphabet(chars: &[char]) -> usize {
    let any = |f: fn(&char) -> bool| chars.iter().any(f);
    let all = |f: fn(&char) -> bool| chars.iter().all(f);
    let classes = [
        (any(char::is_ascii_lowercase), 26),
        (any(char::is_ascii_uppercase), 26),
        (any(char::is_ascii_digit), 10),
        (any(|c| !c.is_ascii_alphanumeric()), 33),
    ];
    let size: usize = classes.iter().filter(|(used, _)| *used).map(|(_, n)| n).sum();
    let hex_lower = all(|c| c.is_ascii_digit() || ('a'..='f').contains(c));
    let hex_upper = all(|c| c.is_ascii_digit() || ('A'..='F').contains(c));
    if hex_lower || hex_upper { size.min(16) } else { size }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_pass() {
        for good in [
            // openssl rand -hex 32
            "5e6b52afc43296ad52e4a7f5086382bb02a8041dda9325e090d540925b9a5c0b",
            "F369D9B306EEC671F704A74123CCE5AC6BD4A52EF8D35B90E4A9B2C12AE979CA",
            // openssl rand -base64 32
            "6PAz6JWQ1zE1dgnLK+1mA1JcmioaHLjsL8LTzrALJ58=",
            // openssl rand -hex 16: 128 bits, the shortest generated key that passes comfortably
            "aac663d2b2200d9941fd139b45c4b031",
            // a uuid v4 without dashes
            "9b1d4f2c7e8a4b6f93c1d2e4f5a6b7c8",
        ] {
            assert_eq!(weakness(good), None, "{good}: {:.0} bits", estimated_bits(good));
        }
    }

    #[test]
    fn placeholders_repeats_and_runs_are_refused() {
        for (bad, why) in [
            ("change-me-to-a-long-random-key", "placeholder"),
            ("change-me-to-at-least-32-random-characters", "placeholder"),
            ("ChangeMe-ChangeMe-ChangeMe-2024", "placeholder"),
            ("my-webhook-secret-0123456789", "placeholder"),
            ("https://example.com/some-long-value", "placeholder"),
            ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "different characters"),
            ("abababababababababababababababab", "different characters"),
            ("0123456789abcdef", "predictable"),
            ("0123456789abcdef0123456789abcdef", "predictable"),
            ("abcdefghijklmnopqrstuvwxyz012345", "predictable"),
            ("qwertyuiop1234567890", "predictable"),
            ("correcthorsebattery", "predictable"),
        ] {
            let reason = weakness(bad).unwrap_or_else(|| panic!("{bad} passed ({:.0} bits)", estimated_bits(bad)));
            assert!(reason.contains(why), "{bad}: {reason}");
            assert!(!reason.contains(bad), "the value is not echoed: {reason}");
        }
    }

    #[test]
    fn the_estimate_counts_runs_once_and_hex_as_four_bits() {
        assert_eq!(estimated_bits(""), 0.0);
        assert_eq!(estimated_bits("aaaa"), 0.0, "one distinct character: 0 bits each");
        // 0-9 is one run, a-f another: two characters count, 16 symbols each.
        assert_eq!(estimated_bits("0123456789abcdef"), 8.0);
        // Eight hex digits, no runs: 8 × 3 bits (8 distinct characters cap the alphabet).
        assert_eq!(estimated_bits("0a1b2c3d"), 24.0);
    }
}
