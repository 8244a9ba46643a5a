//! The access log: one line per HTTP request, in the combined format or as JSON, to standard
//! output or a file.
//!
//! Request tasks format their line and hand it to one writer thread through a channel, so a
//! slow disk never stalls a response; the writer flushes whenever the channel runs dry.

use std::io::Write;
use std::sync::mpsc;
use std::time::SystemTime;

use servente_config::{AccessLog as AccessLogConfig, AccessLogFormat};

/// What is known of a request once its response is finished.
pub struct AccessRecord<'a> {
    pub peer: &'a str,
    pub user: Option<&'a str>,
    pub time: SystemTime,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub host: Option<&'a str>,
    pub site: &'a str,
    pub duration_micros: u64,
}

/// A handle to the access log; cheap to clone. `None` inside means the log is off.
#[derive(Clone)]
pub struct AccessLogger {
    inner: Option<(mpsc::Sender<String>, AccessLogFormat)>,
}

impl AccessLogger {
    pub fn off() -> Self {
        AccessLogger { inner: None }
    }

    /// Opens the log the config asks for and starts its writer thread.
    pub fn open(config: &AccessLogConfig) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match config.output.as_str() {
            "off" | "" => return Ok(Self::off()),
            "stdout" | "-" => Box::new(std::io::stdout()),
            path => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open access log {path}: {e}")))?;
                Box::new(f)
            }
        };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
            while let Ok(line) = rx.recv() {
                let _ = w.write_all(line.as_bytes());
                while let Ok(more) = rx.try_recv() {
                    let _ = w.write_all(more.as_bytes());
                }
                let _ = w.flush();
            }
        })?;
        Ok(AccessLogger { inner: Some((tx, config.format.get())) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn log(&self, r: &AccessRecord<'_>) {
        if let Some((tx, format)) = &self.inner {
            let line = match format {
                AccessLogFormat::Json => format_json(r),
                _ => format_combined(r),
            };
            let _ = tx.send(line);
        }
    }
}

/// `peer - user [10/Oct/2000:13:55:36 +0000] "GET /x HTTP/1.1" 200 2326 "referer" "agent"`
pub fn format_combined(r: &AccessRecord<'_>) -> String {
    format!(
        "{} - {} [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"\n",
        r.peer,
        // A user name is unquoted in this format: spaces would shift the fields, so they are
        // escaped too (names from the directory never have any; claimed ones might).
        escape_quoted(r.user.unwrap_or("-")).replace(' ', "\\x20"),
        clf_time(r.time),
        r.method,
        escape_quoted(r.target),
        r.version,
        r.status,
        r.bytes,
        escape_quoted(r.referer.unwrap_or("-")),
        escape_quoted(r.user_agent.unwrap_or("-")),
    )
}

pub fn format_json(r: &AccessRecord<'_>) -> String {
    let mut line = serde_json::json!({
        "time": httpdate::fmt_http_date(r.time),
        "peer": r.peer,
        "user": r.user,
        "method": r.method,
        "target": r.target,
        "version": r.version,
        "host": r.host,
        "site": r.site,
        "status": r.status,
        "bytes": r.bytes,
        "referer": r.referer,
        "user_agent": r.user_agent,
        "duration_us": r.duration_micros,
    })
    .to_string();
    line.push('\n');
    line
}

/// Escapes quotes, backslashes and control bytes so a hostile target cannot forge log lines.
fn escape_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The time in the Common Log Format, UTC: `10/Oct/2000:13:55:36 +0000`.
fn clf_time(t: SystemTime) -> String {
    // httpdate gives "Tue, 10 Oct 2000 13:55:36 GMT"; its fields are at fixed positions.
    let h = httpdate::fmt_http_date(t);
    let (day, month, year, clock) = (&h[5..7], &h[8..11], &h[12..16], &h[17..25]);
    format!("{day}/{month}/{year}:{clock} +0000")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record<'a>(target: &'a str) -> AccessRecord<'a> {
        AccessRecord {
            peer: "127.0.0.1",
            user: None,
            time: UNIX_EPOCH + Duration::from_secs(971_186_136),
            method: "GET",
            target,
            version: "HTTP/1.1",
            status: 200,
            bytes: 2326,
            referer: None,
            user_agent: Some("curl/7.88"),
            host: Some("example.org"),
            site: "default",
            duration_micros: 120,
        }
    }

    #[test]
    fn combined_format() {
        assert_eq!(
            format_combined(&record("/a b")),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a b HTTP/1.1\" 200 2326 \"-\" \"curl/7.88\"\n"
        );
    }

    #[test]
    fn hostile_target_cannot_break_the_line() {
        let line = format_combined(&record("/x\" 200 0\n1.2.3.4 - -"));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("/x\\\" 200 0\\x0a1.2.3.4"));
    }

    #[test]
    fn json_format() {
        let v: serde_json::Value = serde_json::from_str(&format_json(&record("/"))).expect("json line");
        assert_eq!(v["status"], 200);
        assert_eq!(v["site"], "default");
        assert_eq!(v["user_agent"], "curl/7.88");
    }
}
