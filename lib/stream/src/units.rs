//! Times, durations and sizes as people write them on command lines and
//! in environment variables: one parser for each, shared by every tool.

use chrono::{DateTime, Datelike, FixedOffset, Local, TimeZone, Utc};

use crate::error::{Error, Result};

/// Parses a point in time: RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]` in local
/// time. A local time that does not exist (skipped when clocks went forward)
/// or that happened twice (when clocks went back) is refused, naming the
/// case: give it with an offset. Years beyond 0000 to 9999 are refused.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    parse_time_in(text, &Local)
}

/// A time as the tools store it in Begin frames, summaries and receipts:
/// RFC 3339, years 0000 to 9999, never a local-time form as people type
/// them ([`parse_time`] is for those).
pub fn stored_time(text: &str) -> Option<DateTime<Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| (0..=9999).contains(&t.year()))
}

/// [`parse_time`] with local times in `zone`.
fn parse_time_in<Tz: TimeZone<Offset = FixedOffset>>(text: &str, zone: &Tz) -> Result<DateTime<Utc>> {
    use chrono::{LocalResult, NaiveDate, NaiveDateTime, SecondsFormat};
    let out_of_range = || Error::usage(format!("'{text}' is out of range (years 0000 to 9999)"));
    let in_range = |t: &DateTime<Utc>| (0..=9999).contains(&t.year());
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc)).filter(in_range).ok_or_else(out_of_range);
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(23, 59, 59)));
    let Some(naive) = naive else {
        return Err(Error::usage(format!("'{text}' is not a time (use 2026-11-21 10:00 or RFC 3339)")));
    };
    if !(0..=9999).contains(&naive.year()) {
        return Err(out_of_range());
    }
    let with_offset = |t: &DateTime<Tz>| t.fixed_offset().to_rfc3339_opts(SecondsFormat::Secs, false);
    let utc = |t: &DateTime<Tz>| t.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::Secs, true);
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)).filter(in_range).ok_or_else(out_of_range),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            Err(Error::usage(format!(
                "'{text}' happened twice in the local time zone (the clocks went back): at {} and at {}; \
                 give it as RFC 3339 with an offset: {} or {}",
                utc(&a),
                utc(&b),
                with_offset(&a),
                with_offset(&b)
            )))
        }
        LocalResult::None => {
            // For an example, the offset in force the day before.
            let example = naive
                .checked_sub_signed(chrono::Duration::days(1))
                .and_then(|n| zone.offset_from_local_datetime(&n).earliest())
                .and_then(|offset| naive.and_local_timezone(offset).single())
                .map(|t| format!(", such as {}", t.to_rfc3339_opts(SecondsFormat::Secs, false)))
                .unwrap_or_default();
            Err(Error::usage(format!(
                "'{text}' does not exist in the local time zone (the clocks skipped it, moving forward); \
                 give an RFC 3339 time with an offset{example}"
            )))
        }
    }
}

/// The longest duration [`parse_duration`] accepts, in years of 365 days.
pub const MAX_DURATION_YEARS: i64 = 1000;

/// Parses a duration such as `90m`, `36h`, `14d`, `8w` or `1y` (365 days),
/// at most [`MAX_DURATION_YEARS`] years; anything else is a usage error.
pub fn parse_duration(text: &str) -> Result<chrono::Duration> {
    let bad = || Error::usage(format!("'{text}' is not a duration (use 90m, 36h, 14d, 8w or 1y)"));
    let too_long = || Error::usage(format!("'{text}' is too long (at most {MAX_DURATION_YEARS}y)"));
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    if split == 0 {
        return Err(bad());
    }
    let minutes_per_unit: i64 = match &text[split..] {
        "m" => 1,
        "h" => 60,
        "d" => 24 * 60,
        "w" => 7 * 24 * 60,
        "y" => 365 * 24 * 60,
        _ => return Err(bad()),
    };
    // Only digits precede the unit, so the number fails to parse only by being too large.
    let number: i64 = text[..split].parse().map_err(|_| too_long())?;
    number
        .checked_mul(minutes_per_unit)
        .filter(|&minutes| minutes <= MAX_DURATION_YEARS * 365 * 24 * 60)
        .map(chrono::Duration::minutes)
        .ok_or_else(too_long)
}

/// Parses a byte size such as `1048576`, `256K`, `1M`, `4MiB` (K, M, G are powers of 1024).
pub fn parse_size(text: &str) -> std::result::Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits.parse().map_err(|_| format!("'{text}' is not a size (try 1M or 256K)"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in '{text}' (use K, M or G)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use chrono::{LocalResult, NaiveDate, NaiveDateTime};

    /// Central European time in 2026: +01:00, and +02:00 from 2026-03-29
    /// 01:00 UTC (02:00 local becomes 03:00) to 2026-10-25 01:00 UTC (03:00
    /// local becomes 02:00 again).
    #[derive(Clone, Copy, Debug)]
    struct Berlin2026;

    impl Berlin2026 {
        fn offset_at_utc(utc: &NaiveDateTime) -> FixedOffset {
            let at = |m, d| NaiveDate::from_ymd_opt(2026, m, d).unwrap().and_hms_opt(1, 0, 0).unwrap();
            let summer = *utc >= at(3, 29) && *utc < at(10, 25);
            FixedOffset::east_opt(if summer { 7200 } else { 3600 }).unwrap()
        }
    }

    impl TimeZone for Berlin2026 {
        type Offset = FixedOffset;
        fn from_offset(_: &FixedOffset) -> Self {
            Berlin2026
        }
        fn offset_from_local_date(&self, local: &NaiveDate) -> LocalResult<FixedOffset> {
            self.offset_from_local_datetime(&local.and_hms_opt(12, 0, 0).unwrap())
        }
        fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<FixedOffset> {
            // Each offset that, applied to the local time, gives an instant where it is in force.
            let fits: Vec<FixedOffset> = [3600, 7200]
                .into_iter()
                .map(|secs| FixedOffset::east_opt(secs).unwrap())
                .filter(|off| {
                    Self::offset_at_utc(&(*local - chrono::Duration::seconds(off.local_minus_utc() as i64))) == *off
                })
                .collect();
            match fits.as_slice() {
                [one] => LocalResult::Single(*one),
                [a, b] => LocalResult::Ambiguous(*a, *b), // later instant first, as Local gives them
                _ => LocalResult::None,
            }
        }
        fn offset_from_utc_date(&self, utc: &NaiveDate) -> FixedOffset {
            Self::offset_at_utc(&utc.and_hms_opt(0, 0, 0).unwrap())
        }
        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
            Self::offset_at_utc(utc)
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn local_times_in_a_daylight_saving_gap_or_overlap_are_named() {
        let parse = |text: &str| parse_time_in(text, &Berlin2026);
        assert_eq!(parse("2026-03-29 01:30").unwrap(), utc("2026-03-29T00:30:00Z"));
        assert_eq!(parse("2026-03-29 03:30").unwrap(), utc("2026-03-29T01:30:00Z"));
        assert_eq!(parse("2026-07-01").unwrap(), utc("2026-07-01T21:59:59Z"));
        let gap = parse("2026-03-29 02:30").unwrap_err();
        assert_eq!(gap.kind(), ErrorKind::Usage);
        assert!(gap.message().contains("does not exist") && gap.message().contains("skipped"), "{gap}");
        assert!(gap.message().contains("2026-03-29T02:30:00+01:00"), "{gap}");
        let twice = parse("2026-10-25 02:30").unwrap_err();
        assert_eq!(twice.kind(), ErrorKind::Usage);
        assert!(twice.message().contains("happened twice"), "{twice}");
        assert!(
            twice.message().contains("2026-10-25T00:30:00Z") && twice.message().contains("2026-10-25T01:30:00Z"),
            "{twice}"
        );
        assert!(twice.message().contains("+02:00") && twice.message().contains("+01:00"), "{twice}");
        // With an offset, both instants can be named.
        assert_eq!(parse("2026-10-25T02:30:00+02:00").unwrap(), utc("2026-10-25T00:30:00Z"));
        assert_eq!(parse("2026-10-25T02:30:00+01:00").unwrap(), utc("2026-10-25T01:30:00Z"));
    }

    #[test]
    fn times_outside_four_digit_years_are_usage_errors() {
        for text in ["99999-01-01", "-5000-01-01", "+10000-01-01 10:00", "0000-01-01T00:30:00+01:00", "", "2026-13-01"]
        {
            let err = parse_time(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Usage, "{text}");
        }
        assert!(parse_time("9999-12-31T23:59:59Z").is_ok() && parse_time("0000-01-01T00:00:00Z").is_ok());
    }
}
