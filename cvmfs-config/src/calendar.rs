//! UTC calendar arithmetic without a time library: what whitelists, PAC time functions,
//! publishing and the boot loader's rebase markers need.

/// `YYYYMMDDhhmmss` of a Unix time in UTC.
pub fn timestamp_text(unix: i64) -> String {
    let [y, mo, d, h, mi, s] = utc_datetime(unix);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
}

/// (year, month, day, hour) of a Unix time in UTC.
pub fn utc_fields(unix: i64) -> (u32, u32, u32, u32) {
    let [y, m, d, h, _, _] = utc_datetime(unix);
    (y, m, d, h)
}

/// (year, month, day, hour, minute, second) of a Unix time in UTC.
pub fn utc_datetime(unix: i64) -> [u32; 6] {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    [
        y as u32,
        m as u32,
        d as u32,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_calendar() {
        assert_eq!(utc_fields(0), (1970, 1, 1, 0));
        assert_eq!(utc_fields(951_782_400), (2000, 2, 29, 0));
        assert_eq!(utc_fields(1_795_828_053), (2026, 11, 28, 1));
    }

    #[test]
    fn timestamps_are_zero_padded() {
        assert_eq!(timestamp_text(0), "19700101000000");
        assert_eq!(timestamp_text(951_782_400 + 3_661), "20000229010101");
    }
}
