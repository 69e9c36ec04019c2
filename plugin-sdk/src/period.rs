use std::fmt;

/// A settlement period: a calendar month in UTC, `2026-11`, from its first millisecond to the
/// next month's first (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// The month, `YYYY-MM`.
    pub id: String,
    /// Its first instant, in unix milliseconds (inclusive).
    pub starts_at: i64,
    /// The next month's first instant, in unix milliseconds (exclusive).
    pub ends_at: i64,
}

impl Period {
    /// The month (`YYYY-MM`) that the unix-millisecond instant `ms` falls in: how a plugin
    /// files an event under its period, with no clock of its own.
    pub fn month_of(ms: i64) -> String {
        let (year, month) = year_month_from_days(ms.div_euclid(86_400_000));
        format!("{year:04}-{month:02}")
    }

    /// The period of the month `id`, written `YYYY-MM` (`2026-11`), as the host closes it.
    ///
    /// ```
    /// # use commission_plugin_sdk::Period;
    /// let november = Period::of_month("2026-11").unwrap();
    /// assert_eq!((november.starts_at, november.ends_at), (1_793_491_200_000, 1_796_083_200_000));
    /// ```
    pub fn of_month(id: &str) -> crate::Result<Self> {
        let problem = || crate::Error::new(format!("{id:?} is not a month written YYYY-MM"));
        let (year, month) = id.split_once('-').ok_or_else(problem)?;
        let digits = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(year, 4) || !digits(month, 2) {
            return Err(problem());
        }
        let (year, month): (i64, u32) = (year.parse().map_err(|_| problem())?, month.parse().map_err(|_| problem())?);
        if !(1..=12).contains(&month) {
            return Err(problem());
        }
        let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        Ok(Self {
            id: id.to_owned(),
            starts_at: days_from_civil(year, month, 1) * 86_400_000,
            ends_at: days_from_civil(next_year, next_month, 1) * 86_400_000,
        })
    }

    /// Whether the unix-millisecond instant `ms` falls in this period.
    pub fn contains(&self, ms: i64) -> bool {
        (self.starts_at..self.ends_at).contains(&ms)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// (year, month, day) to days since 1970-01-01: Howard Hinnant's `days_from_civil`.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Days since 1970-01-01 to (year, month): Howard Hinnant's `civil_from_days`, exact for every
/// day of the proleptic Gregorian calendar.
fn year_month_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month)
}

#[cfg(test)]
mod tests {
    use super::Period;

    #[test]
    fn months_of_instants_across_boundaries() {
        assert_eq!(Period::month_of(0), "1970-01");
        assert_eq!(Period::month_of(1_793_527_200_000), "2026-11"); // 2026-11-01T10:00:00Z
        assert_eq!(Period::month_of(1_793_491_199_999), "2026-10"); // the last ms of October
        assert_eq!(Period::month_of(1_709_164_800_000), "2024-02"); // 2024-02-29, a leap day
        assert_eq!(Period::month_of(-1), "1969-12");
    }
}
