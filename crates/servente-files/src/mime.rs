//! The media type of a file, from its name's extension as `mime_guess` knows it, remembered
//! per thread.
//!
//! `mime_guess` looks an extension up without regard to case in a table of about 1,500, which
//! costs some 1,100 instructions (callgrind) and, on a cold request, cache misses: a WebDAV
//! download paid that on every request (1.5% of a cold GET's CPU samples), a listing for every
//! file. The extensions one server meets are few, so each thread keeps those it has looked up.

use std::cell::RefCell;
use std::collections::HashMap;

const UNKNOWN: &str = "application/octet-stream";

/// Extensions remembered per thread at most; past that, new ones are looked up each time.
const KEPT: usize = 256;

/// Longer extensions are not remembered (nor are they in `mime_guess`'s table).
const LONGEST_KEPT: usize = 16;

thread_local! {
    static SEEN: RefCell<HashMap<Box<str>, &'static str, foldhash::fast::RandomState>> = RefCell::new(HashMap::default());
}

/// The media type for a file named `name`; `application/octet-stream` when unknown.
pub fn of_name(name: &str) -> &'static str {
    let Some((_, ext)) = name.rsplit_once('.') else { return UNKNOWN };
    if ext.len() > LONGEST_KEPT {
        return look_up(ext);
    }
    SEEN.with(|seen| {
        if let Some(m) = seen.borrow().get(ext) {
            return *m;
        }
        let m = look_up(ext);
        let mut seen = seen.borrow_mut();
        if seen.len() < KEPT {
            seen.insert(ext.into(), m);
        }
        m
    })
}

fn look_up(ext: &str) -> &'static str {
    mime_guess::from_ext(ext).first_raw().unwrap_or(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_answers_are_mime_guess_answers() {
        for _ in 0..2 {
            for name in ["a.txt", "b.TXT", "c.tar.gz", "photo.JPG", "x.bin", "noext", "dot.", ".bashrc", "v.mp4", "long.abcdefghijklmnopq"]
            {
                let want = name.rsplit_once('.').and_then(|(_, e)| mime_guess::from_ext(e).first_raw()).unwrap_or(UNKNOWN);
                assert_eq!(of_name(name), want, "{name}");
            }
        }
        assert_eq!(of_name("a.txt"), "text/plain");
        assert_eq!(of_name("noext"), UNKNOWN);
    }

    #[test]
    fn the_memory_is_bounded() {
        for i in 0..(KEPT + 50) {
            of_name(&format!("f.x{i}"));
        }
        assert!(SEEN.with(|s| s.borrow().len()) <= KEPT);
        assert_eq!(of_name("g.x9999"), UNKNOWN, "looked up, not remembered");
        assert!(SEEN.with(|s| s.borrow().len()) <= KEPT, "a lookup past the bound is not kept");
    }
}
