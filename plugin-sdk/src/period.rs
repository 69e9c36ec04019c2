use std::fmt;

/// A settlement period: a calendar month in UTC, `2026-11`, from its first millisecond to the
/// next month's first (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub id: String,
    pub starts_at: i64,
    pub ends_at: i64,
}

impl Period {
    /// The month (`YYYY-MM`) that the unix-millisecond instant `ms` falls in: how a plugin
    /// files an event under its period, with no clock of its own.
    pub fn month_of(ms: i64) -> String {
        let (year, month) = year_month_from_days(ms.div_euclid(86_400_000));
        format!("{year:04}-{month:02}")
    }

    pub fn contains(&self, ms: i64) -> bool {
        (self.starts_at..self.ends_at).contains(&ms)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
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
