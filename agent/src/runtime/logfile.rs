//! A container's log file: every output line with a timestamp and its stream, rotated by size.
//!
//! `containers/NAME/log` holds the live file, `log.1` ... `log.(files-1)` the older ones. The
//! log is written next to the console copy (see [`super::output`]); a failed write (disk full)
//! is reported once on the console and the line is dropped from the file only, and writing
//! resumes by itself when it succeeds again, which the console also says.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::console::{self, Event};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The tag written in the log.
    pub fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A rotating log file.
#[derive(Debug)]
pub struct LogFile {
    container: String,
    path: PathBuf,
    max_size: u64,
    files: u32,
    file: Option<File>,
    size: u64,
    /// The last write failed (reported once until a write succeeds again).
    failing: bool,
}

/// A log shared by the stdout and stderr copiers of one container.
pub type SharedLog = Arc<Mutex<LogFile>>;

/// The `n`-th rotated file of `path` (`log.1`, ...).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl LogFile {
    /// The log of `container` at `path`, rotated at `max_size` bytes, `files` files kept. The
    /// file is opened (for appending) at the first line.
    pub fn new(container: &str, path: PathBuf, max_size: u64, files: u32) -> Self {
        LogFile {
            container: container.to_owned(),
            path,
            max_size: max_size.max(1),
            files: files.max(1),
            file: None,
            size: 0,
            failing: false,
        }
    }

    /// Shared between copier threads.
    pub fn shared(self) -> SharedLog {
        Arc::new(Mutex::new(self))
    }

    /// Append one line (`text` without its newline) written at `time` on `stream`.
    pub fn write_line(&mut self, time: SystemTime, stream: Stream, text: &[u8]) {
        let mut line = format!(
            "{} {} ",
            humantime::format_rfc3339_millis(time),
            stream.tag()
        )
        .into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        match self.append(&line) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    console::emit(&Event::LogResumed {
                        container: &self.container,
                    });
                }
            }
            Err(e) => {
                self.file = None;
                if !self.failing {
                    self.failing = true;
                    console::emit(&Event::LogError {
                        container: &self.container,
                        error: format!("{}: {e}", self.path.display()),
                    });
                }
            }
        }
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size.saturating_add(len) > self.max_size {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.open()?,
        };
        file.write_all(line)?;
        self.size = self.size.saturating_add(len);
        Ok(())
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        Ok(self.file.insert(file))
    }

    /// `log` -> `log.1` -> `log.2` ...; the oldest beyond `files` is removed.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.files == 1 {
            remove_if_present(&self.path)?;
        } else {
            remove_if_present(&rotated(&self.path, self.files - 1))?;
            for n in (1..self.files - 1).rev() {
                rename_if_present(&rotated(&self.path, n), &rotated(&self.path, n + 1))?;
            }
            rename_if_present(&self.path, &rotated(&self.path, 1))?;
        }
        self.size = 0;
        self.open()?;
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The last `n` lines of a container's log (`None`: all), oldest first, across rotated
/// files.
pub fn tail(path: &Path, files: u32, n: Option<usize>) -> io::Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    for k in (0..files.max(1)).rev() {
        let p = if k == 0 {
            path.to_path_buf()
        } else {
            rotated(path, k)
        };
        match std::fs::read(&p) {
            Ok(bytes) => lines.extend(String::from_utf8_lossy(&bytes).lines().map(str::to_owned)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(n) = n {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn lines_carry_time_and_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("web/log");
        let mut log = LogFile::new("web", path.clone(), 1 << 20, 3);
        log.write_line(at(1_767_323_045_678), Stream::Stdout, b"hello");
        log.write_line(at(1_767_323_045_679), Stream::Stderr, b"oops");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2026-01-02T03:04:05.678Z stdout hello\n2026-01-02T03:04:05.679Z stderr oops\n"
        );
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        // Each line is 24 + 8 + 3 + 1 = 36 bytes: two lines per file.
        let mut log = LogFile::new("c", path.clone(), 72, 3);
        for i in 0..9 {
            log.write_line(at(0), Stream::Stdout, format!("l{i:02}").as_bytes());
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(read(&path).ends_with("stdout l08\n"));
        assert_eq!(read(&path).lines().count(), 1);
        assert!(
            read(&rotated(&path, 1)).contains("l06") && read(&rotated(&path, 1)).contains("l07")
        );
        assert!(
            read(&rotated(&path, 2)).contains("l04") && read(&rotated(&path, 2)).contains("l05")
        );
        assert!(!rotated(&path, 3).exists());
        let last: Vec<String> = tail(&path, 3, Some(3)).unwrap();
        assert_eq!(last.len(), 3);
        assert!(last[0].ends_with("l06") && last[2].ends_with("l08"));
        assert_eq!(tail(&path, 3, None).unwrap().len(), 5);
    }

    #[test]
    fn a_single_file_is_truncated_and_a_reopened_log_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        let mut log = LogFile::new("c", path.clone(), 40, 1);
        log.write_line(at(0), Stream::Stdout, b"one");
        log.write_line(at(0), Stream::Stdout, b"two");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert!(!rotated(&path, 1).exists());
        let mut again = LogFile::new("c", path.clone(), 1 << 20, 1);
        again.write_line(at(0), Stream::Stderr, b"three");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_failing_write_is_reported_once_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        // The log's directory is a file: every open fails.
        let blocker = tmp.path().join("c");
        std::fs::write(&blocker, "").unwrap();
        let mut log = LogFile::new("c", blocker.join("log"), 1 << 20, 2);
        log.write_line(at(0), Stream::Stdout, b"lost");
        assert!(log.failing);
        std::fs::remove_file(&blocker).unwrap();
        log.write_line(at(0), Stream::Stdout, b"kept");
        assert!(!log.failing);
        assert!(std::fs::read_to_string(blocker.join("log"))
            .unwrap()
            .ends_with("stdout kept\n"));
    }
}
