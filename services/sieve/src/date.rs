//! RFC 5260 date parts, time zones and the Date header's value.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Timelike};
use mail_parser::MessageParser;

/// "+hhmm" / "-hhmm" (RFC 5260 §4.1).
pub(crate) fn parse_zone(z: &str) -> Option<FixedOffset> {
    let b = z.as_bytes();
    if b.len() != 5 || !(b[0] == b'+' || b[0] == b'-') || !b[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let h: i32 = z[1..3].parse().ok()?;
    let m: i32 = z[3..5].parse().ok()?;
    if m > 59 {
        return None;
    }
    let secs = (h * 3600 + m * 60) * if b[0] == b'-' { -1 } else { 1 };
    FixedOffset::east_opt(secs)
}

/// Parses an RFC 5322 date-time (the Date header, or any header the script
/// names) with its own zone.
pub(crate) fn parse_header_date(raw: &str) -> Option<DateTime<FixedOffset>> {
    let synthetic = format!("Date: {}\r\n\r\n", raw.trim());
    let m = MessageParser::default().parse_headers(synthetic.as_bytes())?;
    let d = m.date()?;
    if !d.is_valid() {
        return None;
    }
    let off = (i32::from(d.tz_hour) * 3600 + i32::from(d.tz_minute) * 60)
        * if d.tz_before_gmt { -1 } else { 1 };
    let tz = FixedOffset::east_opt(off)?;
    tz.with_ymd_and_hms(
        i32::from(d.year),
        u32::from(d.month),
        u32::from(d.day),
        u32::from(d.hour),
        u32::from(d.minute),
        u32::from(d.second),
    )
    .single()
}

fn zone_str(o: &FixedOffset) -> String {
    let s = o.local_minus_utc();
    let sign = if s < 0 { '-' } else { '+' };
    let s = s.abs();
    format!("{sign}{:02}{:02}", s / 3600, (s % 3600) / 60)
}

/// The value of one date part, as RFC 5260 §4.2 spells it.
pub(crate) fn part(d: &DateTime<FixedOffset>, name: &str) -> Option<String> {
    Some(match name.to_ascii_lowercase().as_str() {
        "year" => format!("{:04}", d.year()),
        "month" => format!("{:02}", d.month()),
        "day" => format!("{:02}", d.day()),
        "date" => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
        "julian" => {
            let epoch = NaiveDate::from_ymd_opt(1858, 11, 17)?;
            (d.date_naive() - epoch).num_days().to_string()
        }
        "hour" => format!("{:02}", d.hour()),
        "minute" => format!("{:02}", d.minute()),
        "second" => format!("{:02}", d.second()),
        "time" => format!("{:02}:{:02}:{:02}", d.hour(), d.minute(), d.second()),
        "iso8601" => d.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "std11" => format!(
            "{} {}",
            d.format("%a, %d %b %Y %H:%M:%S"),
            zone_str(d.offset())
        ),
        "zone" => zone_str(d.offset()),
        "weekday" => d.weekday().num_days_from_sunday().to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let d = parse_header_date("Tue, 1 Apr 2025 09:05:07 +0200").unwrap();
        assert_eq!(part(&d, "date").unwrap(), "2025-04-01");
        assert_eq!(part(&d, "time").unwrap(), "09:05:07");
        assert_eq!(part(&d, "zone").unwrap(), "+0200");
        assert_eq!(part(&d, "weekday").unwrap(), "2");
        assert_eq!(part(&d, "iso8601").unwrap(), "2025-04-01T09:05:07+02:00");
        assert_eq!(
            part(&d, "std11").unwrap(),
            "Tue, 01 Apr 2025 09:05:07 +0200"
        );
        assert_eq!(part(&d, "julian").unwrap(), "60766");
        let u = d.with_timezone(&parse_zone("-0500").unwrap());
        assert_eq!(part(&u, "hour").unwrap(), "02");
        assert!(parse_zone("0100").is_none());
        assert!(parse_header_date("garbage").is_none());
    }
}
