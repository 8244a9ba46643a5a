//! Conditional requests (RFC 9110 section 13): If-Match, If-Unmodified-Since, If-None-Match,
//! If-Modified-Since and If-Range, evaluated in the order the RFC gives. No IO.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, header};

/// What the preconditions say about a request for a resource that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve it; `honor_range` tells whether a Range header may be applied (If-Range passed).
    Proceed { honor_range: bool },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// The validators of the representation that would be sent.
#[derive(Debug, Clone, Copy)]
pub struct Validators<'a> {
    /// The strong entity tag, with its quotes: `"1f-5e1a"`.
    pub etag: &'a str,
    /// Last modification, whole seconds since the epoch.
    pub last_modified: u64,
}

/// Evaluates the preconditions of a request (`safe` is true for GET and HEAD).
pub fn evaluate(headers: &HeaderMap, safe: bool, v: Validators<'_>) -> Outcome {
    let text = |name: header::HeaderName| headers.get(name).and_then(|h| h.to_str().ok());
    if let Some(if_match) = text(header::IF_MATCH) {
        if !etag_list_matches(if_match, v.etag, true) {
            return Outcome::Failed;
        }
    } else if let Some(since) = text(header::IF_UNMODIFIED_SINCE).and_then(http_date_secs)
        && v.last_modified > since
    {
        return Outcome::Failed;
    }
    if let Some(if_none_match) = text(header::IF_NONE_MATCH) {
        if etag_list_matches(if_none_match, v.etag, false) {
            return if safe { Outcome::NotModified } else { Outcome::Failed };
        }
    } else if safe
        && let Some(since) = text(header::IF_MODIFIED_SINCE).and_then(http_date_secs)
        && v.last_modified <= since
    {
        return Outcome::NotModified;
    }
    let honor_range = match text(header::IF_RANGE) {
        None => true,
        Some(value) if value.starts_with('"') || value.starts_with("W/") => {
            // If-Range needs a strong comparison; a weak tag never matches.
            !value.starts_with("W/") && value == v.etag
        }
        Some(value) => http_date_secs(value) == Some(v.last_modified),
    };
    Outcome::Proceed { honor_range }
}

/// Whether a comma-separated list of entity tags (or `*`) matches `etag`.
fn etag_list_matches(list: &str, etag: &str, strong: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let ours = etag.trim_start_matches("W/");
    list.split(',').map(str::trim).any(|tag| {
        let weak = tag.starts_with("W/");
        if strong && (weak || etag.starts_with("W/")) {
            return false;
        }
        tag.trim_start_matches("W/") == ours
    })
}

/// Parses an HTTP date into whole seconds since the epoch.
pub fn http_date_secs(s: &str) -> Option<u64> {
    httpdate::parse_http_date(s).ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs())
}

/// Whole seconds since the epoch of a file time (before 1970 counts as 0).
pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const ETAG: &str = "\"abc\"";
    const LM: u64 = 1_000_000_000; // Sun, 09 Sep 2001 01:46:40 GMT
    const LM_TEXT: &str = "Sun, 09 Sep 2001 01:46:40 GMT";
    const EARLIER: &str = "Sat, 08 Sep 2001 01:46:40 GMT";
    const LATER: &str = "Mon, 10 Sep 2001 01:46:40 GMT";

    fn check(pairs: &[(&'static str, &str)], safe: bool, expected: Outcome) {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        assert_eq!(evaluate(&h, safe, Validators { etag: ETAG, last_modified: LM }), expected, "{pairs:?}");
    }

    const GO: Outcome = Outcome::Proceed { honor_range: true };
    const GO_NO_RANGE: Outcome = Outcome::Proceed { honor_range: false };

    #[test]
    fn if_none_match() {
        check(&[("if-none-match", ETAG)], true, Outcome::NotModified);
        check(&[("if-none-match", "W/\"abc\"")], true, Outcome::NotModified);
        check(&[("if-none-match", "\"x\", \"abc\"")], true, Outcome::NotModified);
        check(&[("if-none-match", "*")], true, Outcome::NotModified);
        check(&[("if-none-match", "\"x\"")], true, GO);
        check(&[("if-none-match", ETAG)], false, Outcome::Failed);
    }

    #[test]
    fn if_modified_since() {
        check(&[("if-modified-since", LM_TEXT)], true, Outcome::NotModified);
        check(&[("if-modified-since", LATER)], true, Outcome::NotModified);
        check(&[("if-modified-since", EARLIER)], true, GO);
        check(&[("if-modified-since", "garbage")], true, GO);
        // If-None-Match takes precedence over If-Modified-Since.
        check(&[("if-none-match", "\"x\""), ("if-modified-since", LATER)], true, GO);
    }

    #[test]
    fn if_match_and_unmodified_since() {
        check(&[("if-match", ETAG)], true, GO);
        check(&[("if-match", "*")], true, GO);
        check(&[("if-match", "\"x\"")], true, Outcome::Failed);
        check(&[("if-match", "W/\"abc\"")], true, Outcome::Failed);
        check(&[("if-unmodified-since", EARLIER)], true, Outcome::Failed);
        check(&[("if-unmodified-since", LM_TEXT)], true, GO);
        // If-Match takes precedence over If-Unmodified-Since.
        check(&[("if-match", ETAG), ("if-unmodified-since", EARLIER)], true, GO);
    }

    #[test]
    fn if_range() {
        check(&[("if-range", ETAG)], true, GO);
        check(&[("if-range", "\"other\"")], true, GO_NO_RANGE);
        check(&[("if-range", "W/\"abc\"")], true, GO_NO_RANGE);
        check(&[("if-range", LM_TEXT)], true, GO);
        check(&[("if-range", LATER)], true, GO_NO_RANGE);
    }
}
