//! Static files from `public_dir` for `GET /public/<path>` and the `file` verb (SPEC §3.1,
//! §6): path safety, the `max_file_bytes` cap, and every file system call made off the
//! worker's event loop.
//!
//! Why off the loop: a worker serves every connection of its core from one thread, so a
//! blocking `read` of a large or cold file stalls all of them. Why not monoio's own `fs`:
//! on io_uring its reads are submitted to the ring, but on the legacy (epoll) driver a
//! regular file is never "ready" to poll, so `File::read_at` runs `pread` inline on the
//! loop, as do its `open` and `stat`; `canonicalize` has no async form at all. The calls
//! therefore go through [`monoio::spawn_blocking`] onto one small pool of
//! [`FILE_THREADS`] threads that every worker's runtime has attached ([`pool`]);
//! the worker's task awaits the answer, and the pool thread wakes it through monoio's
//! cross-thread waker, which both drivers provide. The pool bounds the threads, not the
//! queue: a waiting request holds a path, or one chunk buffer, nothing more.
//!
//! Bounded memory: a file over `max_file_bytes` is refused from its metadata before a
//! byte is read. HTTP streams the body: the head carries the length taken at open, then
//! [`CHUNK`]-sized pieces are read and written one at a time, so a response holds one
//! chunk whatever the file size. The `file` verb answers one JSON message and so holds
//! the file once (at most `max_file_bytes`) plus its encoding; that reply is queued like
//! any other message and counts against `max_backpressure`. The pool's threads also
//! bound how many files are being read and encoded at once, process-wide, however many
//! `file` requests clients send.
//!
//! Ordering: the verb's reply is sent when the read completes, so messages the client
//! sends after `file` may be answered first. An ack reply carries its `_correlationId`,
//! which is how clients match it; a `file` sent without one gets a `file` event whose
//! place among later replies is not fixed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use crate::tls::Socket;
use monoio::blocking::{DefaultThreadPool, ThreadPool};
use monoio::io::AsyncWriteRentExt;
use serde_json::json;
use stellar_protocol::event::reserved;
use stellar_protocol::{ErrorCode, EventName};

use crate::config::Config;
use crate::connection::Conn;
use crate::router::Flow;
use crate::worker::Worker;

/// Bytes read from the file and written to the socket per step of an HTTP body: large
/// enough that a pool round trip per chunk costs little next to the copy, small enough
/// that thousands of concurrent downloads stay within a worker's memory.
const CHUNK: usize = 64 * 1024;

/// Threads of the file pool, shared by every worker of the process. Reads from the page
/// cache are memory copies and cold reads wait on the disk; a few threads keep several
/// workers' reads in flight without taking a core from the event loops.
const FILE_THREADS: usize = 4;

/// Why a public file is not served.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// No `public_dir`; an absolute path, `..`, or a symlink leaving it; a directory;
    /// no such file; or the file could not be read.
    #[error("not found")]
    NotFound,
    /// The file is larger than `max_file_bytes` (the limit, in bytes).
    #[error("larger than max_file_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
}

impl FileError {
    /// The `error` code of the `file` verb.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::TooLarge { .. } => ErrorCode::FileTooLarge,
        }
    }

    /// The HTTP status and reason of `GET /public/`.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::NotFound => (404, "Not Found"),
            Self::TooLarge { .. } => (413, "Payload Too Large"),
        }
    }
}

/// A public file opened for reading, with its length and MIME type as of opening.
#[derive(Debug)]
pub struct PublicFile {
    file: File,
    pub len: u64,
    pub mime: &'static str,
}

/// The file pool, for a worker's runtime to attach (`spawn_blocking` panics on a
/// runtime without one). Started on first use; its threads live as long as the process.
pub fn pool() -> Box<dyn ThreadPool + Send> {
    static POOL: OnceLock<DefaultThreadPool> = OnceLock::new();
    Box::new(
        POOL.get_or_init(|| DefaultThreadPool::new(FILE_THREADS))
            .clone(),
    )
}

/// Runs a blocking call on the file pool and awaits its result (`None`: the pool
/// dropped the call without running it).
async fn off_loop<R: Send + 'static>(call: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    monoio::spawn_blocking(call).await.ok()
}

/// Opens `path` under `public_dir` off the loop (see [`open_blocking`]).
pub async fn open(config: Arc<Config>, path: &str) -> Result<PublicFile, FileError> {
    let path = path.to_owned();
    off_loop(move || open_blocking(&config, &path))
        .await
        .unwrap_or(Err(FileError::NotFound))
}

/// Resolves and opens `path` under `public_dir`, refusing anything that could leave it
/// (absolute paths, `..`, symlinks resolving outside), anything that is not a regular
/// file, and files over `max_file_bytes`. Blocks: run it on the pool.
fn open_blocking(config: &Config, path: &str) -> Result<PublicFile, FileError> {
    let root = config.public_dir.as_ref().ok_or(FileError::NotFound)?;
    let relative = Path::new(path.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(FileError::NotFound);
    }
    let root = root.canonicalize().map_err(|_| FileError::NotFound)?;
    let full: PathBuf = root
        .join(relative)
        .canonicalize()
        .map_err(|_| FileError::NotFound)?;
    if !full.starts_with(&root) {
        return Err(FileError::NotFound);
    }
    let file = File::open(&full).map_err(|_| FileError::NotFound)?;
    // The metadata of the opened handle, not of the path: what is checked is what is read.
    let meta = file.metadata().map_err(|_| FileError::NotFound)?;
    if !meta.is_file() {
        return Err(FileError::NotFound);
    }
    if meta.len() > config.max_file_bytes {
        return Err(FileError::TooLarge {
            limit: config.max_file_bytes,
        });
    }
    Ok(PublicFile {
        file,
        len: meta.len(),
        mime: mime_of(&full),
    })
}

impl PublicFile {
    /// Writes the file's `len` bytes to `stream`, one [`CHUNK`] read off the loop at a
    /// time. Stops at the first failed write, or when the file has shrunk since it was
    /// opened: the promised length cannot be kept, and the caller's close tells the
    /// client the body is short.
    pub async fn send_body(self, stream: &mut Socket) -> std::io::Result<()> {
        let len = self.len;
        let file = Arc::new(self.file);
        let mut buf = Vec::with_capacity(CHUNK);
        let mut offset = 0;
        while offset < len {
            let want = (len - offset).min(CHUNK as u64) as usize;
            let reader = Arc::clone(&file);
            let (read, filled) = off_loop(move || {
                buf.resize(want, 0);
                let read = reader.read_exact_at(&mut buf, offset);
                (read, buf)
            })
            .await
            .ok_or_else(|| std::io::Error::other("file pool dropped the read"))?;
            read?;
            let (written, back) = stream.write_all(filled).await;
            written?;
            buf = back;
            offset += want as u64;
        }
        Ok(())
    }
}

/// The `file` verb: reads the file off the loop in a task of its own and replies when it
/// is read (an ack reply, or a `file` event without `_correlationId`); `not_found` or
/// `file_too_large` otherwise. The reader goes on meanwhile.
pub fn answer_verb(
    worker: &Worker,
    conn: &Rc<Conn>,
    path: String,
    ack: Option<(&EventName<'_>, &str)>,
) -> Flow {
    let config = worker.config();
    let stats = Arc::clone(&worker.stats);
    let conn = Rc::clone(conn);
    let ack = ack.map(|(name, correlation)| (name.clone().into_owned(), correlation.to_owned()));
    monoio::spawn(async move {
        let answer = off_loop(move || verb_answer(&config, &path))
            .await
            .unwrap_or_else(|| Err((FileError::NotFound.code(), "file not read".to_owned())));
        match (ack, answer) {
            (Some((name, correlation)), Ok(data)) => {
                conn.reply_ack(&name, &correlation, Ok(&data), &stats)
            }
            (Some((name, correlation)), Err((code, message))) => {
                conn.reply_ack(&name, &correlation, Err((code.as_str(), &message)), &stats)
            }
            (None, Ok(data)) => conn.emit_raw(&reserved::FILE, &data, &stats),
            (None, Err((code, message))) => conn.send_error(code, &message, &stats),
        };
    });
    Flow::Continue
}

/// The `file` verb's answer: `{"content","mime","length"}` as JSON text (built here, on
/// the pool, since escaping a large file is work too), or the error code and message.
/// Blocks: run it on the pool.
fn verb_answer(config: &Config, path: &str) -> Result<String, (ErrorCode, String)> {
    let refuse = |e: FileError| {
        let message = match &e {
            FileError::NotFound => format!("file `{path}` not found"),
            FileError::TooLarge { .. } => format!("file `{path}` is {e}"),
        };
        (e.code(), message)
    };
    let opened = open_blocking(config, path).map_err(refuse)?;
    let mut content = Vec::with_capacity(opened.len as usize);
    // `take`: a file grown since its metadata was read is still read up to the cap only.
    opened
        .file
        .take(opened.len)
        .read_to_end(&mut content)
        .map_err(|_| refuse(FileError::NotFound))?;
    let text = String::from_utf8_lossy(&content);
    let answer = json!({"content": text, "mime": opened.mime, "length": content.len()});
    Ok(answer.to_string())
}

fn mime_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(config: &Config, path: &str) -> Result<(Vec<u8>, &'static str), FileError> {
        let opened = open_blocking(config, path)?;
        let mut content = Vec::new();
        opened
            .file
            .take(opened.len)
            .read_to_end(&mut content)
            .unwrap();
        Ok((content, opened.mime))
    }

    #[test]
    fn public_files_never_leave_the_directory() {
        // The public directory, and a secret outside it that a symlink points to.
        let (public, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dir = public.path();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.txt"), "hello").unwrap();
        let outside = elsewhere.path().join("secret.txt");
        std::fs::write(&outside, "secret").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("escape.txt")).unwrap();
        let config = Config {
            public_dir: Some(dir.to_path_buf()),
            ..Config::default()
        };
        assert_eq!(
            read(&config, "sub/a.txt").unwrap(),
            (b"hello".to_vec(), "text/plain; charset=utf-8")
        );
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "sub/../../x",
            "sub",
            "missing.txt",
            "escape.txt",
        ] {
            assert_eq!(
                read(&config, bad).unwrap_err(),
                FileError::NotFound,
                "{bad}"
            );
        }
        assert_eq!(
            read(&Config::default(), "a.txt").unwrap_err(),
            FileError::NotFound
        );
    }

    #[test]
    fn files_over_the_cap_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("six.txt"), "123456").unwrap();
        let config = |max_file_bytes| Config {
            public_dir: Some(dir.path().to_path_buf()),
            max_file_bytes,
            ..Config::default()
        };
        assert_eq!(read(&config(6), "six.txt").unwrap().0, b"123456");
        assert_eq!(
            read(&config(5), "six.txt").unwrap_err(),
            FileError::TooLarge { limit: 5 }
        );
        let (code, message) = verb_answer(&config(5), "six.txt").unwrap_err();
        assert_eq!(code, ErrorCode::FileTooLarge);
        assert!(message.contains("max_file_bytes (5 bytes)"), "{message}");
    }
}
