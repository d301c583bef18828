//! Times and durations on the technician's screen: the wall clock to the second in the
//! machine's time zone, and waits/ETAs in words (`3 min 05 s`). Shared by the board, `tek
//! status --watch` and `tek write`'s progress.

use std::time::Duration;

/// `42 s`, `3 min 05 s`, `1 h 02 min`: an ETA or a wait, to the second.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

/// The wall-clock time, to the second, in the machine's time zone when it is known (else UTC,
/// said so).
pub fn now_hms() -> String {
    let fmt = time::macros::format_description!("[hour]:[minute]:[second]");
    match time::OffsetDateTime::now_local() {
        Ok(t) => t.format(&fmt).unwrap_or_default(),
        Err(_) => format!(
            "{} UTC",
            time::OffsetDateTime::now_utc()
                .format(&fmt)
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_words() {
        assert_eq!(duration(Duration::from_millis(1500)), "1 s");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(duration(Duration::from_secs(3720)), "1 h 02 min");
    }

    #[test]
    fn clock_to_the_second() {
        let t = now_hms();
        let hms = t.trim_end_matches(" UTC");
        assert_eq!(hms.len(), 8, "{t}");
        assert_eq!(hms.matches(':').count(), 2, "{t}");
    }
}
