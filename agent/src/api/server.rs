//! The API server inside berthd: HTTP/1.1 on a Unix socket (root only), and optionally on a
//! TCP port with a bearer token. Runs on its own thread with a single-threaded tokio runtime;
//! every request becomes a [`Command`] for the supervisor's loop.
//!
//! Clients are not trusted to behave: a request head must arrive within [`HEADER_TIMEOUT`]
//! (else the connection is closed), a body within [`BODY_TIMEOUT`] (408) and within
//! [`MAX_BODY`] (413); unknown paths answer 404, known paths with the wrong method 405.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::body::{full, ApiBody, ChannelBody};
use super::{
    Command, Envelope, ErrorBody, ExecRequest, ExecResult, Power, Reply, AUTHORIZATION, VERSION,
};
use crate::runtime::exec::{self, ExecConfig, Reaped};
use crate::runtime::logfile;

/// Largest request body accepted (a manifest): 1 MiB, like the manifest limit.
pub const MAX_BODY: usize = 1024 * 1024;

/// How long a client may take to send a request's head (line and headers), from the moment
/// the server starts reading it: a client that connects and sends nothing, or trickles its
/// headers, is disconnected instead of holding a connection forever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's body once its head arrived (answered 408).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest an exec through the API may run.
const MAX_EXEC: Duration = Duration::from_secs(600);

/// How often `logs -f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Why the API cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's directory cannot be created.
    #[error("cannot create {}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The socket or port cannot be bound.
    #[error("cannot listen on {at}")]
    Bind {
        /// Socket path or address.
        at: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The tokio runtime cannot start.
    #[error("cannot start the API's runtime")]
    Runtime(#[source] io::Error),
}

/// Where the API listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The Unix socket (created mode 0600, its directory 0700).
    pub socket: PathBuf,
    /// The remote API: address and the token clients must send.
    pub tcp: Option<(String, String)>,
}

struct Ctx {
    tx: Sender<Envelope>,
    token: Option<String>,
    reaped: Reaped,
}

/// Bind the listeners now (so errors are reported at start-up) and serve on a new thread.
/// `reaped` is where berthd's reaper leaves the exit codes of children it collected (exec
/// shims started here are its children too).
pub fn spawn(listen: &Listen, tx: Sender<Envelope>, reaped: Reaped) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ServerError::Runtime)?;
    let unix = {
        let _guard = runtime.enter();
        bind_unix(&listen.socket)?
    };
    let tcp = match &listen.tcp {
        Some((addr, token)) => {
            let std_listener =
                std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind {
                    at: addr.clone(),
                    source,
                })?;
            std_listener
                .set_nonblocking(true)
                .map_err(|source| ServerError::Bind {
                    at: addr.clone(),
                    source,
                })?;
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|source| {
                ServerError::Bind {
                    at: addr.clone(),
                    source,
                }
            })?;
            Some((listener, token.clone()))
        }
        None => None,
    };
    let local = Arc::new(Ctx {
        tx: tx.clone(),
        token: None,
        reaped: reaped.clone(),
    });
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Some((listener, token)) = tcp {
                    let remote = Arc::new(Ctx {
                        tx,
                        token: Some(token),
                        reaped,
                    });
                    tokio::spawn(async move {
                        loop {
                            if let Ok((stream, _)) = listener.accept().await {
                                serve(stream, remote.clone());
                            }
                        }
                    });
                }
                loop {
                    if let Ok((stream, _)) = unix.accept().await {
                        serve(stream, local.clone());
                    }
                }
            });
        })
        .map_err(ServerError::Runtime)?;
    Ok(())
}

fn bind_unix(socket: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    // A socket left by a previous berthd.
    let _ = std::fs::remove_file(socket);
    let bind_error = |source| ServerError::Bind {
        at: socket.display().to_string(),
        source,
    };
    let listener = tokio::net::UnixListener::bind(socket).map_err(bind_error)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, ctx: Arc<Ctx>) {
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
        });
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ApiBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<ApiBody> {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn empty(status: StatusCode) -> Response<ApiBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

async fn ask(ctx: &Ctx, command: Command) -> Option<Reply> {
    let (tx, rx) = oneshot::channel();
    ctx.tx.send((command, tx)).ok()?;
    rx.await.ok()
}

fn reply(reply: Option<Reply>) -> Response<ApiBody> {
    match reply {
        None => error(StatusCode::SERVICE_UNAVAILABLE, "berthd is shutting down"),
        Some(Reply::Host(h)) => json(StatusCode::OK, &h),
        Some(Reply::Container(c)) => json(StatusCode::OK, &c),
        Some(Reply::Events(e)) => json(StatusCode::OK, &e),
        Some(Reply::Applied(r)) => json(StatusCode::OK, &r),
        Some(Reply::LogPath(..)) | Some(Reply::ExecTarget(_)) | Some(Reply::Done) => {
            empty(StatusCode::NO_CONTENT)
        }
        Some(Reply::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Some(Reply::Invalid(m)) => error(StatusCode::UNPROCESSABLE_ENTITY, m),
        Some(Reply::Conflict(m)) => error(StatusCode::CONFLICT, m),
    }
}

/// `name=value` pairs of the query string.
fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn flag(req: &Request<Incoming>, key: &str) -> bool {
    matches!(query(req, key), Some("" | "1" | "true"))
}

fn authorized(req: &Request<Incoming>, ctx: &Ctx) -> bool {
    let Some(token) = &ctx.token else {
        return true;
    };
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(req: Request<Incoming>, ctx: &Ctx) -> Response<ApiBody> {
    if !authorized(&req, ctx) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token; pass the manifest's [api] token with --token",
        );
    }
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(&format!("/v{VERSION}/")) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown path {path}; this berthd serves API version {VERSION} under /v{VERSION}/"
            ),
        );
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["version"]) => json(
            StatusCode::OK,
            &serde_json::json!({ "api": VERSION, "berth": env!("CARGO_PKG_VERSION") }),
        ),
        (Method::GET, ["containers"]) => reply(ask(ctx, Command::List).await),
        (Method::GET, ["containers", name]) => {
            reply(ask(ctx, Command::Inspect((*name).to_owned())).await)
        }
        (Method::POST, ["containers", name, "exec"]) => {
            let name = (*name).to_owned();
            let body = match read_body(req).await {
                Ok(text) => text,
                Err(response) => return response,
            };
            let request: ExecRequest = match serde_json::from_str(&body) {
                Ok(r) => r,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad exec request: {e}")),
            };
            if request.args.is_empty() {
                return error(StatusCode::BAD_REQUEST, "exec needs a command");
            }
            match ask(ctx, Command::ExecTarget(name)).await {
                Some(Reply::ExecTarget(target)) => exec(target, request, ctx.reaped.clone()).await,
                other => reply(other),
            }
        }
        (Method::POST, ["containers", name, action]) => {
            let name = (*name).to_owned();
            let command = match *action {
                "start" => Command::Start(name),
                "stop" => Command::Stop(name),
                "restart" => Command::Restart(name),
                other => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("unknown action {other:?}; use start, stop or restart"),
                    )
                }
            };
            reply(ask(ctx, command).await)
        }
        (Method::GET, ["containers", name, "logs"]) => {
            let tail = match query(&req, "tail").map(str::parse::<usize>) {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => {
                    return error(StatusCode::BAD_REQUEST, "tail must be a number of lines")
                }
            };
            let follow = flag(&req, "follow");
            match ask(ctx, Command::LogPath((*name).to_owned())).await {
                Some(Reply::LogPath(path, files)) => logs(path, files, tail, follow),
                other => reply(other),
            }
        }
        (Method::GET, ["events"]) => {
            let follow = flag(&req, "follow");
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let command = Command::Events {
                follow: follow.then_some(tx),
            };
            match ask(ctx, command).await {
                Some(Reply::Events(history)) => events(history, follow.then_some(rx)),
                other => reply(other),
            }
        }
        (Method::POST, [which @ ("apply" | "diff")]) => {
            let apply = *which == "apply";
            let body = match read_body(req).await {
                Ok(text) => text,
                Err(response) => return response,
            };
            reply(ask(ctx, Command::Apply { text: body, apply }).await)
        }
        (Method::POST, ["host", action @ ("poweroff" | "reboot")]) => {
            let power = if *action == "reboot" {
                Power::Reboot
            } else {
                Power::PowerOff
            };
            match ask(ctx, Command::Power(power)).await {
                Some(Reply::Done) => empty(StatusCode::ACCEPTED),
                other => reply(other),
            }
        }
        (method, parts) => match allowed_method(parts) {
            Some(allowed) => {
                let mut response = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not allowed on {path}; use {allowed}"),
                );
                response.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static(allowed),
                );
                response
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!("unknown request {method} {path}; see docs/api.md"),
            ),
        },
    }
}

/// The method a known path answers to (for a 405 and its `Allow` header); `None` for a path
/// that does not exist.
fn allowed_method(parts: &[&str]) -> Option<&'static str> {
    match parts {
        ["version"]
        | ["containers"]
        | ["containers", _]
        | ["containers", _, "logs"]
        | ["events"] => Some("GET"),
        ["containers", _, "exec" | "start" | "stop" | "restart"]
        | ["apply" | "diff"]
        | ["host", "poweroff" | "reboot"] => Some("POST"),
        _ => None,
    }
}

/// Run an exec shim on a thread (it blocks while the command runs) and collect its output.
async fn exec(target: ExecConfig, request: ExecRequest, reaped: Reaped) -> Response<ApiBody> {
    let limit = Duration::from_millis(request.timeout_ms.unwrap_or(u64::MAX)).min(MAX_EXEC);
    let cfg = ExecConfig {
        args: request.args,
        ..target
    };
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("exec".into())
        .spawn(move || {
            let _ = tx.send(run_exec(&cfg, limit, &reaped));
        });
    if let Err(e) = spawned {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start exec: {e}"),
        );
    }
    match rx.await {
        Ok(Ok(result)) => json(StatusCode::OK, &result),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot run the exec shim: {e}"),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exec ended without a result",
        ),
    }
}

fn run_exec(cfg: &ExecConfig, limit: Duration, reaped: &Reaped) -> io::Result<ExecResult> {
    use std::io::Read;
    let mut cmd = exec::command(&exec::shim_program(), cfg)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        readers.push(std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.take(MAX_BODY as u64).read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        }));
    }
    let exit_code = exec::wait_child(&mut child, Some(std::time::Instant::now() + limit), reaped);
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Ok(ExecResult {
        exit_code,
        stdout: outputs.next().unwrap_or_default(),
        stderr: outputs.next().unwrap_or_default(),
    })
}

/// The request body as text: at most [`MAX_BODY`] bytes (413 beyond, refused from its
/// `Content-Length` before reading when it declares one), within [`BODY_TIMEOUT`] (408).
async fn read_body(req: Request<Incoming>) -> Result<String, Response<ApiBody>> {
    let too_large = |size: String| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is {size}; the limit is {MAX_BODY} bytes (1 MiB) — manifests hold declarations, ship data inside images"
            ),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&n| n > MAX_BODY as u64) {
        return Err(too_large(format!("{declared} bytes")));
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let collected = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s; send it in one go",
                    BODY_TIMEOUT.as_secs()
                ),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(too_large(format!("more than {MAX_BODY} bytes")))
        }
        Ok(Err(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ))
        }
        Ok(Ok(collected)) => collected,
    };
    String::from_utf8(collected.to_bytes().to_vec()).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "the request body is not valid UTF-8",
        )
    })
}

fn events(
    history: Vec<crate::supervisor::events::Event>,
    live: Option<mpsc::UnboundedReceiver<crate::supervisor::events::Event>>,
) -> Response<ApiBody> {
    let (tx, body) = ChannelBody::channel(64);
    tokio::spawn(async move {
        for event in history {
            if tx.send(ndjson(&event)).await.is_err() {
                return;
            }
        }
        if let Some(mut live) = live {
            while let Some(event) = live.recv().await {
                if tx.send(ndjson(&event)).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

fn ndjson<T: Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn logs(path: PathBuf, files: u32, tail: Option<usize>, follow: bool) -> Response<ApiBody> {
    let (tx, body) = ChannelBody::channel(64);
    tokio::spawn(async move {
        let lines = logfile::tail(&path, files, tail).unwrap_or_default();
        let meta = std::fs::metadata(&path).ok();
        let mut offset = meta.as_ref().map_or(0, |m| m.len());
        let mut inode = meta.as_ref().map_or(0, |m| m.ino());
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
            if tx.send(Bytes::from(text)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            if tx.is_closed() {
                return;
            }
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let ino = meta.as_ref().map_or(0, |m| m.ino());
            if ino != inode || len < offset {
                // Rotated (or recreated): the live file starts over.
                inode = ino;
                offset = 0;
            }
            if len > offset {
                match read_from(&path, offset) {
                    Ok(chunk) => {
                        offset += u64::try_from(chunk.len()).unwrap_or(0);
                        if tx.send(Bytes::from(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => offset = len,
                }
            }
        }
    });
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The whole lines of `path` from byte `offset` on.
fn read_from(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(whole);
    Ok(buf)
}
