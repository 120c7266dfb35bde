//! berthctl: the berth operator CLI.
//!
//! Operators run it on their own machine (check a manifest before building an image, or talk
//! to a host's remote API with `--host`/`--token`) and on the host (talk to `berthd` over its
//! Unix socket). Each subcommand is a variant of [`Command`]. Exit status: 0 success, 1 a
//! failed check or operation, 2 a usage error (clap's convention), 3 berthd cannot be
//! reached, 4 no such container.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_agent::api::client::{Client, ClientError, Target};
use berth_agent::api::{ApplyReport, ContainerDetail, HostStatus, DEFAULT_SOCKET};
use berth_agent::imagectl;
use berth_agent::manifest::Manifest;
use berth_agent::runtime::exec;
use berth_agent::supervisor::events::Event;
use clap::{Args, CommandFactory, Parser, Subcommand};
use hyper::{Method, StatusCode};

/// berth operator CLI.
#[derive(Debug, Parser)]
#[command(name = "berthctl", version, propagate_version = true)]
struct Cli {
    /// berthd's Unix socket.
    #[arg(long, global = true, env = "BERTH_API_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// A host's remote API (`HOST:PORT`) instead of the local socket; needs --token.
    #[arg(long, global = true, env = "BERTH_HOST", value_name = "HOST:PORT")]
    host: Option<String>,
    /// The remote API's token (the manifest's `[api] token`).
    #[arg(
        long,
        global = true,
        env = "BERTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check host manifests: syntax, schema, values, and (unless --no-images) that every
    /// image source exists relative to the manifest's directory.
    Validate(ValidateArgs),
    /// List the containers: state, health, pid, address, ports, uptime, restarts.
    Ps(JsonArgs),
    /// Show one container in detail.
    Inspect(NameJsonArgs),
    /// Show a container's log (timestamped stdout/stderr lines).
    Logs(LogsArgs),
    /// Start a container that is down.
    Start(NameArgs),
    /// Stop a container (it is not restarted until started again).
    Stop(NameArgs),
    /// Stop a container and start it again.
    Restart(NameArgs),
    /// Run a command inside a running container (`exec NAME -- CMD...`); exits with its
    /// status.
    Exec(ExecArgs),
    /// Show the state changes berthd recorded (and follow new ones with -f).
    Events(EventsArgs),
    /// Make the host run this manifest: unchanged containers are left alone, changed ones
    /// replaced, removed ones stopped and deleted; saved for the next boot.
    Apply(FileArgs),
    /// Show what `apply FILE` would change, changing nothing.
    Diff(FileArgs),
    /// Stop every container and power the host off.
    Shutdown,
    /// Stop every container and reboot the host.
    Reboot,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// List the image store: name, digest, size, the containers using each, source.
    Images(ImagesArgs),
    /// Pull a `registry:` image of the manifest into the store now.
    Pull(PullArgs),
    /// Remove images the manifest does not declare, then unreferenced blobs and layers.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// The state directory holding the store.
    #[arg(long, value_name = "DIR", default_value = berth_agent::imagectl::STATE_DIR)]
    state: PathBuf,
    /// The host manifest (for `used by`, credentials, and what prune keeps).
    #[arg(long, value_name = "FILE", default_value = "/etc/berth/manifest.toml")]
    manifest: PathBuf,
}

#[derive(Debug, Args)]
struct ImagesArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PullArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The `[images]` name.
    name: String,
}

#[derive(Debug, Args)]
struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep every image, only collect unreferenced blobs and layers.
    #[arg(long)]
    keep_images: bool,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// Manifest files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Do not check that image sources (OCI layout directories) exist.
    #[arg(long)]
    no_images: bool,
}

#[derive(Debug, Args)]
struct JsonArgs {
    /// Print JSON (the API's answer) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NameArgs {
    /// Container name.
    name: String,
}

#[derive(Debug, Args)]
struct NameJsonArgs {
    /// Container name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// Container name.
    name: String,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Attach the command to this terminal, input included (interactive; only on the host
    /// itself). Without it the command's input is empty.
    #[arg(short = 't', long)]
    tty: bool,
    /// Container name.
    name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Keep printing new events.
    #[arg(short, long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FileArgs {
    /// The manifest.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Exit codes beyond 0/1/2.
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_NOT_FOUND: u8 = 4;

fn main() -> ExitCode {
    // `berthctl exec` re-executes itself as the exec shim, single-threaded, before anything.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == exec::EXEC_ARG)
    {
        let code = exec::shim_main();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let target = match (&cli.host, &cli.token) {
        (Some(addr), Some(token)) => Target::Tcp {
            addr: addr.clone(),
            token: token.clone(),
        },
        (Some(_), None) => {
            let _ = writeln!(
                stderr.lock(),
                "berthctl: --host needs --token (the manifest's [api] token)"
            );
            return ExitCode::from(2);
        }
        (None, _) => Target::Unix(cli.socket.clone()),
    };
    let result = match cli.command {
        Command::Validate(args) => {
            return if validate(&args, &mut stdout.lock(), &mut stderr.lock()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "berthctl", &mut stdout.lock());
            return ExitCode::SUCCESS;
        }
        Command::Images(args) => {
            return image_command(&mut stderr.lock(), || {
                let manifest = Manifest::load(&args.store.manifest).ok();
                imagectl::images(
                    &args.store.state,
                    manifest.as_ref(),
                    args.json,
                    &mut stdout.lock(),
                )
            });
        }
        Command::Pull(args) => {
            return image_command(&mut stderr.lock(), || {
                imagectl::pull(
                    &args.store.state,
                    &args.store.manifest,
                    &args.name,
                    &mut stdout.lock(),
                )
            });
        }
        Command::Prune(args) => {
            return image_command(&mut stderr.lock(), || {
                let manifest = if args.keep_images {
                    None
                } else {
                    Some(Manifest::load(&args.store.manifest).map_err(Box::new)?)
                };
                imagectl::prune(&args.store.state, manifest.as_ref(), &mut stdout.lock())
            });
        }
        Command::Exec(args) => {
            return match Client::new(target.clone()).and_then(|c| exec_in(&c, &target, &args)) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => fail(&e),
            };
        }
        command => Client::new(target).and_then(|client| remote(&client, command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Print `e` (with its causes) and pick the exit code.
fn fail(e: &ClientError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "berthctl: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(err, ": {s}");
        source = s.source();
    }
    let _ = writeln!(err);
    ExitCode::from(match e {
        ClientError::Connect { .. } => EXIT_UNREACHABLE,
        ClientError::Status { status, .. } if *status == StatusCode::NOT_FOUND => EXIT_NOT_FOUND,
        _ => 1,
    })
}

/// `exec`: on the host, enter the container here (stdio and terminal inherited); remotely,
/// berthd runs it and sends the output back. Returns the command's exit code.
fn exec_in(client: &Client, target: &Target, args: &ExecArgs) -> Result<i32, ClientError> {
    let refused = |message: String| ClientError::Status {
        status: StatusCode::CONFLICT,
        message,
    };
    match target {
        Target::Unix(_) => {
            let detail: ContainerDetail = client.get(&format!("/v1/containers/{}", args.name))?;
            let Some(pid) = detail.status.pid else {
                return Err(refused(format!(
                    "container {:?} is {}, not running; start it first",
                    args.name, detail.status.state
                )));
            };
            let cfg = exec::ExecConfig {
                pid,
                args: args.command.clone(),
                env: detail.env,
                cwd: detail.cwd,
            };
            let status = exec::command(&exec::shim_program(), &cfg)
                .and_then(|mut cmd| {
                    if !args.tty {
                        // Like `docker exec` without -it: no input.
                        cmd.stdin(std::process::Stdio::null());
                    }
                    cmd.status()
                })
                .map_err(|e| refused(format!("cannot start the exec shim: {e}")))?;
            Ok(status.code().unwrap_or(1))
        }
        Target::Tcp { .. } => {
            if args.tty {
                return Err(refused(
                    "a terminal needs berthctl on the host itself (over --host the output is collected and shown when the command ends)".into(),
                ));
            }
            let request = berth_agent::api::ExecRequest {
                args: args.command.clone(),
                timeout_ms: None,
            };
            let body = serde_json::to_vec(&request).map_err(ClientError::Decode)?;
            let bytes = client.call(
                Method::POST,
                &format!("/v1/containers/{}/exec", args.name),
                Some(body),
            )?;
            let result: berth_agent::api::ExecResult =
                serde_json::from_slice(&bytes).map_err(ClientError::Decode)?;
            let _ = std::io::stdout().write_all(result.stdout.as_bytes());
            let _ = std::io::stderr().write_all(result.stderr.as_bytes());
            Ok(result.exit_code.unwrap_or(137))
        }
    }
}

/// The commands that talk to berthd.
fn remote(client: &Client, command: Command) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Ps(args) => {
            let host: HostStatus = client.get("/v1/containers")?;
            if args.json {
                print_json(&mut out, &host);
            } else {
                let _ = out.write_all(ps_table(&host, now_ms()).as_bytes());
            }
        }
        Command::Inspect(args) => {
            let detail: ContainerDetail = client.get(&format!("/v1/containers/{}", args.name))?;
            if args.json {
                print_json(&mut out, &detail);
            } else {
                let _ = out.write_all(inspect_text(&detail).as_bytes());
            }
        }
        Command::Logs(args) => {
            let mut path = format!("/v1/containers/{}/logs?follow={}", args.name, args.follow);
            if let Some(n) = args.tail {
                path.push_str(&format!("&tail={n}"));
            }
            client.stream(&path, &mut |chunk| {
                out.write_all(chunk)?;
                out.flush()
            })?;
        }
        Command::Start(a) => action(client, &a.name, "start")?,
        Command::Stop(a) => action(client, &a.name, "stop")?,
        Command::Restart(a) => action(client, &a.name, "restart")?,
        Command::Events(args) => {
            let path = format!("/v1/events?follow={}", args.follow);
            let mut pending = Vec::new();
            client.stream(&path, &mut |chunk| {
                pending.extend_from_slice(chunk);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if args.json {
                        out.write_all(&line)?;
                    } else if let Ok(event) = serde_json::from_slice::<Event>(&line) {
                        writeln!(out, "{} {}", format_ms(event.time_ms), event.console_line())?;
                    }
                    out.flush()?;
                }
                Ok(())
            })?;
        }
        Command::Apply(args) => apply(client, &args, true, &mut out)?,
        Command::Diff(args) => apply(client, &args, false, &mut out)?,
        Command::Shutdown => {
            client.call(Method::POST, "/v1/host/poweroff", None)?;
            let _ = writeln!(out, "powering off");
        }
        Command::Reboot => {
            client.call(Method::POST, "/v1/host/reboot", None)?;
            let _ = writeln!(out, "rebooting");
        }
        Command::Validate(_)
        | Command::Completions { .. }
        | Command::Exec(_)
        | Command::Images(_)
        | Command::Pull(_)
        | Command::Prune(_) => {}
    }
    Ok(())
}

fn action(client: &Client, name: &str, verb: &str) -> Result<(), ClientError> {
    client.call(Method::POST, &format!("/v1/containers/{name}/{verb}"), None)?;
    Ok(())
}

/// `apply`/`diff`: the manifest is checked here first, so errors point into the operator's
/// file; berthd checks it again (and its images) and changes nothing when it fails.
fn apply(
    client: &Client,
    args: &FileArgs,
    apply: bool,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let invalid = |message: String| ClientError::Status {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message,
    };
    let text = std::fs::read(&args.file)
        .map_err(|e| invalid(format!("cannot read {}: {e}", args.file.display())))?;
    if let Err(e) = Manifest::parse_bytes(&text, &args.file) {
        let hint = e
            .hint
            .as_ref()
            .map(|h| format!("\n  hint: {h}"))
            .unwrap_or_default();
        return Err(invalid(format!("{e}{hint}\nnothing was changed")));
    }
    let path = if apply { "/v1/apply" } else { "/v1/diff" };
    let bytes = client.call(Method::POST, path, Some(text))?;
    let report: ApplyReport = serde_json::from_slice(&bytes).map_err(ClientError::Decode)?;
    if args.json {
        print_json(out, &report);
    } else {
        let _ = out.write_all(report_text(&report).as_bytes());
    }
    Ok(())
}

fn report_text(report: &ApplyReport) -> String {
    let mut text = String::new();
    for (sign, what, names) in [
        ("+", "add", &report.added),
        ("~", "replace", &report.changed),
        ("-", "remove", &report.removed),
        ("=", "keep", &report.unchanged),
    ] {
        for name in names {
            text.push_str(&format!("{sign} {name} ({what})\n"));
        }
    }
    let changes = report.added.len() + report.changed.len() + report.removed.len();
    text.push_str(&match (report.applied, changes) {
        (_, 0) => "no changes\n".to_owned(),
        (true, n) => format!("applied {n} {}\n", plural(n, "change")),
        (false, n) => format!("{n} {} to apply\n", plural(n, "change")),
    });
    text
}

fn print_json<T: serde::Serialize>(out: &mut impl Write, value: &T) {
    if let Ok(text) = serde_json::to_string_pretty(value) {
        let _ = writeln!(out, "{text}");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// `1h02m`, `3m04s`, `12s`.
fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn ps_table(host: &HostStatus, now: u64) -> String {
    let mut rows = vec![[
        "NAME", "STATE", "HEALTH", "PID", "IP", "PORTS", "UPTIME", "RESTARTS",
    ]
    .map(str::to_owned)];
    for c in &host.containers {
        let state = match (&c.state[..], c.exit_code) {
            ("exited" | "failed" | "restarting" | "stopped", Some(code)) => {
                format!("{} ({code})", c.state)
            }
            _ => c.state.clone(),
        };
        rows.push([
            c.name.clone(),
            state,
            c.health.clone(),
            c.pid.map_or("-".into(), |p| p.to_string()),
            c.ip.clone().unwrap_or_else(|| "-".into()),
            if c.ports.is_empty() {
                "-".into()
            } else {
                c.ports.join(",")
            },
            c.started_ms
                .map_or("-".into(), |t| uptime(now.saturating_sub(t))),
            c.restarts.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = format!("host: {}", host.host);
    if !host.failed.is_empty() {
        text.push_str(&format!(" (failing: {})", host.failed.join(", ")));
    }
    text.push('\n');
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    for c in &host.containers {
        if let Some(why) = &c.waiting {
            text.push_str(&format!("{}: {why}\n", c.name));
        }
    }
    text
}

/// Runs an image command, printing its error chain on failure.
fn image_command(
    err: &mut impl Write,
    run: impl FnOnce() -> Result<(), imagectl::ImageCtlError>,
) -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(s) = cur {
                text.push_str(": ");
                text.push_str(&s.to_string());
                cur = s.source();
            }
            let _ = writeln!(err, "berthctl: {text}");
            ExitCode::FAILURE
        }
    }
}

fn inspect_text(d: &ContainerDetail) -> String {
    let s = &d.status;
    let mut lines = vec![
        format!("name:        {}", s.name),
        format!("image:       {}", s.image),
        format!("state:       {}", s.state),
        format!("health:      {}", s.health),
        format!(
            "pid:         {}",
            s.pid.map_or("-".into(), |p| p.to_string())
        ),
        format!(
            "restarts:    {} (policy {}, max {})",
            s.restarts,
            s.restart,
            d.max_restarts.map_or("none".into(), |m| m.to_string())
        ),
        format!("essential:   {}", s.essential),
        format!(
            "exit code:   {}",
            s.exit_code.map_or("-".into(), |c| c.to_string())
        ),
        format!("command:     {}", d.args.join(" ")),
        format!("workdir:     {}", d.cwd),
        format!("hostname:    {}", d.hostname),
        format!("stop signal: {}", d.stop_signal),
        format!(
            "log:         {} ({} bytes x {} files)",
            d.log_path.display(),
            d.log_max_size,
            d.log_files
        ),
    ];
    if let Some(w) = &s.waiting {
        lines.push(format!("waiting:     {w}"));
    }
    for (dep, cond) in &d.depends_on {
        lines.push(format!("depends on:  {dep} ({cond})"));
    }
    for env in &d.env {
        lines.push(format!("env:         {env}"));
    }
    lines.join("\n") + "\n"
}
/// Validates each file, reporting to `out` (successes) and `err` (errors); true if all passed.
fn validate(args: &ValidateArgs, out: &mut impl Write, err: &mut impl Write) -> bool {
    let mut all_ok = true;
    for file in &args.files {
        match check(file, !args.no_images) {
            Ok(manifest) => {
                let c = manifest.containers.len();
                let i = manifest.images.len();
                // Write failures (closed pipe) are not a manifest problem; nothing to report.
                let _ = writeln!(
                    out,
                    "{}: ok ({c} {}, {i} {})",
                    file.display(),
                    plural(c, "container"),
                    plural(i, "image")
                );
            }
            Err(e) => {
                all_ok = false;
                let _ = writeln!(err, "{e}");
                if let Some(hint) = &e.hint {
                    let _ = writeln!(err, "  hint: {hint}");
                }
            }
        }
    }
    all_ok
}

/// Loads `file` and, if `images`, resolves its images relative to the file's directory.
fn check(file: &Path, images: bool) -> Result<Manifest, berth_agent::manifest::ManifestError> {
    let manifest = Manifest::load(file)?;
    if images {
        let base = file.parent().unwrap_or(Path::new(""));
        manifest.resolve_images(base)?;
    }
    Ok(manifest)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn status(name: &str, state: &str) -> berth_agent::api::ContainerStatus {
        berth_agent::api::ContainerStatus {
            name: name.into(),
            image: "busybox".into(),
            state: state.into(),
            health: "-".into(),
            pid: None,
            restarts: 0,
            started_ms: None,
            exit_code: None,
            waiting: None,
            restart: "no".into(),
            essential: false,
            ip: None,
            ports: vec![],
        }
    }

    #[test]
    fn ps_lines_up_columns_and_explains_waits() {
        let mut web = status("web", "running");
        web.pid = Some(42);
        web.started_ms = Some(1_000);
        web.restarts = 2;
        web.health = "healthy".into();
        let mut app = status("app", "pending");
        app.waiting = Some("waiting for web to be healthy".into());
        let mut crash = status("crash", "restarting");
        crash.exit_code = Some(1);
        let host = HostStatus {
            host: "degraded".into(),
            failed: vec!["crash".into()],
            containers: vec![web, app, crash],
            processes: Some(40),
            zombies: Some(0),
            agent_rss_kib: Some(9000),
        };
        assert_eq!(
            ps_table(&host, 3_726_000),
            "host: degraded (failing: crash)\n\
             NAME   STATE           HEALTH   PID  IP  PORTS  UPTIME  RESTARTS\n\
             web    running         healthy  42   -   -      1h02m   2\n\
             app    pending         -        -    -   -      -       0\n\
             crash  restarting (1)  -        -    -   -      -       0\n\
             app: waiting for web to be healthy\n"
        );
    }

    #[test]
    fn completions_cover_every_command() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "berthctl",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for command in [
            "ps", "inspect", "logs", "exec", "apply", "diff", "events", "validate",
        ] {
            assert!(script.contains(command), "{command} missing");
        }
    }

    #[test]
    fn reports_and_uptimes() {
        let report = ApplyReport {
            added: vec!["new".into()],
            changed: vec!["web".into()],
            removed: vec![],
            unchanged: vec!["db".into()],
            applied: false,
        };
        assert_eq!(
            report_text(&report),
            "+ new (add)\n~ web (replace)\n= db (keep)\n2 changes to apply\n"
        );
        assert_eq!(uptime(59_999), "59s");
        assert_eq!(uptime(61_000), "1m01s");
        assert_eq!(uptime(90_000_000), "1d01h");
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn validate_reports_each_file() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good.toml");
        std::fs::write(&good, "version = 1\n[images]\nb = { source = \"oci-layout:b\" }\n[containers.c]\nimage = \"b\"\n").unwrap();
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, "version = 1\n[containers.c]\nimagee = \"b\"\n").unwrap();

        let args = ValidateArgs {
            files: vec![good.clone()],
            no_images: true,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(validate(&args, &mut out, &mut err));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}: ok (1 container, 1 image)\n", good.display())
        );
        assert!(err.is_empty());

        // With image checks the missing layout fails, pointing at the source value.
        let args = ValidateArgs {
            files: vec![good.clone(), bad.clone()],
            no_images: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(!validate(&args, &mut out, &mut err));
        assert!(out.is_empty());
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains(&format!(
                "{}:3:16: image \"b\": no OCI image layout",
                good.display()
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("{}:3:1: unknown key `imagee`", bad.display())),
            "{err}"
        );
    }
}
