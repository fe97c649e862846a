//! Logical and version ids.

/// True when `id` matches the R4 `id` datatype: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Parses a weak or strong ETag or a bare version id (`W/"3"`, `"3"`, `3`) into a version number.
pub fn parse_etag_version(etag: &str) -> Option<i64> {
    let t = etag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    let t = t.trim_matches('"');
    t.parse::<i64>().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_syntax() {
        assert!(is_valid_id("example"));
        assert!(is_valid_id("a.b-C9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("ä"));
    }

    #[test]
    fn etags() {
        assert_eq!(parse_etag_version("W/\"2\""), Some(2));
        assert_eq!(parse_etag_version("\"17\""), Some(17));
        assert_eq!(parse_etag_version("4"), Some(4));
        assert_eq!(parse_etag_version("W/\"x\""), None);
        assert_eq!(parse_etag_version("W/\"0\""), None);
    }
}
