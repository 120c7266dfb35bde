//! Container stdout/stderr on the console: whole lines, each prefixed `NAME | `.
//!
//! Several containers and berthd itself write to the same console, so every line goes out in
//! one write under the stdout lock and lines never interleave mid-line.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::logfile::{SharedLog, Stream};

/// A line longer than this is cut and emitted in pieces (a container printing without
/// newlines must not grow berthd's memory without bound).
pub const MAX_LINE: usize = 16 * 1024;

/// Splits a byte stream into prefixed lines.
#[derive(Debug)]
pub struct LinePrefixer {
    prefix: Vec<u8>,
    pending: Vec<u8>,
    max_line: usize,
}

impl LinePrefixer {
    /// A prefixer for container `name` (`"NAME | "`).
    pub fn new(name: &str) -> Self {
        Self::with_max_line(name, MAX_LINE)
    }

    /// Same, with a custom cut length.
    pub fn with_max_line(name: &str, max_line: usize) -> Self {
        LinePrefixer {
            prefix: format!("{name} | ").into_bytes(),
            pending: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// Feed bytes; `emit` is called once per complete line (prefix, text and `\n`).
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let room = self.max_line - self.pending.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&window[..i]);
                    self.emit_pending(emit);
                    data = &data[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.pending.len() >= self.max_line {
                        self.emit_pending(emit);
                    }
                }
            }
        }
    }

    /// End of stream: a partial last line is emitted (with a newline added).
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.pending.is_empty() {
            self.emit_pending(emit);
        }
    }

    fn emit_pending(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let mut line = Vec::with_capacity(self.prefix.len() + self.pending.len() + 1);
        line.extend_from_slice(&self.prefix);
        line.append(&mut self.pending);
        line.push(b'\n');
        emit(&line);
    }
}

/// Copy `reader` to `emit` as prefixed lines until EOF (or a read error).
pub fn copy_lines(name: &str, mut reader: impl Read, emit: &mut dyn FnMut(&[u8])) {
    let mut prefixer = LinePrefixer::new(name);
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => prefixer.push(&buf[..n], emit),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    prefixer.finish(emit);
}

/// Write one line to berthd's stdout (the console) in a single locked write.
pub fn console_line(line: &[u8]) {
    let mut out = io::stdout().lock();
    // The console failing is not something a container copier can fix.
    let _ = out.write_all(line);
    let _ = out.flush();
}

/// A thread copying one container stream to the console; [`Copier::finish`] waits for EOF.
#[derive(Debug)]
pub struct Copier {
    handle: JoinHandle<()>,
    done: mpsc::Receiver<()>,
}

impl Copier {
    /// Start copying `fd` (a pipe read end) to the console with `name`'s prefix.
    pub fn spawn(name: &str, fd: OwnedFd) -> io::Result<Copier> {
        Self::spawn_logged(name, fd, Stream::Stdout, None)
    }

    /// Same, and each line also goes to `log` (tagged with `stream`, timestamped).
    pub fn spawn_logged(
        name: &str,
        fd: OwnedFd,
        stream: Stream,
        log: Option<SharedLog>,
    ) -> io::Result<Copier> {
        let name = name.to_string();
        let prefix = LinePrefixer::new(&name).prefix.len();
        let (tx, done) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("out-{name}"))
            .spawn(move || {
                copy_lines(&name, File::from(fd), &mut |line| {
                    console_line(line);
                    if let Some(log) = &log {
                        let text = line
                            .get(prefix..line.len().saturating_sub(1))
                            .unwrap_or_default();
                        // A poisoned lock only means another copier panicked mid-line.
                        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                        log.write_line(SystemTime::now(), stream, text);
                    }
                });
                let _ = tx.send(());
            })?;
        Ok(Copier { handle, done })
    }

    /// Wait up to `timeout` for the stream to end so its last lines print before the exit line.
    /// Returns whether it ended (a stream still held open by someone else is left running).
    pub fn finish(self, timeout: Duration) -> bool {
        match self.done.recv_timeout(timeout) {
            Ok(()) => {
                let _ = self.handle.join();
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let mut p = LinePrefixer::with_max_line(name, max);
        for chunk in chunks {
            p.push(chunk, &mut |l| {
                lines.push(String::from_utf8_lossy(l).into_owned())
            });
        }
        p.finish(&mut |l| lines.push(String::from_utf8_lossy(l).into_owned()));
        lines
    }

    #[test]
    fn each_line_prefixed_and_emitted_once() {
        assert_eq!(
            run("web", &[b"hello\nworld\n"], MAX_LINE),
            ["web | hello\n", "web | world\n"]
        );
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        assert_eq!(
            run("db", &[b"par", b"tial\nne", b"xt\n"], MAX_LINE),
            ["db | partial\n", "db | next\n"]
        );
    }

    #[test]
    fn partial_last_line_flushed_at_eof() {
        assert_eq!(
            run("db", &[b"one\ntwo"], MAX_LINE),
            ["db | one\n", "db | two\n"]
        );
    }

    #[test]
    fn empty_lines_kept_and_no_output_for_empty_stream() {
        assert_eq!(run("a", &[b"\n\n"], MAX_LINE), ["a | \n", "a | \n"]);
        assert!(run("a", &[], MAX_LINE).is_empty());
    }

    #[test]
    fn overlong_lines_are_cut() {
        assert_eq!(
            run("a", &[b"abcdefg\nxy\n"], 3),
            ["a | abc\n", "a | def\n", "a | g\n", "a | xy\n"]
        );
    }

    #[test]
    fn copy_lines_reads_to_eof() {
        let mut lines = Vec::new();
        copy_lines("c", &b"x\ny"[..], &mut |l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"c | x\n".to_vec(), b"c | y\n".to_vec()]);
    }

    #[test]
    fn a_logged_copier_writes_console_and_log() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        let log = super::super::logfile::LogFile::new("t", path.clone(), 1 << 20, 2).shared();
        let (r, w) = nix::unistd::pipe().unwrap();
        let copier = Copier::spawn_logged("t", r, Stream::Stderr, Some(log)).unwrap();
        File::from(w).write_all(b"first\nsecond").unwrap();
        assert!(copier.finish(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("Z stderr first"), "{}", lines[0]);
        assert!(lines[1].ends_with("Z stderr second"), "{}", lines[1]);
    }

    #[test]
    fn copier_ends_at_eof() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let copier = Copier::spawn("t", r).unwrap();
        drop(w);
        assert!(copier.finish(Duration::from_secs(5)));
    }
}
