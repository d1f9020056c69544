//! Durations as people write them in YAML: `500ms`, `30s`, `2m`, `1h30m`.

use std::time::Duration;

/// Parses `1h30m`, `30s`, `500ms`; units `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{text}` is not a duration"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is out of range"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" if rest.is_empty() => {
                return Err(format!("`{text}` has a number without a unit"));
            }
            "" => return Err(format!("`{text}` is not a duration")),
            u => return Err(format!("`{text}` has an unknown unit `{u}`")),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<u64, &str>) {
        match (parse(input), expect) {
            (Ok(d), Ok(ms)) => assert_eq!(d.as_millis() as u64, ms, "{input}"),
            (Err(e), Err(frag)) => assert!(e.contains(frag), "{input}: {e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn durations() {
        check("500ms", Ok(500));
        check("30s", Ok(30_000));
        check("2m", Ok(120_000));
        check("1h30m", Ok(5_400_000));
        check("1d", Ok(86_400_000));
        check("30", Err("without a unit"));
        check("30 seconds", Err("not a duration"));
        check("30sec", Err("unknown unit `sec`"));
        check("soon", Err("not a duration"));
        check("", Err("empty"));
    }
}
