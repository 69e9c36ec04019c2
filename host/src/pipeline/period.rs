//! Periods: calendar months, UTC, the unit a close settles; and the ids of the host's own
//! ledger entries (settlements).

use crate::sandbox::PluginPeriod;
use crate::store::records::StoredEvent;

pub use crate::event::RESERVED_PREFIX;
/// The type of the ledger entry a period's settlement is stored as.
pub const SETTLEMENT_KIND: &str = "commission-host.settlement";
/// How a settlement entry's id starts; `{period}:{affiliate}` follows.
pub const SETTLEMENT_PREFIX: &str = "commission-host.period:";

/// A calendar month, as periods are: `2026-11`, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub id: String,
    pub starts_at: i64,
    pub ends_at: i64,
}

impl Period {
    /// Parses `YYYY-MM`.
    pub fn parse(id: &str) -> Result<Self, String> {
        let problem = || format!("{id:?} is not a month written YYYY-MM");
        let (year, month) = id.split_once('-').ok_or_else(problem)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(problem());
        }
        let year: i32 = year.parse().map_err(|_| problem())?;
        let month: u8 = month.parse().map_err(|_| problem())?;
        let month = time::Month::try_from(month).map_err(|_| problem())?;
        let start = time::Date::from_calendar_date(year, month, 1).map_err(|_| problem())?;
        let (next_year, next_month) =
            if month == time::Month::December { (year + 1, time::Month::January) } else { (year, month.next()) };
        let end = time::Date::from_calendar_date(next_year, next_month, 1).map_err(|_| problem())?;
        let ms = |date: time::Date| date.midnight().assume_utc().unix_timestamp() * 1000;
        Ok(Self { id: id.to_owned(), starts_at: ms(start), ends_at: ms(end) })
    }

    /// The month `ms` falls in; `None` for a time outside the calendar's range.
    pub fn containing(ms: i64) -> Option<Self> {
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
        Self::parse(&format!("{:04}-{:02}", time.year(), u8::from(time.month()))).ok()
    }

    /// The month after this one.
    pub fn next(&self) -> Option<Self> {
        Self::containing(self.ends_at)
    }

    /// The id of this period's settlement entry for `affiliate`.
    pub fn settlement_id(&self, affiliate: &str) -> String {
        format!("{SETTLEMENT_PREFIX}{}:{affiliate}", self.id)
    }

    fn to_plugin(&self) -> PluginPeriod {
        PluginPeriod { id: self.id.clone(), starts_at: self.starts_at, ends_at: self.ends_at }
    }
}

/// The period a settlement entry settles; `None` for an ordinary event.
pub(crate) fn settlement_period(event: &StoredEvent) -> Option<PluginPeriod> {
    if event.kind != SETTLEMENT_KIND {
        return None;
    }
    event.attributes.get("period").and_then(|id| Period::parse(id).ok()).map(|period| period.to_plugin())
}
