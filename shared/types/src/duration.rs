//! Go-style durations ("12h", "1h30m") and the expiry column format used by `tctl tokens ls`.

use std::time::Duration;

use time::OffsetDateTime;
use time::macros::format_description;

use crate::error::TypesError;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration as Go writes it (`90s`, `5m`, `1h30m`, `1.5h`, `300ms`), falling back to
/// humantime forms (`2days`, `1h 30m`) so both Teleport-style and human input work.
pub fn parse_duration(s: &str) -> Result<Duration, TypesError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(TypesError::InvalidDuration {
            input: s.to_string(),
            reason: "empty duration".to_string(),
        });
    }
    if input.starts_with('-') {
        return Err(TypesError::InvalidDuration {
            input: s.to_string(),
            reason: "negative durations are not allowed".to_string(),
        });
    }
    if let Some(d) = parse_go(input) {
        return Ok(d);
    }
    humantime::parse_duration(input).map_err(|e| TypesError::InvalidDuration {
        input: s.to_string(),
        reason: format!("{e} (use Go style like \"90s\", \"5m\", \"12h\", \"1h30m\")"),
    })
}

/// Go's `time.ParseDuration` grammar for non-negative values; `None` when it does not fit.
fn parse_go(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[start..i];
        if number.is_empty() || number == "." {
            return None;
        }
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit_nanos: u128 = match &s[unit_start..i] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            _ => return None,
        };
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if frac_part.contains('.') {
            return None;
        }
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = whole.checked_mul(unit_nanos)?;
        // Fractions are scaled digit by digit so "1.5h" is exact without floats.
        let mut scale = unit_nanos;
        for c in frac_part.chars() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value = value.checked_add(u128::from(c.to_digit(10)?) * scale)?;
        }
        total = total.checked_add(value)?;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

/// Formats like Go's `Duration.String()`: `1h0m0s`, `4m48s`, `1.5s`, `300ms`, `0s`.
pub fn format_duration_go(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < NANOS_PER_SEC {
        // Below one second Go switches to the largest unit that keeps an integer part.
        return if nanos < 1_000 {
            format!("{nanos}ns")
        } else if nanos < 1_000_000 {
            format!("{}µs", with_fraction(nanos, 1_000))
        } else {
            format!("{}ms", with_fraction(nanos, 1_000_000))
        };
    }
    let total_secs = nanos / NANOS_PER_SEC;
    let sub = nanos % NANOS_PER_SEC;
    let hours = total_secs / 3600;
    let minutes = (total_secs % 3600) / 60;
    let secs = total_secs % 60;
    let secs_str = with_fraction(secs * NANOS_PER_SEC + sub, NANOS_PER_SEC);
    if hours > 0 {
        format!("{hours}h{minutes}m{secs_str}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs_str}s")
    } else {
        format!("{secs_str}s")
    }
}

/// `value / unit` with the remainder as decimal digits, trailing zeros dropped (Go's fmtFrac).
fn with_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let rem = value % unit;
    if rem == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Formats a token expiry as `tctl tokens ls` shows it: `28 Apr 22 19:19 UTC (4m48s)`,
/// or `never` for tokens without expiry. The remaining time is rounded to whole seconds
/// (half away from zero, like Go's `Duration.Round`) and is negative once expired.
pub fn format_expiry(expires: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    let Some(expires) = expires else {
        return "never".to_string();
    };
    let utc = expires.to_offset(time::UtcOffset::UTC);
    let stamp = utc
        .format(format_description!(
            "[day] [month repr:short] [year repr:last_two] [hour]:[minute] UTC"
        ))
        .unwrap_or_else(|_| utc.to_string());
    let remaining = expires - now;
    let negative = remaining.is_negative();
    let abs_nanos = remaining.whole_nanoseconds().unsigned_abs();
    let rounded_secs = (abs_nanos + NANOS_PER_SEC / 2) / NANOS_PER_SEC;
    let secs = u64::try_from(rounded_secs).unwrap_or(u64::MAX);
    let text = format_duration_go(Duration::from_secs(secs));
    if negative && secs > 0 {
        format!("{stamp} (-{text})")
    } else {
        format!("{stamp} ({text})")
    }
}

/// Serde adapter for `Option<Duration>` fields written as Go-style strings. Integers are
/// read as nanoseconds because that is how Teleport's JSON encodes durations.
pub mod option {
    use std::fmt;
    use std::time::Duration;

    use serde::Serializer;
    use serde::de::{self, Deserializer, Visitor};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&super::format_duration_go(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"12h\", \"30m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                super::parse_duration(v).map(Some).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(Duration::from_nanos(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|n| Some(Duration::from_nanos(n)))
                    .map_err(|_| E::custom("negative durations are not allowed"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("30h0m0s").unwrap(),
            Duration::from_secs(30 * 3600)
        );
    }

    #[test]
    fn parses_humantime_fallback() {
        assert_eq!(
            parse_duration("2days").unwrap(),
            Duration::from_secs(2 * 86400)
        );
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["", "abc", "5x", "-5m", "h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid duration \"{bad}\"")),
                "{err}"
            );
        }
    }

    #[test]
    fn formats_go_style() {
        assert_eq!(format_duration_go(Duration::ZERO), "0s");
        assert_eq!(format_duration_go(Duration::from_secs(288)), "4m48s");
        assert_eq!(format_duration_go(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration_go(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration_go(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration_go(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration_go(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration_go(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format_duration_go(Duration::from_nanos(42)), "42ns");
        assert_eq!(
            format_duration_go(Duration::from_secs(30 * 3600)),
            "30h0m0s"
        );
    }

    #[test]
    fn format_expiry_matches_tctl() {
        let expires = datetime!(2022-04-28 19:19:00 UTC);
        let now = expires - time::Duration::seconds(288);
        assert_eq!(
            format_expiry(Some(expires), now),
            "28 Apr 22 19:19 UTC (4m48s)"
        );
        // Sub-second remainders round to the nearest second.
        let now = expires - time::Duration::milliseconds(287_600);
        assert_eq!(
            format_expiry(Some(expires), now),
            "28 Apr 22 19:19 UTC (4m48s)"
        );
        let now = expires - time::Duration::hours(1);
        assert_eq!(
            format_expiry(Some(expires), now),
            "28 Apr 22 19:19 UTC (1h0m0s)"
        );
        assert_eq!(format_expiry(None, now), "never");
    }

    #[test]
    fn format_expiry_converts_offsets_and_shows_expired() {
        let expires = datetime!(2022-04-28 21:19:00 +2);
        let now = datetime!(2022-04-28 19:19:05 UTC);
        assert_eq!(
            format_expiry(Some(expires), now),
            "28 Apr 22 19:19 UTC (-5s)"
        );
        assert_eq!(
            format_expiry(
                Some(datetime!(2022-04-03 07:05:00 UTC)),
                datetime!(2022-04-03 07:05:00 UTC)
            ),
            "03 Apr 22 07:05 UTC (0s)"
        );
    }

    #[test]
    fn option_serde_round_trip() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(
                default,
                with = "super::option",
                skip_serializing_if = "Option::is_none"
            )]
            ttl: Option<Duration>,
        }
        let t: T = serde_json::from_str(r#"{"ttl":"1h30m"}"#).unwrap();
        assert_eq!(t.ttl, Some(Duration::from_secs(5400)));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"ttl":"1h30m0s"}"#);
        let t: T = serde_json::from_str(r#"{"ttl":3600000000000}"#).unwrap();
        assert_eq!(t.ttl, Some(Duration::from_secs(3600)));
        let t: T = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.ttl, None);
        let err = serde_json::from_str::<T>(r#"{"ttl":"soon"}"#).unwrap_err();
        assert!(
            err.to_string().contains("invalid duration \"soon\""),
            "{err}"
        );
    }
}
