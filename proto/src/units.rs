//! Parsing of human-written sizes and durations, with upstream's conventions:
//! size units are binary (`4 GB` = 4 GiB), durations without a unit are milliseconds.

/// Why a size or duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Nothing but blanks.
    #[error("empty {what}")]
    Empty {
        /// `size` or `duration`.
        what: &'static str,
    },
    /// A suffix that is no unit of this kind.
    #[error("unknown {what} unit in {text:?}")]
    UnknownUnit {
        /// `size` or `duration`.
        what: &'static str,
        /// The text as given.
        text: String,
    },
    /// The part before the unit is no number.
    #[error("invalid number in {what} {text:?}")]
    InvalidNumber {
        /// `size` or `duration`.
        what: &'static str,
        /// The text as given.
        text: String,
    },
    /// Negative, infinite or beyond 64 bits.
    #[error("{what} {text:?} out of range")]
    OutOfRange {
        /// `size` or `duration`.
        what: &'static str,
        /// The text as given.
        text: String,
    },
}

/// A text being parsed as a `what` (`size`, `duration`), for its errors.
struct Parsing<'a> {
    what: &'static str,
    text: &'a str,
}

impl Parsing<'_> {
    fn unknown_unit(&self) -> UnitError {
        UnitError::UnknownUnit {
            what: self.what,
            text: self.text.to_string(),
        }
    }
    fn invalid_number(&self) -> UnitError {
        UnitError::InvalidNumber {
            what: self.what,
            text: self.text.to_string(),
        }
    }
    fn out_of_range(&self) -> UnitError {
        UnitError::OutOfRange {
            what: self.what,
            text: self.text.to_string(),
        }
    }

    /// The number and the unit after it (lower case, blanks trimmed).
    fn split(&self) -> (&str, String) {
        let trimmed = self.text.trim();
        let at = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(at);
        (number, unit.trim().to_ascii_lowercase())
    }

    /// `number * multiplier`, rounded, when it is a finite `u64`.
    fn scaled(&self, number: &str, multiplier: f64) -> Result<u64, UnitError> {
        let value: f64 = number.parse().map_err(|_| self.invalid_number())?;
        let scaled = value * multiplier;
        if !scaled.is_finite() || scaled < 0.0 || scaled > u64::MAX as f64 {
            return Err(self.out_of_range());
        }
        Ok(scaled.round() as u64)
    }
}

/// Parses a size such as `4294967296`, `4GB`, `4 GB`, `4gb`, `4GiB`, `512M`, `3.125 GiB`.
/// Units are binary multiples (as upstream's `string_to_byte_size`).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let p = Parsing { what: "size", text };
    if text.trim().is_empty() {
        return Err(UnitError::Empty { what: p.what });
    }
    let (number, unit) = p.split();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(p.unknown_unit()),
    };
    if number.is_empty() {
        return Err(p.invalid_number());
    }
    // Whole numbers exactly; fractions through f64.
    match number.parse::<u64>() {
        Ok(whole) => whole
            .checked_mul(multiplier)
            .ok_or_else(|| p.out_of_range()),
        Err(_) => p.scaled(number, multiplier as f64),
    }
}

/// Parses a duration in milliseconds: `10000`, `500ms`, `5s`, `30m`, `1h`.
pub fn parse_duration_ms(text: &str) -> Result<u64, UnitError> {
    let p = Parsing {
        what: "duration",
        text,
    };
    let (number, unit) = p.split();
    let multiplier: f64 = match unit.as_str() {
        "" | "ms" => 1.0,
        "s" | "sec" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(p.unknown_unit()),
    };
    p.scaled(number, multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_spelling() {
        assert_eq!(parse_size("4294967296").unwrap(), 4 << 30);
        assert_eq!(parse_size("4gb").unwrap(), 4 << 30);
        assert_eq!(parse_size("4 GB").unwrap(), 4 << 30);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("3.125 GiB").unwrap(), 3_355_443_200);
        assert_eq!(parse_size("0").unwrap(), 0);
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(parse_size("").is_err());
        assert!(parse_size("GB").is_err());
        assert!(parse_size("4 XB").is_err());
        assert!(parse_size("-4GB").is_err());
        assert!(parse_size("99999999999TB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10000").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("5s").unwrap(), 5_000);
        assert_eq!(parse_duration_ms("30m").unwrap(), 1_800_000);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert!(parse_duration_ms("5 fortnights").is_err());
    }
}
