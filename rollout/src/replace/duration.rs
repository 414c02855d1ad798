//! Durations as kubectl parses them.

use std::time::Duration;

use anyhow::Result;

/// Why text is not a duration, in the words of Go's `time.ParseDuration`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a sequence of numbers with units, or beyond Go's 290 years.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// A number with no unit after it (other than `0` alone).
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("unknown unit {unit:?} in duration {duration:?}")]
    UnknownUnit { unit: String, duration: String },
}

/// A duration exactly as kubectl parses one (Go's `time.ParseDuration`): an optional sign, then
/// one or more decimal numbers with an optional fraction, each with a unit (`ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`), e.g. `90s`, `1.5h`, `1m30s`; `0` alone needs no unit. A negative duration
/// has already passed: it becomes the shortest one (a timeout that expires at once), as a Go
/// context with a negative timeout does. Written by hand because the one crate that ports it
/// slices strings at character counts and panics on `µs`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(s.to_string());
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => a.split_at(a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len())),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(DurationError::MissingUnit(s.to_string())),
            u => {
                return Err(DurationError::UnknownUnit {
                    unit: u.to_string(),
                    duration: s.to_string(),
                })
            }
        };
        // Digits past what a u128 holds cannot change an in-range result: ignore them.
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        let frac = &frac[..frac.len().min(20)];
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| invalid())?
        };
        let frac_nanos = frac_value * scale / 10u128.pow(frac.len() as u32);
        nanos = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(nanos))
            .filter(|n| *n <= i64::MAX as u128)
            .ok_or_else(invalid)?;
        rest = after;
    }
    if neg && nanos > 0 {
        return Ok(Duration::from_nanos(1));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        // What kubectl (Go's time.ParseDuration) accepts, and what it refuses.
        assert_eq!(
            parse_duration("90").unwrap_err().to_string(),
            "missing unit in duration \"90\""
        );
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1µs"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_duration("+2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("-1s"), Ok(Duration::from_nanos(1)), "already passed");
        assert!(parse_duration("3000000h").is_err(), "beyond Go's 290 years");
        assert!(parse_duration("99999999999999999999999999999999999999999h").is_err());
        assert!(parse_duration("1.s").is_ok() && parse_duration(".s").is_err());
        assert!(parse_duration("1d")
            .unwrap_err()
            .to_string()
            .contains("unknown unit \"d\""));
        assert!(parse_duration("").is_err() && parse_duration("-").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
