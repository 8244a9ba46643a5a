//! Folder listings: HTML for people, JSON for scripts.

use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::path::encode_path;

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: u64,
}

/// Reads a folder, folders first then by name. Hidden entries are left out when asked, and so
/// is every entry `allowed` refuses (links the symlink policy would not follow).
pub fn read(dir: &Path, hide_dotfiles: bool, allowed: impl Fn(&Path) -> bool) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else { continue };
        if hide_dotfiles && name.starts_with('.') {
            continue;
        }
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_symlink()) && !allowed(&path) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        entries.push(Entry {
            name,
            is_dir: meta.is_dir(),
            size: if meta.is_dir() { 0 } else { meta.len() },
            modified: meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()).unwrap_or(0),
        });
    }
    entries.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
    Ok(entries)
}

pub fn json(entries: &[Entry]) -> String {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "type": if e.is_dir { "folder" } else { "file" },
                "size": e.size,
                "modified": httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(e.modified)),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

pub fn html(url_path: &str, entries: &[Entry]) -> String {
    let title = escape(url_path);
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Index of {title}</title><style>body{{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem}}\
         table{{border-collapse:collapse;width:100%}}td,th{{padding:.3rem .6rem;text-align:left;border-bottom:1px solid #ddd}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}a{{text-decoration:none}}</style></head>\n<body><h1>Index of {title}</h1>\
         <table><thead><tr><th>Name</th><th>Size</th><th>Modified</th></tr></thead><tbody>\n"
    );
    if url_path != "/" {
        out.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for e in entries {
        let slash = if e.is_dir { "/" } else { "" };
        let href = format!("{}{slash}", encode_path(&e.name));
        let size = if e.is_dir { String::new() } else { human_size(e.size) };
        let modified = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(e.modified));
        out.push_str(&format!(
            "<tr><td><a href=\"{}\">{}{slash}</a></td><td class=\"n\">{size}</td><td>{modified}</td></tr>\n",
            escape(&href),
            escape(&e.name)
        ));
    }
    out.push_str("</tbody></table></body></html>\n");
    out
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_escaped() {
        let entries = vec![Entry { name: "<script>alert(1)</script>\".txt".into(), is_dir: false, size: 2048, modified: 0 }];
        let page = html("/a&b/", &entries);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("Index of /a&amp;b/"));
        assert!(page.contains("2.0 KiB"));
    }

    #[test]
    fn json_lists_entries() {
        let entries = vec![Entry { name: "d".into(), is_dir: true, size: 0, modified: 0 }];
        let v: serde_json::Value = serde_json::from_str(&json(&entries)).expect("json");
        assert_eq!(v[0]["type"], "folder");
    }
}
