//! Plain GET and HEAD of a file, answered by servente itself: the file is read on the
//! blocking pool in 512 KiB chunks ahead of the socket (up to four chunks queued), where
//! dav-server would read one chunk, send it, then read the next. Requests with a range or a
//! precondition go to dav-server, which implements those.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use dav_server::davpath::DavPath;
use dav_server::fs::DavMetaData;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use servente_core::Body;

use crate::fs::{Caller, Node, StdMeta, Storage};

const CHUNK: usize = 512 << 10;

/// Files up to this size are sent from one read; larger ones stream, so the first bytes leave
/// before the whole file is read.
const SMALL: u64 = 128 << 10;

/// Whether dav-server must answer (ranges and conditions).
pub fn needs_dav_server(h: &HeaderMap) -> bool {
    ["range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range", "if"].iter().any(|n| h.contains_key(*n))
}

pub async fn answer(st: &Arc<Storage>, caller: &Caller, dav: &DavPath, head: bool) -> Option<Response<Body>> {
    let Ok(Node::Area { depth, .. }) = st.resolve(dav, &caller.who) else { return None };
    if depth == 0 {
        return None;
    }
    let disk = st.disk_path(dav);
    // Small files are read whole in the same blocking call that opens them.
    let (file, meta, whole) = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&disk).ok()?;
        let m = f.metadata().ok()?;
        if !m.is_file() {
            return None;
        }
        if !head && m.len() <= SMALL {
            let mut buf = Vec::with_capacity(m.len() as usize);
            f.read_to_end(&mut buf).ok()?;
            return Some((None, m, Some(buf)));
        }
        Some((Some(f), m, None))
    })
    .await
    .ok()??;
    let meta = StdMeta(meta);
    let (body, len) = match (whole, file) {
        (Some(buf), _) => {
            let n = buf.len() as u64;
            (Body::full(buf), n)
        }
        (None, Some(f)) if !head => (stream(f), meta.len()),
        _ => (Body::empty(), meta.len()),
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let name = dav.file_name().unwrap_or("");
    let mime = name.rsplit_once('.').and_then(|(_, ext)| mime_guess::from_ext(ext).first_raw()).unwrap_or("application/octet-stream");
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(tag) = meta.etag()
        && let Ok(v) = HeaderValue::from_str(&format!("\"{tag}\""))
    {
        h.insert(header::ETAG, v);
    }
    if let Ok(t) = meta.modified()
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    *r.status_mut() = StatusCode::OK;
    Some(r)
}

/// A file as a body, read ahead on the blocking pool. The reader stops when the client goes.
pub fn stream(mut file: std::fs::File) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            // Fill the chunk (short reads happen), so chunks stay large.
            let done = loop {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break true,
                    Ok(n) => {
                        filled += n;
                        if filled == CHUNK {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            };
            if filled > 0 {
                buf.truncate(filled);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return;
                }
            }
            if done {
                return;
            }
        }
    });
    Body::stream(ChannelBody(rx))
}

/// Chunks from a channel as an HTTP body.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}
