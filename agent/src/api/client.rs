//! The API client `berthctl` uses: one HTTP/1.1 request per connection, over berthd's Unix
//! socket or (remote use) TCP with a bearer token.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::{ErrorBody, AUTHORIZATION};

/// Where berthd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Its Unix socket.
    Unix(PathBuf),
    /// Its remote API: `HOST:PORT` and the token.
    Tcp {
        /// `HOST:PORT`.
        addr: String,
        /// The manifest's `[api] token`.
        token: String,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "{}", path.display()),
            Target::Tcp { addr, .. } => write!(f, "{addr}"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// berthd cannot be reached.
    #[error("cannot reach berthd at {target} (is it running, and are you root?)")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the request to berthd failed")]
    Http(#[source] hyper::Error),
    /// berthd answered with an error.
    #[error("{message}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// berthd's message.
        message: String,
    },
    /// The answer is not what this berthctl understands.
    #[error("berthd sent an answer this berthctl cannot read (different versions?)")]
    Decode(#[source] serde_json::Error),
    /// The runtime cannot start.
    #[error("cannot start the client's runtime")]
    Runtime(#[source] io::Error),
}

impl ClientError {
    /// The HTTP status berthd answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection factory for one berthd.
#[derive(Debug)]
pub struct Client {
    target: Target,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client for `target`.
    pub fn new(target: Target) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Client { target, runtime })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let connect = |source| ClientError::Connect {
            target: self.target.to_string(),
            source,
        };
        let mut builder = Request::builder().method(method).uri(path);
        let (mut sender, host) = match &self.target {
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(ClientError::Http)?;
                tokio::spawn(conn);
                (sender, "localhost".to_owned())
            }
            Target::Tcp { addr, token } => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(ClientError::Http)?;
                tokio::spawn(conn);
                builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
                (sender, addr.clone())
            }
        };
        let request = builder
            .header(hyper::header::HOST, host)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Connect {
                target: self.target.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(ClientError::Http)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Http)?
            .to_bytes();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("berthd answered {status}"));
        Err(ClientError::Status { status, message })
    }

    /// A request whose answer is read whole.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        self.runtime.block_on(async {
            let response = self.send(method, path, body).await?;
            Ok(response
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Http)?
                .to_bytes())
        })
    }

    /// `GET path`, decoded from JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.call(Method::GET, path, None)?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// A request whose answer is streamed to `each` chunk by chunk until berthd ends it.
    pub fn stream(
        &self,
        path: &str,
        each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        self.runtime.block_on(async {
            let mut body = self.send(Method::GET, path, None).await?.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(ClientError::Http)?;
                if let Some(data) = frame.data_ref() {
                    if each(data).is_err() {
                        // stdout closed (e.g. piped into head): stop quietly.
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }
}
