//! The fd store: container output pipes that outlive berthd.
//!
//! A container's stdout and stderr are pipes berthd reads. If berthd is killed, the last read
//! ends close and the container's next write fails (SIGPIPE), so a restarted berthd could not
//! keep it. PID 1 therefore keeps a Unix datagram socket pair open for ever and hands both
//! ends to every berthd (`BERTH_FDSTORE=SEND,RECEIVE`). berthd sends each container's two read
//! ends to the send end (`SCM_RIGHTS`) with a small payload naming the container; descriptors
//! in flight stay open as long as the socket does, even when nobody reads them. A restarted
//! berthd receives them back from the receive end ([`FdStore::rotate`]).
//!
//! The queue is kept to the live containers by rotating it: berthd sends a marker, then
//! receives every message up to that marker, sending back the ones to keep. A message is out
//! of the queue only between its receive and its send, so a berthd killed mid-rotation loses
//! at most one container's pipes.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

/// The environment variable PID 1 sets: the store's send and receive descriptors.
pub const ENV: &str = "BERTH_FDSTORE";

/// Socket buffer asked for (the kernel charges queued messages to the sending end): room for
/// a few thousand containers' pipes.
const SEND_BUFFER: usize = 8 << 20;

/// Largest payload accepted.
const MAX_PAYLOAD: usize = 4096;

/// Why the fd store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FdStoreError {
    /// `BERTH_FDSTORE` is not two descriptor numbers.
    #[error("{ENV}={value:?} is not `SEND,RECEIVE` (two descriptor numbers)")]
    Env {
        /// The variable's value.
        value: String,
    },
    /// A descriptor is not a Unix datagram socket.
    #[error("{ENV}: descriptor {fd} is not a datagram socket")]
    NotASocket {
        /// The descriptor.
        fd: RawFd,
        /// Why.
        #[source]
        source: Errno,
    },
    /// Sending to the store failed (a full queue says EAGAIN).
    #[error("cannot put the output pipes of container={container} in the fd store")]
    Send {
        /// The container.
        container: String,
        /// Why.
        #[source]
        source: Errno,
    },
    /// Receiving from the store failed.
    #[error("cannot read the fd store")]
    Receive(#[source] Errno),
    /// The rotation's marker never came back.
    #[error("the fd store lost its marker; some container pipes may be gone")]
    LostMarker,
    /// A socket pair could not be created.
    #[error("cannot create a socket pair")]
    Pair(#[source] Errno),
}

/// The two descriptor numbers of `BERTH_FDSTORE` (`SEND,RECEIVE`).
pub fn parse_env(value: &str) -> Result<(RawFd, RawFd), FdStoreError> {
    let env_error = || FdStoreError::Env {
        value: value.to_owned(),
    };
    let (a, b) = value.split_once(',').ok_or_else(env_error)?;
    let send: RawFd = a.trim().parse().map_err(|_| env_error())?;
    let receive: RawFd = b.trim().parse().map_err(|_| env_error())?;
    if send < 0 || receive < 0 || send == receive {
        return Err(env_error());
    }
    Ok((send, receive))
}

/// Which container (and which run of it) a message's pipes belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Container name.
    pub container: String,
    /// Its host pid.
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22), so a reused pid is not mistaken for it.
    pub start_time: u64,
}

/// One message's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Payload {
    /// The pipes of a container (stdout, stderr read ends travel with it).
    Pipes(Key),
    /// The end of a rotation.
    Marker(String),
}

impl Payload {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Payload> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A received message: its payload (`None` when unreadable) and the descriptors it carried.
type Received = (Option<Payload>, Vec<OwnedFd>);

/// A container's output pipes, as held by the store.
#[derive(Debug)]
pub struct Entry {
    /// Whose they are.
    pub key: Key,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
}

/// The two ends of PID 1's socket pair.
#[derive(Debug)]
pub struct FdStore {
    send: OwnedFd,
    receive: OwnedFd,
    rotations: u64,
}

impl FdStore {
    /// The store PID 1 passed (`BERTH_FDSTORE`), `None` when berthd was started without one.
    /// Its descriptors are made close-on-exec so containers do not inherit them.
    pub fn from_env() -> Result<Option<FdStore>, FdStoreError> {
        let Some(value) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        let (send, receive) = parse_env(&value.to_string_lossy())?;
        for fd in [send, receive] {
            // SAFETY: fcntl on a descriptor number only inspects or flags it; a number that
            // is not open fails with EBADF.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                return Err(FdStoreError::NotASocket {
                    fd,
                    source: Errno::last(),
                });
            }
            // SAFETY: `fd` is open (fcntl succeeded); the borrow ends with this statement.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            match nix::sys::socket::getsockopt(&borrowed, sockopt::SockType) {
                Ok(SockType::Datagram) => {}
                Ok(_) => {
                    return Err(FdStoreError::NotASocket {
                        fd,
                        source: Errno::EPROTOTYPE,
                    })
                }
                Err(source) => return Err(FdStoreError::NotASocket { fd, source }),
            }
        }
        // SAFETY: PID 1 handed these descriptors to this process for its exclusive use, they
        // are open (checked above) and nothing else in berthd owns them.
        let (send, receive) =
            unsafe { (OwnedFd::from_raw_fd(send), OwnedFd::from_raw_fd(receive)) };
        Ok(Some(FdStore::new(send, receive)))
    }

    /// A store over the two ends of a datagram socket pair.
    pub fn new(send: OwnedFd, receive: OwnedFd) -> FdStore {
        // Best effort: the default buffer holds a few hundred messages.
        if setsockopt(&send, sockopt::SndBufForce, &SEND_BUFFER).is_err() {
            let _ = setsockopt(&send, sockopt::SndBuf, &SEND_BUFFER);
        }
        FdStore {
            send,
            receive,
            rotations: 0,
        }
    }

    /// A fresh in-process store (tests, and berthd run without PID 1's).
    pub fn pair() -> Result<FdStore, FdStoreError> {
        let (send, receive) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(FdStoreError::Pair)?;
        Ok(FdStore::new(send, receive))
    }

    /// Put a container's pipes in the store (the caller keeps its own descriptors).
    pub fn put(
        &mut self,
        key: &Key,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> Result<(), FdStoreError> {
        let payload = Payload::Pipes(key.clone()).encode();
        let fds = [stdout.as_raw_fd(), stderr.as_raw_fd()];
        self.send_raw(&payload, &fds)
            .map_err(|source| FdStoreError::Send {
                container: key.container.clone(),
                source,
            })
    }

    fn send_raw(&self, payload: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
        let iov = [IoSlice::new(payload)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        loop {
            match sendmsg::<()>(
                self.send.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// One queued message, `None` when the queue is empty.
    fn receive_one(&self) -> Result<Option<Received>, FdStoreError> {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let (len, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.receive.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(FdStoreError::Receive(e)),
                Ok(msg) => {
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                for fd in raw {
                                    // SAFETY: the kernel just installed this descriptor in
                                    // this process for this message; nothing else owns it.
                                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                                }
                            }
                        }
                    }
                    break (msg.bytes, fds);
                }
            }
        };
        Ok(Some((
            Payload::decode(buf.get(..len).unwrap_or_default()),
            fds,
        )))
    }

    /// Go once through the queue: the containers' pipes `keep` accepts are sent back and
    /// returned (the caller's copies), the others are closed. A restarted berthd gets its
    /// containers' pipes back this way; a running one drops those of ended containers.
    pub fn rotate(
        &mut self,
        mut keep: impl FnMut(&Key) -> bool,
    ) -> Result<Vec<Entry>, FdStoreError> {
        self.rotations += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let marker = format!("{}-{}-{}", std::process::id(), nanos, self.rotations);
        self.send_raw(&Payload::Marker(marker.clone()).encode(), &[])
            .map_err(|source| FdStoreError::Send {
                container: "(marker)".into(),
                source,
            })?;
        let mut kept: Vec<Entry> = Vec::new();
        loop {
            let Some((payload, fds)) = self.receive_one()? else {
                return Err(FdStoreError::LostMarker);
            };
            match payload {
                Some(Payload::Marker(m)) if m == marker => return Ok(kept),
                Some(Payload::Pipes(key)) if fds.len() == 2 && keep(&key) => {
                    // A duplicate (the same run twice) is dropped.
                    if kept.iter().any(|e| e.key == key) {
                        continue;
                    }
                    let mut fds = fds.into_iter();
                    let (Some(stdout), Some(stderr)) = (fds.next(), fds.next()) else {
                        continue;
                    };
                    if let Err(e) = self.put(&key, stdout.as_fd(), stderr.as_fd()) {
                        crate::console::emit(&crate::console::Event::Error {
                            what: crate::runtime::init::error_chain(&e),
                        });
                    }
                    kept.push(Entry {
                        key,
                        stdout,
                        stderr,
                    });
                }
                // Ended containers, stale markers, unreadable messages: their descriptors
                // close here.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().unwrap()
    }
    fn key(name: &str, pid: i32) -> Key {
        Key {
            container: name.into(),
            pid,
            start_time: 1000 + pid as u64,
        }
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let p = Payload::Pipes(key("web", 12));
        assert_eq!(Payload::decode(&p.encode()), Some(p));
        let m = Payload::Marker("1-2-3".into());
        assert_eq!(Payload::decode(&m.encode()), Some(m));
        assert_eq!(Payload::decode(b"{\"pipes\":{\"container\":\"x\"}}"), None);
        assert_eq!(Payload::decode(b"\xff"), None);
    }

    #[test]
    fn pipes_survive_in_the_store_and_rotation_drops_ended_containers() {
        let mut store = FdStore::pair().unwrap();
        let (web_out, web_out_w) = pipe();
        let (web_err, _web_err_w) = pipe();
        let (db_out, _db_out_w) = pipe();
        let (db_err, _db_err_w) = pipe();
        store
            .put(&key("web", 10), web_out.as_fd(), web_err.as_fd())
            .unwrap();
        store
            .put(&key("db", 11), db_out.as_fd(), db_err.as_fd())
            .unwrap();
        // berthd's own copies go away (berthd was killed): the store keeps the pipes open.
        drop((web_out, web_err, db_out, db_err));
        File::from(web_out_w).write_all(b"still here\n").unwrap();

        // A restarted berthd gets back what it asks for; db ended meanwhile.
        let kept = store.rotate(|k| k.container == "web").unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].key, key("web", 10));
        let mut text = String::new();
        File::from(kept[0].stdout.try_clone().unwrap())
            .take(11)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "still here\n");

        // Rotating again finds only web: db's pipes were dropped, web's were sent back.
        drop(kept);
        let again = store.rotate(|_| true).unwrap();
        let keys: Vec<&Key> = again.iter().map(|e| &e.key).collect();
        assert_eq!(keys, vec![&key("web", 10)]);
        // And the queue holds exactly that one message plus nothing else.
        let third = store.rotate(|_| true).unwrap();
        assert_eq!(third.len(), 1);
    }

    #[test]
    fn stale_markers_and_duplicates_are_dropped() {
        let mut store = FdStore::pair().unwrap();
        let (out, _w1) = pipe();
        let (err, _w2) = pipe();
        // A berthd killed mid-rotation left its marker and a second copy of the same run.
        store
            .send_raw(&Payload::Marker("old".into()).encode(), &[])
            .unwrap();
        store.put(&key("a", 1), out.as_fd(), err.as_fd()).unwrap();
        store.put(&key("a", 1), out.as_fd(), err.as_fd()).unwrap();
        store.send_raw(b"not json", &[]).unwrap();
        let kept = store.rotate(|_| true).unwrap();
        assert_eq!(kept.len(), 1);
        let kept = store.rotate(|_| true).unwrap();
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn env_names_two_distinct_descriptors() {
        assert_eq!(parse_env("3,4").unwrap(), (3, 4));
        for bad in ["3", "3,3", "a,4", "-1,4", ""] {
            let err = parse_env(bad).unwrap_err();
            assert!(err.to_string().contains("SEND,RECEIVE"), "{bad}: {err}");
        }
    }
}
