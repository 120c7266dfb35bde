//! Progress reporting: a bar on a terminal, plain log lines otherwise.
//!
//! Builds run both by people at a terminal and by scripts/CI whose logs must stay readable,
//! so the bar (indicatif) is drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

/// Where step messages and progress go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bars on stderr (stderr is a terminal).
    Terminal,
    /// One log line per step on stderr.
    Plain,
    /// Nothing (tests).
    Quiet,
}

impl Progress {
    /// `Terminal` when stderr is a terminal, else `Plain`.
    pub fn detect() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Terminal
        } else {
            Progress::Plain
        }
    }

    /// Reports the start of a step.
    pub fn step(&self, message: &str) {
        if *self != Progress::Quiet {
            eprintln!("berth-image: {message}");
        }
    }

    /// A byte counter for a long step of `total` bytes.
    pub fn bytes(&self, message: &str, total: u64) -> Option<ProgressBar> {
        self.step(message);
        if *self != Progress::Terminal {
            return None;
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "  [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(bar)
    }
}

/// A writer that advances a progress bar by the bytes written through it.
#[derive(Debug)]
pub struct CountingWriter<W> {
    inner: W,
    bar: Option<ProgressBar>,
}

impl<W: Write> CountingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, bar: Option<ProgressBar>) -> Self {
        CountingWriter { inner, bar }
    }

    /// Finishes the bar and returns the inner writer.
    pub fn into_inner(self) -> W {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.inner
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `9.1 MiB`-style size.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(9_542_000), "9.1 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn counting_writer_passes_bytes_through() {
        let bar = ProgressBar::hidden();
        bar.set_length(10);
        let mut w = CountingWriter::new(Vec::new(), Some(bar.clone()));
        w.write_all(b"hello").unwrap();
        assert_eq!(bar.position(), 5);
        assert_eq!(w.into_inner(), b"hello");
    }
}
