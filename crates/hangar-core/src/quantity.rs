//! Kubernetes-style quantities: `"0.5"`, `"250m"`, `"512Mi"`, `"1Gi"`, `"1G"`.
//!
//! Hangar keeps CPU in millicores and memory in bytes; this module turns the
//! spellings users send into those integers and back into the shortest exact
//! spelling. Signs, exponents, empty strings and unknown suffixes are rejected
//! rather than guessed at.

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Empty string.
    #[error("must not be empty")]
    Empty,
    /// Not `<digits>[.<digits>][suffix]`.
    #[error(
        "'{0}' is not a quantity (expected a number with an optional suffix such as m, Ki, Mi, Gi)"
    )]
    Malformed(String),
    /// A suffix that is not one of the known ones.
    #[error(
        "'{0}' has an unknown suffix (use one of m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)"
    )]
    UnknownSuffix(String),
    /// Too many digits to be a sensible size.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// Suffix → (numerator, denominator) of its multiplier.
fn multiplier(suffix: &str) -> Option<(u128, u128)> {
    const K: u128 = 1024;
    Some(match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (K, 1),
        "Mi" => (K.pow(2), 1),
        "Gi" => (K.pow(3), 1),
        "Ti" => (K.pow(4), 1),
        "Pi" => (K.pow(5), 1),
        "Ei" => (K.pow(6), 1),
        _ => return None,
    })
}

/// Parses a quantity and returns it scaled by `scale` (1000 for millicores, 1 for
/// bytes), rounded up to a whole number.
fn parse_scaled(s: &str, scale: u128) -> Result<u128, QuantityError> {
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty()
        || frac_part.contains('.')
        || (number.contains('.') && frac_part.is_empty())
    {
        return Err(QuantityError::Malformed(s.to_owned()));
    }
    let (num, den) = multiplier(suffix).ok_or_else(|| {
        if suffix.starts_with(|c: char| c.is_ascii_alphabetic()) {
            QuantityError::UnknownSuffix(s.to_owned())
        } else {
            QuantityError::Malformed(s.to_owned())
        }
    })?;
    if int_part.len() + frac_part.len() > 15 {
        return Err(QuantityError::TooLarge(s.to_owned()));
    }
    let digits: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| QuantityError::Malformed(s.to_owned()))?;
    let frac_den = 10u128.pow(u32::try_from(frac_part.len()).unwrap_or(15));
    let numerator = digits * num * scale;
    let denominator = frac_den * den;
    Ok(numerator.div_ceil(denominator))
}

/// CPU quantity → millicores (`"0.5"` → 500, `"250m"` → 250, `"2"` → 2000).
pub fn parse_cpu_millis(s: &str) -> Result<u64, QuantityError> {
    let v = parse_scaled(s, 1000)?;
    u64::try_from(v).map_err(|_| QuantityError::TooLarge(s.to_owned()))
}

/// Memory quantity → bytes (`"512Mi"` → 536870912, `"1G"` → 10⁹).
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    let v = parse_scaled(s, 1)?;
    u64::try_from(v).map_err(|_| QuantityError::TooLarge(s.to_owned()))
}

/// Millicores → the spelling the Instances API shows (`500` → `"0.5"`, `1000` → `"1.0"`).
#[must_use]
pub fn format_cpu_millis(millis: u64) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        format!("{whole}.0")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// Bytes → the shortest exact spelling, binary suffixes first (`"512Mi"`, `"1G"`).
#[must_use]
pub fn format_bytes(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    const SUFFIXES: [(&str, u64); 10] = [
        ("Ei", 1 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
        ("", 1),
    ];
    for (suffix, unit) in SUFFIXES {
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_spellings() {
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("250m"), Ok(250));
        assert_eq!(parse_cpu_millis("1.0"), Ok(1000));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis(".5"), Ok(500));
        assert_eq!(
            parse_cpu_millis("0.0001"),
            Ok(1),
            "rounds up to a millicore"
        );
    }

    #[test]
    fn memory_spellings() {
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("128974848"), Ok(128_974_848));
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for bad in [
            "", "-1", "+1", "12Zi", "1.", "1..2", "abc", "1 Gi", "1e3", "0x10", ".",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should be rejected");
            assert!(parse_cpu_millis(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            parse_bytes("12Zi"),
            Err(QuantityError::UnknownSuffix(_))
        ));
        assert!(matches!(
            parse_bytes("9999999999999999Ei"),
            Err(QuantityError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_back_exactly() {
        assert_eq!(format_cpu_millis(500), "0.5");
        assert_eq!(format_cpu_millis(1000), "1.0");
        assert_eq!(format_cpu_millis(250), "0.25");
        assert_eq!(format_cpu_millis(1500), "1.5");
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1_000_000_000), "1G");
        assert_eq!(format_bytes(1001), "1001");
        for s in ["512Mi", "1Gi", "1G", "3Ki"] {
            assert_eq!(format_bytes(parse_bytes(s).unwrap_or_default()), s);
        }
    }
}
