//! Boot-test harness: boot a berth image under QEMU and read its serial console.
//!
//! Every wait is bounded and fails with a typed error that carries the console's last lines,
//! and the QEMU process group is killed when a [`Guest`] is dropped, whatever happened.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod registry;

/// How many console lines an error shows.
const TAIL: usize = 40;

/// Why a boot test's wait failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// QEMU could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The launcher.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The expected line did not appear in time.
    #[error("timed out after {waited:?} waiting for a console line containing {pattern:?}; console tail:\n{tail}")]
    Timeout {
        /// The text waited for.
        pattern: String,
        /// How long.
        waited: Duration,
        /// The last console lines.
        tail: String,
    },
    /// The guest's console ended (QEMU exited) before the line appeared.
    #[error(
        "the guest stopped before printing a line containing {pattern:?}; console tail:\n{tail}"
    )]
    ConsoleClosed {
        /// The text waited for.
        pattern: String,
        /// The last console lines.
        tail: String,
    },
    /// The kernel panicked.
    #[error("kernel panic: {line}; console tail:\n{tail}")]
    KernelPanic {
        /// The panic line.
        line: String,
        /// The last console lines.
        tail: String,
    },
    /// QEMU did not exit in time.
    #[error("QEMU still running {0:?} after the guest was told to power off")]
    NoExit(Duration),
    /// Talking to QEMU's QMP socket failed.
    #[error("QMP {what} failed")]
    Qmp {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Directory with vmlinuz and initramfs.img.
    pub image: PathBuf,
    /// Hard limit for the whole QEMU run (the launcher kills QEMU after it).
    pub limit: Duration,
    /// (host port, guest port) TCP forwards on 127.0.0.1.
    pub forwards: Vec<(u16, u16)>,
    /// Extra kernel command line.
    pub append: String,
}

/// A booted guest. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    qmp: PathBuf,
    _dir: TempDir,
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it back, release it).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Guest {
    /// Boot `options.image` under QEMU (TCG) through `qemu/boot`.
    pub fn boot(options: &BootOptions) -> Result<Guest, BootError> {
        Guest::boot_with(options, &[])
    }

    /// [`Guest::boot`] with extra `qemu/boot` options (`--manifest FILE`, `--config-drive
    /// FILE`, `--imds PORT`, ...).
    pub fn boot_with(
        options: &BootOptions,
        launcher_args: &[std::ffi::OsString],
    ) -> Result<Guest, BootError> {
        let dir = TempDir::new("berth-boot").map_err(|source| BootError::Spawn {
            program: "mktemp".into(),
            source,
        })?;
        let qmp = dir.0.join("qmp.sock");
        let launcher = workspace_root().join("qemu/boot");
        let mut cmd = Command::new(&launcher);
        cmd.arg(&options.image)
            .arg("--timeout")
            .arg(options.limit.as_secs().max(1).to_string())
            .arg("--qmp")
            .arg(&qmp);
        for (host, guest) in &options.forwards {
            cmd.arg("--forward").arg(format!("{host}:{guest}"));
        }
        if !options.append.is_empty() {
            cmd.arg("--append").arg(&options.append);
        }
        cmd.args(launcher_args);
        Guest::spawn(cmd, launcher, dir, qmp)
    }

    /// Boot the GPT disk image `disk` (qcow2 or raw) under OVMF UEFI firmware (TCG) through
    /// `qemu/boot --uefi`; `limit` bounds the whole QEMU run. The disk is used in place, so
    /// state written by the guest persists into the next boot of the same file.
    pub fn boot_disk(disk: &Path, limit: Duration) -> Result<Guest, BootError> {
        Guest::boot_disk_with(disk, limit, &[])
    }

    /// [`Guest::boot_disk`] with extra `qemu/boot` options (e.g. `--manifest FILE`).
    pub fn boot_disk_with(
        disk: &Path,
        limit: Duration,
        launcher_args: &[std::ffi::OsString],
    ) -> Result<Guest, BootError> {
        let dir = TempDir::new("berth-boot").map_err(|source| BootError::Spawn {
            program: "mktemp".into(),
            source,
        })?;
        let qmp = dir.0.join("qmp.sock");
        let launcher = workspace_root().join("qemu/boot");
        let mut cmd = Command::new(&launcher);
        cmd.arg(disk.parent().unwrap_or(Path::new(".")))
            .arg("--uefi")
            .arg("--disk-image")
            .arg(disk)
            .arg("--timeout")
            .arg(limit.as_secs().max(1).to_string())
            .arg("--qmp")
            .arg(&qmp)
            .args(launcher_args);
        Guest::spawn(cmd, launcher, dir, qmp)
    }

    fn spawn(
        mut cmd: Command,
        launcher: PathBuf,
        dir: TempDir,
        qmp: PathBuf,
    ) -> Result<Guest, BootError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Own process group, so Drop can kill the launcher and QEMU together.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| BootError::Spawn {
            program: launcher.display().to_string(),
            source,
        })?;
        let stdout = child.stdout.take().ok_or_else(|| BootError::Spawn {
            program: launcher.display().to_string(),
            source: std::io::Error::other("no stdout pipe"),
        })?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        println!("console: {line}");
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Guest {
            child,
            lines: rx,
            seen: Vec::new(),
            qmp,
            _dir: dir,
        })
    }

    /// Every console line so far.
    pub fn console(&self) -> &[String] {
        &self.seen
    }

    fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(TAIL);
        self.seen[start..].join("\n")
    }

    /// Wait until a console line contains `pattern`; returns that line.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, BootError> {
        self.wait_until(pattern, timeout, |line| line.contains(pattern))
    }

    /// Wait until a console line satisfies `pred` (`what` describes it for errors).
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, BootError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains("Kernel panic") {
                        return Err(BootError::KernelPanic {
                            line,
                            tail: self.tail(),
                        });
                    }
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BootError::Timeout {
                        pattern: what.to_string(),
                        waited: timeout,
                        tail: self.tail(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BootError::ConsoleClosed {
                        pattern: what.to_string(),
                        tail: self.tail(),
                    })
                }
            }
        }
    }

    /// Press the ACPI power button (QMP `system_powerdown`), as a cloud's "stop" does.
    pub fn power_button(&self) -> Result<(), BootError> {
        self.qmp_command("system_powerdown")
    }

    fn qmp_command(&self, command: &str) -> Result<(), BootError> {
        let qmp_err = |what: &str| {
            let what = what.to_string();
            move |source| BootError::Qmp { what, source }
        };
        let mut sock = UnixStream::connect(&self.qmp).map_err(qmp_err("connect"))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(qmp_err("set timeout"))?;
        let mut reader = BufReader::new(sock.try_clone().map_err(qmp_err("clone"))?);
        let mut greeting = String::new();
        reader
            .read_line(&mut greeting)
            .map_err(qmp_err("greeting"))?;
        for request in ["qmp_capabilities", command] {
            sock.write_all(format!("{{\"execute\":\"{request}\"}}\n").as_bytes())
                .map_err(qmp_err(request))?;
            // Skip asynchronous events until the command's reply.
            loop {
                let mut reply = String::new();
                if reader.read_line(&mut reply).map_err(qmp_err(request))? == 0 {
                    return Err(BootError::Qmp {
                        what: request.into(),
                        source: std::io::Error::other("QMP closed the connection"),
                    });
                }
                if reply.contains("\"error\"") {
                    return Err(BootError::Qmp {
                        what: request.into(),
                        source: std::io::Error::other(reply.trim().to_string()),
                    });
                }
                if reply.contains("\"return\"") {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Pull the plug: SIGKILL QEMU at once (no shutdown, nothing flushed by the guest), and
    /// wait until every process of the launcher is gone, so the next boot can open the same
    /// disk. Returns the console seen so far.
    pub fn power_cut(mut self) -> Vec<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals our child's process group; no
            // memory is touched.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = self.child.wait();
            let deadline = Instant::now() + Duration::from_secs(30);
            // SAFETY: signal 0 only checks whether the group still has members.
            while unsafe { libc::kill(-pgid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::mem::take(&mut self.seen)
    }

    /// Wait for QEMU to exit (after a power-off), draining the console.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, BootError> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader thread ends at EOF; collect what it still holds.
                let drain_until = Instant::now() + Duration::from_secs(2);
                while let Ok(line) = self
                    .lines
                    .recv_timeout(drain_until.saturating_duration_since(Instant::now()))
                {
                    self.seen.push(line);
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(BootError::NoExit(timeout));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pgid) = i32::try_from(self.child.id()) {
                // SAFETY: kill(2) with a negative pid signals our child's process group; no
                // memory is touched.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = self.child.wait();
        }
    }
}

/// HTTP GET `path` from 127.0.0.1:`port`; returns (status code, body).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        timeout,
    )?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> std::io::Result<TempDir> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of an image whose initramfs has extra files laid over it; removed on drop.
#[derive(Debug)]
pub struct OverlaidImage {
    dir: TempDir,
}

impl OverlaidImage {
    /// The image directory (vmlinuz, initramfs.img).
    pub fn path(&self) -> &Path {
        &self.dir.0
    }
}

/// Errors building an overlaid image.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Copying or writing failed.
    #[error("cannot write the overlaid image")]
    Io(#[from] std::io::Error),
    /// The cpio writer refused an entry.
    #[error("cannot build the overlay archive")]
    Cpio(#[from] berth_image::cpio::CpioError),
}

/// Copy `image` and append a second gzip'd newc archive holding `files` (path without leading
/// `/`, contents) to its initramfs. The kernel unpacks concatenated archives in order, so these
/// files replace the image's own: how tests boot a manifest `berth-image build` would refuse.
pub fn overlay_image(image: &Path, files: &[(&str, &[u8])]) -> Result<OverlaidImage, OverlayError> {
    let dir = TempDir::new("berth-image-overlay")?;
    std::fs::copy(image.join("vmlinuz"), dir.0.join("vmlinuz"))?;
    let mut initramfs = std::fs::read(image.join("initramfs.img"))?;
    let mut archive = berth_image::cpio::Archive::new(0);
    for (path, data) in files {
        if let Some((parent, _)) = path.rsplit_once('/') {
            archive.add_dir_all(parent)?;
        }
        archive.add_bytes(path, 0o644, data.to_vec())?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    archive.write_to(&mut gz)?;
    initramfs.extend_from_slice(&gz.finish()?);
    std::fs::write(dir.0.join("initramfs.img"), initramfs)?;
    Ok(OverlaidImage { dir })
}

/// The demo image directory: `BERTH_TEST_IMAGE` when set (by `tests/run`), else built once per
/// test process with `image-build/build-demo`, so `cargo test` alone also works. The error
/// carries the builder's stderr.
pub fn demo_image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("BERTH_TEST_IMAGE") {
                return Ok(PathBuf::from(dir));
            }
            let builder = workspace_root().join("image-build/build-demo");
            let out = Command::new(&builder)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", builder.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "image-build/build-demo failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
}

/// The `berthctl` to run on this machine against a guest's remote API: `BERTH_BERTHCTL` when
/// set, else the static one `image-build/build-demo` builds next to the image's binaries
/// (`TARGET/x86_64-unknown-linux-gnu/release/berthctl`, TARGET found from this test binary).
pub fn host_berthctl() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("BERTH_BERTHCTL") {
        return Ok(PathBuf::from(path));
    }
    demo_image()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this test binary: {e}"))?;
    // TARGET/debug/deps/TEST
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("no target directory above {}", exe.display()))?;
    let path = target.join("x86_64-unknown-linux-gnu/release/berthctl");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no berthctl at {} (run image-build/build-demo, or set BERTH_BERTHCTL)",
            path.display()
        ))
    }
}
