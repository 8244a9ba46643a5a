//! Request paths to safe relative file paths: percent-decoding once, dot segments, and the
//! checks that keep a request inside its site's root. No IO.
//!
//! The raw path is split on `/` before decoding, so an encoded separator (`%2F`, `%5C`) can
//! never create a new path component; it is refused instead. `..` may climb inside the path
//! but never above the root. Every decoded segment is checked for NUL and backslashes.

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Malformed: bad percent-encoding, not UTF-8, NUL, encoded separators, `..` above the root.
    BadRequest,
    /// A hidden (dot) file or folder while dotfiles are hidden.
    Hidden,
}

/// A normalized request path. In the common case (nothing to decode or collapse) both forms
/// borrow from the request, so the hot path allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanPath<'a> {
    /// Relative path under the root, segments joined by `/`, no leading slash; empty for the root.
    pub relative: Cow<'a, str>,
    /// The same as a URL path: a leading `/`, and a trailing one when asked for (not encoded).
    pub url_path: Cow<'a, str>,
    /// Whether the request path ended with `/` (asks for a folder).
    pub trailing_slash: bool,
}

fn url_path_of(relative: &str, trailing_slash: bool) -> String {
    let mut s = String::with_capacity(relative.len() + 2);
    s.push('/');
    s.push_str(relative);
    if trailing_slash && !relative.is_empty() {
        s.push('/');
    }
    s
}

/// Decodes and normalizes `raw` (the path part of the request target).
pub fn clean(raw: &str, hide_dotfiles: bool) -> Result<CleanPath<'_>, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::BadRequest)?;
    // Fast path for the common case: nothing to decode and no empty or dot segments.
    if !rest.contains(['%', '\\']) && !raw.contains("//") && !raw.contains("/.") {
        let trailing_slash = rest.is_empty() || rest.ends_with('/');
        let relative = rest.strip_suffix('/').unwrap_or(rest);
        return Ok(CleanPath { relative: Cow::Borrowed(relative), url_path: Cow::Borrowed(raw), trailing_slash });
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = raw.len() == 1;
    let mut hidden = false;
    for (i, raw_segment) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        let segment = decode(raw_segment)?;
        match segment.as_str() {
            "" | "." => {
                if last {
                    trailing_slash = true;
                }
            }
            ".." => {
                segments.pop().ok_or(PathError::BadRequest)?;
                if last {
                    trailing_slash = true;
                }
            }
            s => {
                if s.contains(['/', '\\', '\0']) {
                    return Err(PathError::BadRequest);
                }
                trailing_slash = false;
                segments.push(segment);
            }
        }
    }
    for s in &segments {
        if s.starts_with('.') && s != ".well-known" {
            hidden = true;
        }
    }
    if hidden && hide_dotfiles {
        return Err(PathError::Hidden);
    }
    let relative = segments.join("/");
    Ok(CleanPath { url_path: Cow::Owned(url_path_of(&relative, trailing_slash)), relative: Cow::Owned(relative), trailing_slash })
}

fn decode(segment: &str) -> Result<String, PathError> {
    if !segment.contains('%') {
        return Ok(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadRequest)?;
            let s = std::str::from_utf8(hex).map_err(|_| PathError::BadRequest)?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| PathError::BadRequest)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadRequest)
}

/// Percent-encodes a relative path for use in a URL (links in listings, redirects).
pub fn encode_path(path: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'\\')
        .add(b'^')
        .add(b'|')
        .add(b'[')
        .add(b']');
    percent_encoding::utf8_percent_encode(path, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, bool) {
        let c = clean(raw, true).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        assert_eq!(c.url_path, url_path_of(&c.relative, c.trailing_slash), "{raw}");
        (c.relative.into_owned(), c.trailing_slash)
    }

    #[test]
    fn normal_paths() {
        assert_eq!(ok("/"), ("".into(), true));
        assert_eq!(ok("/a/b.txt"), ("a/b.txt".into(), false));
        assert_eq!(ok("/a/b/"), ("a/b".into(), true));
        assert_eq!(ok("//a///b"), ("a/b".into(), false));
        assert_eq!(ok("/a/./b"), ("a/b".into(), false));
        assert_eq!(ok("/a/c/../b"), ("a/b".into(), false));
        assert_eq!(ok("/a/.."), ("".into(), true));
        assert_eq!(ok("/caf%C3%A9%20x"), ("café x".into(), false));
        assert_eq!(ok("/.well-known/x"), (".well-known/x".into(), false));
    }

    #[test]
    fn decoded_once() {
        // %252e is a literal "%2e" file name, not a dot.
        assert_eq!(ok("/%252e%252e/x"), ("%2e%2e/x".into(), false));
    }

    #[test]
    fn hostile_paths() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/a/%2e%2e/%2e%2e/x",
            "/a%2fb",
            "/a%2Fb",
            "/..%2fetc",
            "/a%5cb",
            "/a%00b",
            "/bad%zz",
            "/trunc%4",
            "/%ff",
            "relative",
            "",
        ] {
            assert_eq!(clean(raw, true), Err(PathError::BadRequest), "{raw}");
        }
    }

    #[test]
    fn dotfiles() {
        assert_eq!(clean("/.git/config", true), Err(PathError::Hidden));
        assert_eq!(clean("/a/.env", true), Err(PathError::Hidden));
        assert_eq!(clean("/%2eenv", true), Err(PathError::Hidden));
        assert_eq!(clean("/.git/config", false).map(|c| c.relative.into_owned()), Ok(".git/config".to_string()));
    }

    #[test]
    fn encoding_for_links() {
        assert_eq!(encode_path("a b/c#d?.txt"), "a%20b/c%23d%3F.txt");
        assert_eq!(encode_path("café"), "caf%C3%A9");
    }
}
