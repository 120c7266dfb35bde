//! `berth-bench`: container start latency of berth's runtime next to crun and runc.
//!
//! Not a test: it measures, prints and asserts nothing. Run it as root on a build host (see
//! `tests/bench/start-latency` and docs/benchmarks.md). Each iteration runs `/bin/true` in a
//! fresh container once per runtime, in rotating order, on the same busybox root file system:
//! - berth: the path berthd takes — overlay root from a store image, the init shim (this very
//!   binary re-executed as `__container-init`), waitpid, unmount and removal of the container
//!   directory;
//! - `crun run --bundle B ID` and `runc run --bundle B ID` (create + start + wait + delete).
//!
//! The figure per run is wall-clock time from the start of the runtime's work to the end of
//! its cleanup.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_agent::oci::{write_layout, LayoutImage};
use berth_agent::runtime::{self, InitConfig, InitProgram, ProcessSpec, RootfsLayout, INIT_ARG};
use berth_agent::store::{Store, StoredImage};
use nix::sys::wait::waitpid;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// A setup or measurement step failed.
    #[error("{0}")]
    Step(String),
}

type Result<T> = std::result::Result<T, BenchError>;

fn step<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Step(format!("{what}: {e}"))
}

struct Options {
    iterations: usize,
    work: PathBuf,
    busybox: PathBuf,
}

fn usage() -> &'static str {
    "usage: berth-bench [--iterations N] [--work DIR] [--busybox PATH]\n\
     Runs /bin/true N times (default 50) under berth, crun and runc and prints median and p90\n\
     start-to-exit latency. Needs root; installs crun and runc with apt-get when missing."
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        iterations: 50,
        work: std::env::temp_dir().join(format!("berth-bench-{}", std::process::id())),
        busybox: PathBuf::from("/bin/busybox"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| BenchError::Step(format!("{name} needs a value\n{}", usage())))
        };
        match arg.as_str() {
            "--iterations" | "-n" => {
                opts.iterations = value("--iterations")?
                    .parse()
                    .map_err(step("--iterations"))?
            }
            "--work" => opts.work = PathBuf::from(value("--work")?),
            "--busybox" => opts.busybox = PathBuf::from(value("--busybox")?),
            "--help" | "-h" => return Err(BenchError::Step(usage().into())),
            other => {
                return Err(BenchError::Step(format!(
                    "unknown argument {other:?}\n{}",
                    usage()
                )))
            }
        }
    }
    if opts.iterations == 0 {
        return Err(BenchError::Step("--iterations must be at least 1".into()));
    }
    Ok(opts)
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_tools() -> Result<()> {
    if have("crun") && have("runc") {
        return Ok(());
    }
    eprintln!("installing crun and runc (apt-get install -y crun runc)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "crun", "runc"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(step("apt-get"))?;
    if !status.success() || !have("crun") || !have("runc") {
        return Err(BenchError::Step(
            "crun and runc are needed: apt-get install -y crun runc".into(),
        ));
    }
    Ok(())
}

fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// A root file system with a static busybox and `/bin/true`.
fn make_rootfs(busybox: &Path, rootfs: &Path) -> Result<()> {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).map_err(step(format!("create {}", bin.display())))?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(step(format!(
        "copy {} (install busybox-static)",
        busybox.display()
    )))?;
    for applet in ["true", "sh"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(step("symlink"))?;
    }
    for dir in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir)).map_err(step("create rootfs dirs"))?;
    }
    Ok(())
}

/// An OCI bundle for crun/runc: `runc spec`, then /bin/true, no terminal, writable root.
fn make_bundle(bundle: &Path, rootfs: &Path) -> Result<()> {
    std::fs::create_dir_all(bundle).map_err(step("create the bundle"))?;
    let status = Command::new("runc")
        .arg("spec")
        .current_dir(bundle)
        .status()
        .map_err(step("runc spec"))?;
    if !status.success() {
        return Err(BenchError::Step("runc spec failed".into()));
    }
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(step("read config.json"))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(step("parse config.json"))?;
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["path"] = serde_json::json!(rootfs);
    spec["root"]["readonly"] = serde_json::json!(false);
    std::fs::write(&path, spec.to_string()).map_err(step("write config.json"))
}

/// One berth container run: prepare, launch through the shim, wait, clean up.
fn run_berth(image: &StoredImage, containers: &Path, id: &str) -> Result<Duration> {
    let start = Instant::now();
    let cfg = InitConfig {
        name: id.to_owned(),
        process: ProcessSpec {
            args: vec!["/bin/true".into()],
            env: vec![format!("PATH={}", runtime::spec::DEFAULT_PATH)],
            cwd: "/".into(),
            hostname: id.to_owned(),
        },
        rootfs: RootfsLayout::for_container(containers, id, &image.layer_dirs),
        limits: Default::default(),
        rlimits: Vec::new(),
        cgroup: None,
        // What a manifest container gets: Docker's capabilities, no_new_privs, seccomp.
        security: Default::default(),
        network: Default::default(),
        host_pid: false,
    };
    cfg.rootfs
        .prepare_host_dirs()
        .map_err(step("prepare the container directories"))?;
    let launched =
        runtime::launch(&InitProgram::current_exe(), &cfg).map_err(step("berth launch"))?;
    drop(launched.stdout);
    drop(launched.stderr);
    let status = waitpid(launched.pid, None).map_err(step("waitpid"))?;
    berth_agent::supervisor::unmount_rootfs(&cfg.rootfs.target);
    std::fs::remove_dir_all(containers.join(id)).map_err(step("remove the container"))?;
    let elapsed = start.elapsed();
    if runtime::exit_code(status) != Some(0) {
        return Err(BenchError::Step(format!(
            "berth: /bin/true exited with {status:?}"
        )));
    }
    Ok(elapsed)
}

/// One `crun run` / `runc run`.
fn run_oci(program: &str, bundle: &Path, id: &str) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(program)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(step(program))?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(BenchError::Step(format!("{program} run failed: {status}")));
    }
    Ok(elapsed)
}

/// On a hybrid cgroup host (v1 controllers plus a v2 hierarchy at /sys/fs/cgroup/unified
/// holding a controller), crun refuses to run ("cgroups in hybrid mode not supported"). The
/// benchmark moves itself into a private mount namespace once and hides the v2 hierarchy
/// there, so crun and runc both see plain cgroup v1; the host is untouched. Returns whether
/// it did.
fn hide_hybrid_cgroup2() -> Result<bool> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let unified = Path::new("/sys/fs/cgroup/unified");
    let is_v2 = nix::sys::statfs::statfs(unified)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !is_v2 {
        return Ok(false);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(step("unshare the mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make mounts private"))?;
    umount2(unified, MntFlags::MNT_DETACH).map_err(step("hide /sys/fs/cgroup/unified"))?;
    Ok(true)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (nearest rank) of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn main() -> std::process::ExitCode {
    // The container init shim must stay single-threaded: decide before anything else runs.
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_ARG) {
        std::process::exit(runtime::init::shim_main());
    }
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    let opts = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(BenchError::Step(
            "run as root (containers need namespaces and mounts)".into(),
        ));
    }
    ensure_tools()?;
    if hide_hybrid_cgroup2()? {
        println!("note: hybrid cgroup host; /sys/fs/cgroup/unified hidden in the benchmark's mount namespace so crun runs (cgroup v1 for crun and runc)");
    }
    runtime::become_subreaper().map_err(step("become a child subreaper"))?;
    std::fs::create_dir_all(&opts.work).map_err(step(format!("create {}", opts.work.display())))?;
    let result = measure(&opts);
    let _ = std::fs::remove_dir_all(&opts.work);
    result
}

fn measure(opts: &Options) -> Result<()> {
    let rootfs = opts.work.join("rootfs");
    make_rootfs(&opts.busybox, &rootfs)?;
    let bundle = opts.work.join("bundle");
    make_bundle(&bundle, &rootfs)?;
    let layout = opts.work.join("layout");
    write_layout(&rootfs, &layout, &LayoutImage::default())
        .map_err(step("write the OCI layout"))?;
    let state = opts.work.join("state");
    let store = Store::open(&state.join("store")).map_err(step("open the store"))?;
    let image = store
        .import_oci_layout("bench", &layout)
        .map_err(step("import the image"))?;
    let containers = state.join("containers");

    let names = ["berth", "crun", "runc"];
    let mut samples: [Vec<Duration>; 3] = Default::default();
    // One warm-up run each (page cache, first cgroup creation), not counted.
    for i in 0..=opts.iterations {
        for k in 0..3 {
            let which = (i + k) % 3;
            let id = format!("bench-{}-{i}", names[which]);
            let d = match which {
                0 => run_berth(&image, &containers, &id)?,
                1 => run_oci("crun", &bundle, &id)?,
                _ => run_oci("runc", &bundle, &id)?,
            };
            if i > 0 {
                samples[which].push(d);
            }
        }
    }

    println!(
        "start latency of /bin/true, {} runs each (create + start + wait + delete)",
        opts.iterations
    );
    println!("crun: {}", version("crun"));
    println!("runc: {}", version("runc"));
    println!("{:<8} {:>10} {:>10}", "runtime", "median ms", "p90 ms");
    let mut medians = [0.0; 3];
    for (k, s) in samples.iter_mut().enumerate() {
        s.sort();
        medians[k] = ms(quantile(s, 0.5));
        println!(
            "{:<8} {:>10.2} {:>10.2}",
            names[k],
            medians[k],
            ms(quantile(s, 0.9))
        );
    }
    println!("berth/crun median ratio: {:.2}", medians[0] / medians[1]);
    println!("berth/runc median ratio: {:.2}", medians[0] / medians[2]);
    Ok(())
}
