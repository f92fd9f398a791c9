//! Cron schedules: five fields in UTC (minute, hour, day of month, month,
//! day of week), as PartyKit's `"crons"` and Vixie cron write them, and the
//! tick after a given time. A leaf: it knows no rooms and no storage.
//!
//! Each field takes `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`,
//! and lists of those (`1,15,30-40/5`); months and days of the week also take
//! their names (`jan`, `mon`); 0 and 7 are both Sunday. When both day fields
//! are restricted, a day matches if either does (Vixie cron's rule). The
//! aliases `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly` stand for their five fields.

use std::fmt;

/// A parsed schedule.
#[derive(Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether each day field was `*` (Vixie cron's rule for the two).
    any_day: bool,
    any_weekday: bool,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

impl Schedule {
    /// Parse a schedule; the error says which field is wrong and why.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "{text:?} has {} fields; a cron schedule has five (minute hour day-of-month month day-of-week) or is an @alias",
                fields.len()
            ));
        };
        let weekdays = field(weekday, "day of week", 0, 7, &WEEKDAYS)?;
        // 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Schedule {
            text: text.trim().to_owned(),
            minutes: field(minute, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])?,
            days: field(day, "day of month", 1, 31, &[])?,
            months: field(month, "month", 1, 12, &MONTHS)?,
            weekdays,
            any_day: day == "*",
            any_weekday: weekday == "*",
        })
    }

    /// The first tick strictly after `after_ms` (Unix milliseconds, UTC), or
    /// `None` if there is none within eight years (`0 0 31 2 *`: never).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        // The next whole minute.
        let mut t = (after_ms / MINUTE_MS + 1) * MINUTE_MS;
        let limit = after_ms.saturating_add(8 * 366 * DAY_MS);
        while t <= limit {
            let day_start = t - t % DAY_MS;
            let days = day_start / DAY_MS;
            let (_, month, day) = civil_from_days(days);
            if !has(self.months, month) {
                // The first day of the next month.
                let (y, m, _) = civil_from_days(days);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(y, m, 1) * DAY_MS;
                continue;
            }
            // 1970-01-01 was a Thursday.
            let weekday = (days + 4) % 7;
            if !self.day_matches(day, weekday) {
                t = day_start + DAY_MS;
                continue;
            }
            let hour = (t % DAY_MS) / 3_600_000;
            if !has(self.hours, hour) {
                t = day_start + (hour + 1) * 3_600_000;
                continue;
            }
            let minute = (t % 3_600_000) / MINUTE_MS;
            if !has(self.minutes, minute) {
                t += MINUTE_MS;
                continue;
            }
            return Some(t);
        }
        None
    }

    /// The latest tick at or before `at_ms` and after `after_ms`: the one
    /// tick to run for a stretch in which no node was up (the earlier ones
    /// of that stretch are skipped). Bounded: a schedule that ticks every
    /// minute is walked at most a year back.
    pub fn latest_in(&self, after_ms: u64, at_ms: u64) -> Option<u64> {
        let from = after_ms.max(at_ms.saturating_sub(366 * DAY_MS));
        let mut latest = None;
        let mut t = from;
        while let Some(next) = self.next_after(t) {
            if next > at_ms {
                break;
            }
            latest = Some(next);
            t = next;
        }
        latest
    }

    fn day_matches(&self, day: u64, weekday: u64) -> bool {
        let by_day = has(self.days, day);
        let by_weekday = has(self.weekdays, weekday);
        match (self.any_day, self.any_weekday) {
            (false, false) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }
}

fn has(set: u64, n: u64) -> bool {
    set & (1 << n) != 0
}

/// One field as a bit set of the values it matches.
fn field(text: &str, name: &str, min: u64, max: u64, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u64, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Months are named from 1, days of the week from 0.
            return Ok(i as u64 + min);
        }
        let n: u64 = s
            .parse()
            .map_err(|_| format!("the {name} field has {s:?}, which is not a number"))?;
        if n < min || n > max {
            return Err(format!("the {name} field has {n}, outside {min}-{max}"));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u64 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("the {name} field has step {s:?}; a step is a number from 1")
                })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `5/15` means from 5 to the end, every 15.
                None if step > 1 => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!(
                "the {name} field has the range {range}, which runs backwards"
            ));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The day count from 1970-01-01 of a date on or after it.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix milliseconds of a UTC date and time.
    fn at(y: u64, mo: u64, d: u64, h: u64, mi: u64) -> u64 {
        days_from_civil(y, mo, d) * DAY_MS + h * 3_600_000 + mi * MINUTE_MS
    }

    fn next(s: &str, after: u64) -> Option<u64> {
        Schedule::parse(s).expect("parses").next_after(after)
    }

    #[test]
    fn dates_round_trip() {
        for days in [0, 59, 365, 10_956, 11_016, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn next_ticks() {
        let t = at(2026, 12, 7, 18, 20) + 5_000;
        assert_eq!(next("* * * * *", t), Some(at(2026, 12, 7, 18, 21)));
        assert_eq!(next("*/15 * * * *", t), Some(at(2026, 12, 7, 18, 30)));
        assert_eq!(next("@hourly", t), Some(at(2026, 12, 7, 19, 0)));
        assert_eq!(next("@daily", t), Some(at(2026, 12, 8, 0, 0)));
        assert_eq!(next("@yearly", t), Some(at(2027, 1, 1, 0, 0)));
        assert_eq!(next("30 9 * * mon-fri", t), Some(at(2026, 12, 8, 9, 30)));
        // 2026-12-12 is a Saturday; 7 and 0 are both Sunday.
        assert_eq!(next("0 12 * * 6", t), Some(at(2026, 12, 12, 12, 0)));
        assert_eq!(next("0 12 * * 7", t), Some(at(2026, 12, 13, 12, 0)));
        assert_eq!(next("0 0 29 feb *", t), Some(at(2028, 2, 29, 0, 0)));
        assert_eq!(next("0 0 31 2 *", t), None);
        // Either day field matches when both are restricted.
        assert_eq!(next("0 0 15 * fri", t), Some(at(2026, 12, 11, 0, 0)));
        // A tick exactly at `after` is not after it.
        let on = at(2026, 12, 7, 19, 0);
        assert_eq!(next("0 * * * *", on), Some(at(2026, 12, 7, 20, 0)));
        assert_eq!(next("5/20 * * * *", t), Some(at(2026, 12, 7, 18, 25)));
        assert_eq!(next("0 0 1 jan,jul *", t), Some(at(2027, 1, 1, 0, 0)));
    }

    #[test]
    fn the_latest_missed_tick() {
        let s = Schedule::parse("0 * * * *").expect("parses");
        let down = at(2026, 12, 7, 10, 30);
        let up = at(2026, 12, 7, 14, 10);
        assert_eq!(s.latest_in(down, up), Some(at(2026, 12, 7, 14, 0)));
        assert_eq!(s.latest_in(at(2026, 12, 7, 14, 0), up), None);
    }

    #[test]
    fn bad_schedules_say_why() {
        for (bad, says) in [
            ("* * * *", "five"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("@often", "five"),
        ] {
            let e = Schedule::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
