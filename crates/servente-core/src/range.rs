//! Byte ranges (RFC 9110 section 14): parsing the Range header against a length, and the
//! layout of a multipart/byteranges body. No IO.

/// An inclusive byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a Range header asks of a representation of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// No usable Range header (absent, another unit, malformed or abusive): send it all.
    Full,
    /// One or more satisfiable ranges, in the order to send them.
    Partial(Vec<ByteRange>),
    /// Syntactically fine, but no range overlaps the representation: 416.
    Unsatisfiable,
}

/// Most ranges accepted in one request; more is treated as no Range header at all, as RFC 9110
/// allows, so that a request cannot make the server assemble thousands of parts.
const MAX_RANGES: usize = 64;

/// Interprets a Range header value for a representation of `len` bytes.
pub fn parse(value: &str, len: u64) -> Ranges {
    let Some((unit, specs)) = value.split_once('=') else { return Ranges::Full };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Full;
    }
    let mut out = Vec::new();
    let mut count = 0;
    for spec in specs.split(',').map(str::trim) {
        if spec.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return Ranges::Full;
        }
        let Some((first, last)) = spec.split_once('-') else { return Ranges::Full };
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            let Ok(suffix) = last.parse::<u64>() else { return Ranges::Full };
            if suffix == 0 || len == 0 { None } else { Some(ByteRange { start: len.saturating_sub(suffix), end: len - 1 }) }
        } else {
            let Ok(start) = first.parse::<u64>() else { return Ranges::Full };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match last.parse::<u64>() {
                    Ok(end) if end >= start => end,
                    _ => return Ranges::Full,
                }
            };
            (start < len).then(|| ByteRange { start, end: end.min(len - 1) })
        };
        out.extend(range);
    }
    if count == 0 {
        return Ranges::Full;
    }
    if out.is_empty() {
        return Ranges::Unsatisfiable;
    }
    coalesce_if_overlapping(&mut out);
    Ranges::Partial(out)
}

/// Overlapping ranges are merged (in ascending order), so no byte is sent twice.
fn coalesce_if_overlapping(ranges: &mut Vec<ByteRange>) {
    let mut sorted = ranges.clone();
    sorted.sort_by_key(|r| r.start);
    if sorted.windows(2).all(|w| w[0].end < w[1].start) {
        return;
    }
    let mut merged: Vec<ByteRange> = Vec::new();
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(1) => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// The framing of a multipart/byteranges body: each part's header, then the closing line.
pub struct Multipart {
    pub boundary: String,
    pub part_headers: Vec<String>,
    pub closing: String,
}

impl Multipart {
    pub fn new(boundary: String, content_type: &str, ranges: &[ByteRange], len: u64) -> Self {
        let part_headers = ranges
            .iter()
            .map(|r| {
                format!("\r\n--{boundary}\r\ncontent-type: {content_type}\r\ncontent-range: bytes {}-{}/{len}\r\n\r\n", r.start, r.end)
            })
            .collect();
        let closing = format!("\r\n--{boundary}--\r\n");
        Multipart { boundary, part_headers, closing }
    }

    /// Total body length for these ranges.
    pub fn body_len(&self, ranges: &[ByteRange]) -> u64 {
        self.part_headers.iter().map(|h| h.len() as u64).sum::<u64>()
            + ranges.iter().map(ByteRange::len).sum::<u64>()
            + self.closing.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-99", 1000), Ranges::Partial(vec![r(0, 99)]));
        assert_eq!(parse("bytes=900-", 1000), Ranges::Partial(vec![r(900, 999)]));
        assert_eq!(parse("bytes=-100", 1000), Ranges::Partial(vec![r(900, 999)]));
        assert_eq!(parse("bytes=-5000", 1000), Ranges::Partial(vec![r(0, 999)]));
        assert_eq!(parse("bytes=990-5000", 1000), Ranges::Partial(vec![r(990, 999)]));
        assert_eq!(parse("BYTES = 1-1", 1000), Ranges::Partial(vec![r(1, 1)]));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse("bytes=1000-", 1000), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 1000), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=0-0", 0), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=5000-6000, 7000-", 1000), Ranges::Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for v in ["items=0-1", "bytes=5-1", "bytes=a-b", "bytes", "bytes=", "bytes=1", "bytes=--1"] {
            assert_eq!(parse(v, 1000), Ranges::Full, "{v}");
        }
        let many = format!("bytes={}", (0..65).map(|i| format!("{i}-{i}")).collect::<Vec<_>>().join(","));
        assert_eq!(parse(&many, 1000), Ranges::Full);
    }

    #[test]
    fn multiple_and_overlapping() {
        assert_eq!(parse("bytes=0-0, -1", 10), Ranges::Partial(vec![r(0, 0), r(9, 9)]));
        assert_eq!(parse("bytes=5-9, 0-1", 10), Ranges::Partial(vec![r(5, 9), r(0, 1)]));
        assert_eq!(parse("bytes=0-5, 3-8, 20-", 10), Ranges::Partial(vec![r(0, 8)]));
        assert_eq!(parse("bytes=0-1, 1000-", 10), Ranges::Partial(vec![r(0, 1)]));
    }

    #[test]
    fn multipart_length_is_exact() {
        let ranges = [r(0, 0), r(9, 9)];
        let m = Multipart::new("B".into(), "text/plain", &ranges, 10);
        let mut body = String::new();
        for (h, _) in m.part_headers.iter().zip(&ranges) {
            body.push_str(h);
            body.push('x');
        }
        body.push_str(&m.closing);
        assert_eq!(m.body_len(&ranges), body.len() as u64);
        assert!(m.part_headers[1].contains("content-range: bytes 9-9/10"));
    }
}
