//! A schema-driven TOML reader that collects every problem instead of stopping at the first.
//!
//! Written by hand because serde's derive stops at the first error and cannot tell the line of
//! an unknown key; servente promises `servente check` lists every problem with file, line and
//! key. Each config section implements [`Section`] by asking a [`TableReader`] for its fields,
//! each with a doc string. The same `read` code runs in a second, "doc" mode with no input, and
//! then records every key, its type, default and doc string: the reference page in
//! `docs/config.md` is generated from it, so the code and the docs cannot drift apart.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// The 1-based line, or 0 when the problem has no single place (a missing section).
    pub line: usize,
    /// The dotted key, e.g. `site[2].root`.
    pub key: String,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}: {}", self.file, self.line, self.key, self.message)
        } else if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// A TOML value reduced to what the reader needs, with the line it starts on.
#[derive(Debug, Clone)]
pub struct Node {
    pub line: usize,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    /// Keys in file order, each with the line of the key itself.
    Table(Vec<(String, usize, Node)>),
}

impl NodeKind {
    fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Str(_) => "a string",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a float",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Datetime(_) => "a date-time",
            NodeKind::Array(_) => "an array",
            NodeKind::Table(_) => "a table",
        }
    }
}

/// Parses TOML text into a [`Node`] tree; a syntax error is returned as one [`ConfigError`].
pub fn parse_toml(file: &str, text: &str) -> Result<Node, ConfigError> {
    let doc = toml_edit::Document::parse(text).map_err(|e| ConfigError {
        file: file.to_string(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        key: String::new(),
        message: format!("TOML syntax error: {}", e.message().trim()),
    })?;
    let lines = LineIndex::new(text);
    Ok(convert_table(doc.as_table(), &lines, 1))
}

struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex(starts)
    }
    fn line(&self, offset: Option<std::ops::Range<usize>>, fallback: usize) -> usize {
        match offset {
            Some(r) => self.0.partition_point(|&s| s <= r.start),
            None => fallback,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    LineIndex::new(text).line(Some(offset..offset), 0)
}

fn convert_table(t: &toml_edit::Table, lines: &LineIndex, fallback: usize) -> Node {
    let line = lines.line(t.span(), fallback);
    let mut entries = Vec::new();
    for (k, item) in t.iter() {
        let key_line = lines.line(t.key(k).and_then(|k| k.span()), line);
        if let Some(node) = convert_item(item, lines, key_line) {
            entries.push((k.to_string(), key_line, node));
        }
    }
    Node { line, kind: NodeKind::Table(entries) }
}

fn convert_item(item: &toml_edit::Item, lines: &LineIndex, fallback: usize) -> Option<Node> {
    match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(v) => Some(convert_value(v, lines, fallback)),
        toml_edit::Item::Table(t) => Some(convert_table(t, lines, fallback)),
        toml_edit::Item::ArrayOfTables(a) => {
            let line = lines.line(a.span(), fallback);
            let items = a.iter().map(|t| convert_table(t, lines, line)).collect();
            Some(Node { line, kind: NodeKind::Array(items) })
        }
    }
}

fn convert_value(v: &toml_edit::Value, lines: &LineIndex, fallback: usize) -> Node {
    use toml_edit::Value as V;
    let line = lines.line(v.span(), fallback);
    let kind = match v {
        V::String(s) => NodeKind::Str(s.value().clone()),
        V::Integer(i) => NodeKind::Int(*i.value()),
        V::Float(f) => NodeKind::Float(*f.value()),
        V::Boolean(b) => NodeKind::Bool(*b.value()),
        V::Datetime(d) => NodeKind::Datetime(d.value().to_string()),
        V::Array(a) => NodeKind::Array(a.iter().map(|v| convert_value(v, lines, line)).collect()),
        V::InlineTable(t) => {
            let mut entries = Vec::new();
            for (k, v) in t.iter() {
                let key_line = lines.line(t.key(k).and_then(|k| k.span()), line);
                entries.push((k.to_string(), key_line, convert_value(v, lines, key_line)));
            }
            NodeKind::Table(entries)
        }
    };
    Node { line, kind }
}

/// One documented key, recorded in doc mode.
#[derive(Debug, Clone)]
pub struct DocEntry {
    /// Dotted path; array-of-table sections are written `site[]`.
    pub path: String,
    /// `"section"`, `"list"` (array of tables), `"map"` or the value's type description.
    pub kind: String,
    /// The default, shown as TOML, or empty when required or none.
    pub default: String,
    pub required: bool,
    pub doc: String,
}

/// Shared state of one read: where the problems go.
pub struct Reader {
    file: String,
    errors: Vec<ConfigError>,
    docs: Option<Vec<DocEntry>>,
}

impl Reader {
    pub fn new(file: &str) -> Self {
        Reader { file: file.to_string(), errors: Vec::new(), docs: None }
    }

    /// A reader in doc mode: it reads nothing and records every key.
    pub fn for_docs() -> Self {
        Reader { file: String::new(), errors: Vec::new(), docs: Some(Vec::new()) }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn error(&mut self, line: usize, key: &str, message: impl Into<String>) {
        if self.docs.is_none() {
            self.errors.push(ConfigError { file: self.file.clone(), line, key: key.to_string(), message: message.into() });
        }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    pub fn into_docs(self) -> Vec<DocEntry> {
        self.docs.unwrap_or_default()
    }

    /// Reads the whole document as the section `T`.
    pub fn read_root<T: Section>(&mut self, root: Option<&Node>) -> T {
        let mut t = TableReader { reader: self, prefix: String::new(), node: root, used: BTreeSet::new(), line: 1 };
        let value = T::read(&mut t);
        t.finish();
        value
    }
}

/// A section of the config: a TOML table whose keys the section asks for by name.
pub trait Section: Default {
    fn read(t: &mut TableReader<'_>) -> Self;
}

/// A value that fits in one key: strings, numbers, durations, sizes, choices, lists.
pub trait Value: Sized {
    /// How the type is described in the reference docs.
    const TYPE: &'static str;
    /// Reads the value or returns the message that says why it can't.
    fn from_node(node: &Node) -> Result<Self, String>;
    /// Shows a value as it would be written in TOML, for the docs.
    fn show(&self) -> String;
}

/// Reads the keys of one table and reports those it was never asked for.
pub struct TableReader<'a> {
    reader: &'a mut Reader,
    prefix: String,
    node: Option<&'a Node>,
    used: BTreeSet<String>,
    line: usize,
}

impl<'a> TableReader<'a> {
    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_string() } else { format!("{}.{}", self.prefix, key) }
    }

    fn doc_mode(&self) -> bool {
        self.reader.docs.is_some()
    }

    fn record(&mut self, key: &str, kind: &str, default: String, required: bool, doc: &str) {
        let path = self.path(key);
        if let Some(docs) = self.reader.docs.as_mut() {
            docs.push(DocEntry { path, kind: kind.to_string(), default, required, doc: doc.to_string() });
        }
    }

    fn entry(&mut self, key: &str) -> Option<(usize, &'a Node)> {
        self.used.insert(key.to_string());
        match self.node.map(|n| &n.kind) {
            Some(NodeKind::Table(entries)) => entries.iter().find(|(k, _, _)| k == key).map(|(_, line, node)| (*line, node)),
            _ => None,
        }
    }

    /// The line where this table starts, for errors about the table as a whole.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The dotted path of this table.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The line of `key` if it is present, else the table's line.
    pub fn line_of(&self, key: &str) -> usize {
        match self.node.map(|n| &n.kind) {
            Some(NodeKind::Table(entries)) => entries.iter().find(|(k, _, _)| k == key).map(|(_, l, _)| *l).unwrap_or(self.line),
            _ => self.line,
        }
    }

    /// Whether `key` was written in the file.
    pub fn has(&self, key: &str) -> bool {
        matches!(self.node.map(|n| &n.kind), Some(NodeKind::Table(e)) if e.iter().any(|(k, _, _)| k == key))
    }

    /// Reports a problem with `key` of this table.
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let line = self.line_of(key);
        let path = self.path(key);
        self.reader.error(line, &path, message);
    }

    /// An optional key with a default.
    pub fn field<T: Value>(&mut self, key: &str, default: T, doc: &str) -> T {
        self.record(key, T::TYPE, default.show(), false, doc);
        self.value(key).unwrap_or(default)
    }

    /// An optional key without a default.
    pub fn optional<T: Value>(&mut self, key: &str, doc: &str) -> Option<T> {
        self.record(key, T::TYPE, String::new(), false, doc);
        self.value(key)
    }

    /// A key that must be present.
    pub fn required<T: Value + Default>(&mut self, key: &str, doc: &str) -> T {
        self.record(key, T::TYPE, String::new(), true, doc);
        if !self.doc_mode() && !self.has(key) {
            let path = self.path(key);
            let line = self.line;
            self.reader.error(line, &path, "this key is required");
        }
        self.value(key).unwrap_or_default()
    }

    fn value<T: Value>(&mut self, key: &str) -> Option<T> {
        let (line, node) = self.entry(key)?;
        match T::from_node(node) {
            Ok(v) => Some(v),
            Err(message) => {
                let path = self.path(key);
                self.reader.error(line.max(node.line), &path, message);
                None
            }
        }
    }

    /// A sub-table; absent means the section's defaults (its fields' defaults).
    pub fn section<T: Section>(&mut self, key: &str, doc: &str) -> T {
        let present = self.has(key);
        let value = self.optional_section(key, doc);
        match value {
            Some(v) => v,
            None if present => T::default(),
            None => {
                let (line, prefix) = (self.line, self.path(key));
                let mut child = TableReader { reader: self.reader, prefix, node: None, used: BTreeSet::new(), line };
                T::read(&mut child)
            }
        }
    }

    /// A sub-table that may be absent.
    pub fn optional_section<T: Section>(&mut self, key: &str, doc: &str) -> Option<T> {
        self.record(key, "section", String::new(), false, doc);
        let path = self.path(key);
        if self.doc_mode() {
            let mut child = TableReader { reader: self.reader, prefix: path, node: None, used: BTreeSet::new(), line: 0 };
            return Some(T::read(&mut child));
        }
        let (line, node) = self.entry(key)?;
        if !matches!(node.kind, NodeKind::Table(_)) {
            self.reader.error(line, &path, format!("expected a table, found {}", node.kind.type_name()));
            return None;
        }
        let mut child = TableReader { reader: self.reader, prefix: path, node: Some(node), used: BTreeSet::new(), line };
        let value = T::read(&mut child);
        child.finish();
        Some(value)
    }

    /// An array of tables (`[[key]]`).
    pub fn list<T: Section>(&mut self, key: &str, doc: &str) -> Vec<T> {
        self.record(key, "list", String::new(), false, doc);
        let path = self.path(key);
        if self.doc_mode() {
            let mut child = TableReader { reader: self.reader, prefix: format!("{path}[]"), node: None, used: BTreeSet::new(), line: 0 };
            T::read(&mut child);
            return Vec::new();
        }
        let Some((line, node)) = self.entry(key) else { return Vec::new() };
        let items: Vec<&Node> = match &node.kind {
            NodeKind::Array(items) => items.iter().collect(),
            NodeKind::Table(_) => vec![node],
            other => {
                self.reader.error(line, &path, format!("expected an array of tables, found {}", other.type_name()));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            if !matches!(item.kind, NodeKind::Table(_)) {
                self.reader.error(item.line, &item_path, format!("expected a table, found {}", item.kind.type_name()));
                continue;
            }
            let mut child =
                TableReader { reader: self.reader, prefix: item_path, node: Some(item), used: BTreeSet::new(), line: item.line };
            out.push(T::read(&mut child));
            child.finish();
        }
        out
    }

    /// A table of free-form keys, each holding a `T` (response headers, error pages).
    pub fn map<T: Value>(&mut self, key: &str, doc: &str) -> Vec<(String, T)> {
        self.record(key, &format!("table of {}", T::TYPE), String::new(), false, doc);
        let path = self.path(key);
        let Some((line, node)) = self.entry(key) else { return Vec::new() };
        let NodeKind::Table(entries) = &node.kind else {
            self.reader.error(line, &path, format!("expected a table, found {}", node.kind.type_name()));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, kline, v) in entries {
            match T::from_node(v) {
                Ok(value) => out.push((k.clone(), value)),
                Err(message) => self.reader.error(*kline, &format!("{path}.{k}"), message),
            }
        }
        out
    }

    /// Reports every key in the table that no field asked for.
    fn finish(self) {
        if let Some(NodeKind::Table(entries)) = self.node.map(|n| &n.kind) {
            for (k, line, _) in entries {
                if !self.used.contains(k) {
                    let path = if self.prefix.is_empty() { k.clone() } else { format!("{}.{}", self.prefix, k) };
                    let known: Vec<&str> = self.used.iter().map(String::as_str).collect();
                    let hint = closest(k, &known).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
                    self.reader.error(*line, &path, format!("unknown key{hint}"));
                }
            }
        }
    }
}

/// The known key nearest to a misspelt one, if any is near enough to be a likely typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known.iter().map(|k| (edit_distance(key, k), *k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl Value for String {
    const TYPE: &'static str = "string";
    fn from_node(node: &Node) -> Result<Self, String> {
        match &node.kind {
            NodeKind::Str(s) => Ok(s.clone()),
            other => Err(format!("expected a string, found {}", other.type_name())),
        }
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

impl Value for bool {
    const TYPE: &'static str = "boolean";
    fn from_node(node: &Node) -> Result<Self, String> {
        match &node.kind {
            NodeKind::Bool(b) => Ok(*b),
            other => Err(format!("expected true or false, found {}", other.type_name())),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            const TYPE: &'static str = "integer";
            fn from_node(node: &Node) -> Result<Self, String> {
                match &node.kind {
                    NodeKind::Int(i) => <$t>::try_from(*i)
                        .map_err(|_| format!("{i} is out of range (0 to {})", <$t>::MAX)),
                    other => Err(format!("expected an integer, found {}", other.type_name())),
                }
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_value!(u16, u32, u64, usize);

impl<T: Value> Value for Vec<T> {
    const TYPE: &'static str = "array";
    fn from_node(node: &Node) -> Result<Self, String> {
        match &node.kind {
            NodeKind::Array(items) => {
                items.iter().enumerate().map(|(i, n)| T::from_node(n).map_err(|e| format!("item {i}: {e}"))).collect()
            }
            // A single value where a list is expected is read as a list of one.
            _ => T::from_node(node).map(|v| vec![v]),
        }
    }
    fn show(&self) -> String {
        format!("[{}]", self.iter().map(Value::show).collect::<Vec<_>>().join(", "))
    }
}

/// A duration written as `"30s"`, `"500ms"`, `"2m"`, `"1h"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seconds(pub Duration);

impl Value for Seconds {
    const TYPE: &'static str = "duration (\"500ms\", \"30s\", \"5m\")";
    fn from_node(node: &Node) -> Result<Self, String> {
        match &node.kind {
            NodeKind::Int(i) if *i >= 0 => capped(Duration::from_secs(*i as u64), &i.to_string()).map(Seconds),
            NodeKind::Str(s) => parse_duration(s).map(Seconds),
            other => Err(format!("expected a duration such as \"30s\", found {}", other.type_name())),
        }
    }
    fn show(&self) -> String {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) { format!("\"{}s\"", ms / 1000) } else { format!("\"{ms}ms\"") }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration such as \"30s\" or \"500ms\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(|| too_long(s))?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(|| too_long(s))?),
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)")),
    };
    capped(d, s)
}

/// The longest duration a config may give: ten years. Every timeout is added to the clock's
/// reading somewhere, which a larger one could overflow (a panic in that connection's task).
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

fn capped(d: Duration, written: &str) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(too_long(written));
    }
    Ok(d)
}

fn too_long(written: &str) -> String {
    format!("`{written}` is longer than {} days, the longest duration servente takes", MAX_DURATION.as_secs() / 86_400)
}

/// A size in bytes, written as an integer or `"16KiB"`, `"2MiB"`, `"1GiB"` (also KB, MB, GB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl Value for ByteSize {
    const TYPE: &'static str = "size (bytes, or \"64KiB\", \"10MiB\")";
    fn from_node(node: &Node) -> Result<Self, String> {
        match &node.kind {
            NodeKind::Int(i) if *i >= 0 => Ok(ByteSize(*i as u64)),
            NodeKind::Str(s) => parse_size(s).map(ByteSize),
            other => Err(format!("expected a size such as \"10MiB\", found {}", other.type_name())),
        }
    }
    fn show(&self) -> String {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size && n.is_multiple_of(size) {
                return format!("\"{}{unit}\"", n / size);
            }
        }
        n.to_string()
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size such as \"64KiB\" or \"10MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// Declares a config enum read from one of a fixed set of strings.
#[macro_export]
macro_rules! choice {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? } default $default:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $variant,)+ }
        impl Default for $name {
            fn default() -> Self { $name::$default }
        }
        impl $name {
            /// The variant (kept for call sites that read like `role.get()`).
            pub fn get(self) -> Self { self }
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl $crate::reader::Value for $name {
            const TYPE: &'static str = concat!("one of ", $("\"", $text, "\" "),+);
            fn from_node(node: &$crate::reader::Node) -> Result<Self, String> {
                let s = <String as $crate::reader::Value>::from_node(node)?;
                match s.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("`{}` is not one of: {}", s, [$($text),+].join(", "))),
                }
            }
            fn show(&self) -> String { format!("{:?}", self.as_str()) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct Inner {
        name: String,
        size: ByteSize,
    }
    impl Section for Inner {
        fn read(t: &mut TableReader<'_>) -> Self {
            Inner { name: t.required("name", "The name."), size: t.field("size", ByteSize(1024), "A size.") }
        }
    }
    #[derive(Default, Debug)]
    struct Outer {
        timeout: Seconds,
        items: Vec<Inner>,
        flag: bool,
    }
    impl Section for Outer {
        fn read(t: &mut TableReader<'_>) -> Self {
            Outer {
                timeout: t.field("timeout", Seconds(Duration::from_secs(5)), "A timeout."),
                flag: t.field("flag", false, "A flag."),
                items: t.list("item", "Items."),
            }
        }
    }

    fn read(text: &str) -> (Outer, Vec<String>) {
        let mut r = Reader::new("t.toml");
        let root = parse_toml("t.toml", text).map_err(|e| e.to_string()).expect("valid toml in test");
        let v = r.read_root::<Outer>(Some(&root));
        (v, r.into_errors().iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn reads_values_and_defaults() {
        let (v, errors) = read("timeout = \"250ms\"\n[[item]]\nname = \"a\"\n[[item]]\nname = \"b\"\nsize = \"2MiB\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(v.timeout.0, Duration::from_millis(250));
        assert_eq!(v.items.len(), 2);
        assert_eq!(v.items[0].size.0, 1024);
        assert_eq!(v.items[1].size.0, 2 << 20);
        assert_eq!(v.items[1].name, "b");
        assert!(!v.flag);
    }

    #[derive(Default, Debug)]
    struct WithSection {
        inner: Outer,
    }
    impl Section for WithSection {
        fn read(t: &mut TableReader<'_>) -> Self {
            WithSection { inner: t.section("inner", "A section.") }
        }
    }

    #[test]
    fn absent_section_gets_field_defaults() {
        let mut r = Reader::new("t.toml");
        let root = parse_toml("t.toml", "").map_err(|e| e.to_string()).expect("empty toml");
        let v: WithSection = r.read_root(Some(&root));
        assert_eq!(v.inner.timeout.0, Duration::from_secs(5));
        assert!(r.into_errors().is_empty());
    }

    #[test]
    fn collects_every_problem_with_line_and_key() {
        let (_, errors) = read("timout = 3\nflag = \"yes\"\n[[item]]\nsize = \"12 parsecs\"\n");
        assert_eq!(
            errors,
            vec![
                "t.toml:2: flag: expected true or false, found a string",
                "t.toml:3: item[0].name: this key is required",
                "t.toml:4: item[0].size: unknown size unit `parsecs` (use KiB, MiB or GiB)",
                "t.toml:1: timout: unknown key (did you mean `timeout`?)",
            ]
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse_toml("t.toml", "a = 1\nb = [\n").expect_err("broken toml");
        assert!(e.line >= 2, "{e}");
    }

    #[test]
    fn doc_mode_lists_every_key() {
        let mut r = Reader::for_docs();
        let _: Outer = r.read_root(None);
        let paths: Vec<String> = r.into_docs().into_iter().map(|d| d.path).collect();
        assert_eq!(paths, vec!["timeout", "flag", "item", "item[].name", "item[].size"]);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 fortnights").is_err());
        assert_eq!(parse_duration("87600h"), Ok(Duration::from_secs(87_600 * 3600)));
        for huge in ["87601h", "18446744073709551615h", "9999999999999m", "400000000s"] {
            assert!(parse_duration(huge).is_err_and(|e| e.contains("longest duration")), "{huge}");
        }
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("3"), Ok(3));
        assert!(parse_size("99999999999GiB").is_err());
    }
}
