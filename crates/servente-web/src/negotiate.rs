//! Choosing a content coding from Accept-Encoding (with q-values), and matching paths against
//! the glob patterns of `[[site.rule]]`. No IO.

/// A content coding servente can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    /// In the server's order of preference when the client weighs them equally.
    pub const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The file extension of a precompressed sidecar.
    pub fn extension(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zst",
            Coding::Gzip => "gz",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The client's weight (0 to 1000) for each of [`Coding::ALL`], from an Accept-Encoding value.
pub fn weights(accept_encoding: &str) -> [u16; 3] {
    let mut explicit = [None; 3];
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim();
        let mut q = 1000;
        for p in parts {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = parse_q(v.trim()).unwrap_or(0);
            }
        }
        if token == "*" {
            star = Some(q);
        } else if let Some(i) = Coding::ALL.iter().position(|c| token.eq_ignore_ascii_case(c.token())) {
            explicit[i] = Some(q);
        } else if token.eq_ignore_ascii_case("x-gzip") {
            explicit[Coding::Gzip.index()] = Some(q);
        }
    }
    explicit.map(|e| e.or(star).unwrap_or(0))
}

/// The coding to use among those `available` (indexed like [`Coding::ALL`]), or None for
/// identity. The highest weight wins; ties go to the server's preference.
pub fn choose(accept_encoding: &str, available: [bool; 3]) -> Option<Coding> {
    let w = weights(accept_encoding);
    let mut best: Option<(u16, Coding)> = None;
    for c in Coding::ALL {
        let q = w[c.index()];
        if available[c.index()] && q > 0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Parses a qvalue ("0.8", "1", "0.125") into thousandths.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u16 = int.parse().ok()?;
    let frac_val: u16 = if frac.is_empty() { 0 } else { format!("{frac:0<3}").parse().ok()? };
    let q = int * 1000 + frac_val;
    (q <= 1000).then_some(q)
}

/// Whether a path matches a rule pattern: `*` matches within one segment, `**` any number of
/// segments, and a pattern ending in `/` matches everything below it.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('/')
        && !prefix.contains('*')
    {
        return path.starts_with(pattern) || path == prefix;
    }
    glob(pattern.as_bytes(), path.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            // `/**/` also matches a single `/`.
            if rest.first() == Some(&b'/') && glob(&rest[1..], s) {
                return true;
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [bool; 3] = [true, true, true];

    #[test]
    fn negotiation() {
        assert_eq!(choose("gzip, deflate, br, zstd", ALL), Some(Coding::Br));
        assert_eq!(choose("gzip;q=1.0, br;q=0.5", ALL), Some(Coding::Gzip));
        assert_eq!(choose("br;q=0, gzip", ALL), Some(Coding::Gzip));
        assert_eq!(choose("*", ALL), Some(Coding::Br));
        assert_eq!(choose("*;q=0.5, gzip;q=0.9", ALL), Some(Coding::Gzip));
        assert_eq!(choose("identity", ALL), None);
        assert_eq!(choose("", ALL), None);
        assert_eq!(choose("br", [false, true, true]), None);
        assert_eq!(choose("zstd;q=0.9,gzip;q=0.9", ALL), Some(Coding::Zstd));
        assert_eq!(choose("gzip;q=2", ALL), None);
        assert_eq!(choose("x-gzip", ALL), Some(Coding::Gzip));
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q("1.5"), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("/assets/", "/assets/a/b.css"));
        assert!(glob_match("/assets/", "/assets"));
        assert!(!glob_match("/assets/", "/assetsx"));
        assert!(glob_match("/*.html", "/index.html"));
        assert!(!glob_match("/*.html", "/a/index.html"));
        assert!(glob_match("/**/*.css", "/a/b/c.css"));
        assert!(glob_match("/**/*.css", "/c.css"));
        assert!(glob_match("/assets/**", "/assets/x/y"));
        assert!(glob_match("/exact.txt", "/exact.txt"));
        assert!(!glob_match("/exact.txt", "/exact.txt2"));
    }
}
