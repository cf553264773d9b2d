//! Business calendars: open slots per weekday in one IANA time zone, minus holidays. An SLA with
//! a calendar counts only open time: four business hours from Friday 17:00 in Berlin end on
//! Monday at noon when the office opens at nine.

use std::collections::BTreeSet;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::config::CalendarConfig;

/// How far ahead a deadline is searched (a calendar open one hour a year still ends).
const HORIZON_DAYS: usize = 800;

/// A parsed business calendar.
#[derive(Debug, Clone)]
pub struct Calendar {
    zone: TimeZone,
    /// Open slots per weekday, Monday first, sorted.
    week: [Vec<(Time, Time)>; 7],
    holidays: BTreeSet<Date>,
}

impl Calendar {
    /// Parses and checks a configured calendar.
    pub fn from_config(config: &CalendarConfig) -> Result<Calendar, String> {
        let zone = TimeZone::get(&config.time_zone)
            .map_err(|_| format!("time_zone `{}` is not an IANA time zone", config.time_zone))?;
        let mut week: [Vec<(Time, Time)>; 7] = Default::default();
        for (day, slots) in &config.hours {
            let index = match day.as_str() {
                "mon" => 0,
                "tue" => 1,
                "wed" => 2,
                "thu" => 3,
                "fri" => 4,
                "sat" => 5,
                "sun" => 6,
                other => return Err(format!("hours: `{other}` is not a weekday (mon .. sun)")),
            };
            for slot in slots {
                let parsed = slot
                    .split_once('-')
                    .and_then(|(from, to)| Some((from.trim().parse::<Time>().ok()?, to.trim().parse::<Time>().ok()?)));
                match parsed {
                    Some((from, to)) if from < to => week[index].push((from, to)),
                    _ => return Err(format!("hours.{day}: `{slot}` is not a slot like 09:00-12:30")),
                }
            }
            week[index].sort();
            if week[index].windows(2).any(|w| w[0].1 > w[1].0) {
                return Err(format!("hours.{day}: slots overlap"));
            }
        }
        if week.iter().all(Vec::is_empty) {
            return Err("hours: the calendar is never open".to_owned());
        }
        let holidays = config
            .holidays
            .iter()
            .map(|d| d.parse::<Date>().map_err(|_| format!("holidays: `{d}` is not a date like 2026-12-25")))
            .collect::<Result<_, _>>()?;
        Ok(Calendar { zone, week, holidays })
    }

    /// The moment `business` of open time has passed after `start` (Unix ms in, Unix ms out).
    pub fn add(&self, start_ms: i64, business: std::time::Duration) -> i64 {
        let start = Timestamp::from_millisecond(start_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut left = SignedDuration::try_from(business).unwrap_or(SignedDuration::MAX);
        let mut date = start.to_zoned(self.zone.clone()).date();
        for _ in 0..HORIZON_DAYS {
            for (open, close) in self.open_spans(date) {
                let from = open.max(start);
                if from >= close {
                    continue;
                }
                let available = close.duration_since(from);
                if left <= available {
                    return from.checked_add(left).unwrap_or(close).as_millisecond();
                }
                left -= available;
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        start_ms.saturating_add(business.as_millis() as i64)
    }

    /// The moment `business` of open time before `end_ms` (Unix ms in, Unix ms out): a reminder
    /// an hour before a Monday 09:30 deadline comes on Monday at 08:30 only if the office is open
    /// then, else on Friday an hour before closing.
    pub fn sub(&self, end_ms: i64, business: std::time::Duration) -> i64 {
        let end = Timestamp::from_millisecond(end_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut left = SignedDuration::try_from(business).unwrap_or(SignedDuration::MAX);
        let mut date = end.to_zoned(self.zone.clone()).date();
        for _ in 0..HORIZON_DAYS {
            for (open, close) in self.open_spans(date).into_iter().rev() {
                let to = close.min(end);
                if to <= open {
                    continue;
                }
                let available = to.duration_since(open);
                if left <= available {
                    return to.checked_sub(left).unwrap_or(open).as_millisecond();
                }
                left -= available;
            }
            match date.yesterday() {
                Ok(previous) => date = previous,
                Err(_) => break,
            }
        }
        end_ms.saturating_sub(business.as_millis() as i64)
    }

    /// The office hours of `date` as instants, in time order (none on a holiday).
    fn open_spans(&self, date: Date) -> Vec<(Timestamp, Timestamp)> {
        if self.holidays.contains(&date) {
            return Vec::new();
        }
        self.week[weekday_index(date.weekday())]
            .iter()
            .filter_map(|(open, close)| Some((self.instant(date, *open)?, self.instant(date, *close)?)))
            .collect()
    }

    /// The instant of `time` on `date` in this zone (a time skipped by a DST change moves forward).
    fn instant(&self, date: Date, time: Time) -> Option<Timestamp> {
        date.to_datetime(time).to_zoned(self.zone.clone()).ok().map(|z| z.timestamp())
    }
}

fn weekday_index(day: Weekday) -> usize {
    day.to_monday_zero_offset() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calendar(holidays: &[&str]) -> Calendar {
        let text = format!(
            "id = \"berlin\"\ntime_zone = \"Europe/Berlin\"\nholidays = {holidays:?}\n[hours]\nmon = [\"09:00-12:30\", \"13:30-18:00\"]\ntue = [\"09:00-12:30\", \"13:30-18:00\"]\nwed = [\"09:00-12:30\", \"13:30-18:00\"]\nthu = [\"09:00-12:30\", \"13:30-18:00\"]\nfri = [\"09:00-12:30\", \"13:30-18:00\"]\n"
        );
        Calendar::from_config(&toml::from_str(&text).unwrap()).unwrap()
    }

    fn ms(zoned: &str) -> i64 {
        zoned.parse::<jiff::Zoned>().unwrap().timestamp().as_millisecond()
    }

    fn hours(h: u64) -> std::time::Duration {
        std::time::Duration::from_secs(h * 3600)
    }

    #[test]
    fn business_time_skips_lunch_nights_weekends_and_holidays() {
        let cal = calendar(&[]);
        // Wednesday 11:00 + 4h: 1.5h before lunch, 2.5h after it.
        assert_eq!(cal.add(ms("2026-12-02T11:00[Europe/Berlin]"), hours(4)), ms("2026-12-02T16:00[Europe/Berlin]"));
        // Friday 17:00 + 4h: one hour on Friday, three on Monday morning.
        assert_eq!(cal.add(ms("2026-12-04T17:00[Europe/Berlin]"), hours(4)), ms("2026-12-07T12:00[Europe/Berlin]"));
        // Saturday: starts counting on Monday at nine.
        assert_eq!(cal.add(ms("2026-12-05T10:00[Europe/Berlin]"), hours(1)), ms("2026-12-07T10:00[Europe/Berlin]"));
        // Christmas Eve 17:00 with the 25th and 26th off (a Friday and Saturday in 2026).
        let cal = calendar(&["2026-12-25"]);
        assert_eq!(cal.add(ms("2026-12-24T17:30[Europe/Berlin]"), hours(1)), ms("2026-12-28T09:30[Europe/Berlin]"));
    }

    #[test]
    fn reminders_count_back_in_business_time() {
        let cal = calendar(&[]);
        // An hour before Monday 09:30: half an hour on Monday, half an hour before Friday's close.
        assert_eq!(cal.sub(ms("2026-12-07T09:30[Europe/Berlin]"), hours(1)), ms("2026-12-04T17:30[Europe/Berlin]"));
        // Across lunch: an hour before 14:00 is 12:00.
        assert_eq!(cal.sub(ms("2026-12-02T14:00[Europe/Berlin]"), hours(1)), ms("2026-12-02T12:00[Europe/Berlin]"));
        // The inverse of add within a day.
        let start = ms("2026-12-02T10:00[Europe/Berlin]");
        assert_eq!(cal.sub(cal.add(start, hours(3)), hours(3)), start);
    }

    #[test]
    fn a_day_across_a_dst_change_counts_its_real_hours() {
        // 29 March 2026: clocks go 02:00 -> 03:00 in Berlin. A 24/7 calendar counts real time.
        let text = "id = \"always\"\ntime_zone = \"Europe/Berlin\"\n[hours]\nsun = [\"00:00-23:59:59\"]\nmon = [\"00:00-23:59:59\"]\n";
        let cal = Calendar::from_config(&toml::from_str(text).unwrap()).unwrap();
        assert_eq!(
            cal.add(ms("2026-03-29T01:00[Europe/Berlin]"), hours(2)),
            ms("2026-03-29T04:00[Europe/Berlin]"),
            "01:00 + 2h of real time is 04:00 on the day the clocks jump"
        );
    }

    #[test]
    fn bad_calendars_are_refused_with_the_reason() {
        let bad = |text: &str| Calendar::from_config(&toml::from_str(text).unwrap()).unwrap_err();
        assert!(
            bad("id = \"x\"\ntime_zone = \"Mars/Olympus\"\n[hours]\nmon = [\"09:00-17:00\"]\n").contains("time zone")
        );
        assert!(bad("id = \"x\"\ntime_zone = \"UTC\"\n[hours]\nmonday = [\"09:00-17:00\"]\n").contains("weekday"));
        assert!(bad("id = \"x\"\ntime_zone = \"UTC\"\n[hours]\nmon = [\"17:00-09:00\"]\n").contains("slot"));
        assert!(bad("id = \"x\"\ntime_zone = \"UTC\"\n[hours]\nmon = [\"09:00-12:00\", \"11:00-13:00\"]\n")
            .contains("overlap"));
        assert!(bad("id = \"x\"\ntime_zone = \"UTC\"\n[hours]\n").contains("never open"));
        assert!(bad(
            "id = \"x\"\ntime_zone = \"UTC\"\nholidays = [\"25.12.2026\"]\n[hours]\nmon = [\"09:00-17:00\"]\n"
        )
        .contains("holidays"));
    }
}
