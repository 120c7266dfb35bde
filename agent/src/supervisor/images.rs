//! Registry images that could not be pulled at boot: one background thread per image retries
//! with growing delays (1 s doubling to 60 s), each failure on the console, while every other
//! container runs. When an image arrives, berthd plans the manifest again and reconciles:
//! the waiting containers start and nothing that runs is touched.
//!
//! A pull that cannot succeed by waiting (a pinned digest the registry content does not match,
//! an image berth cannot run) is reported once and not retried; its containers never start
//! until the manifest is fixed and applied.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Duration;

use super::boot::{ensure_registry_image, store_dir, WaitingImage};
use crate::console::{self, Event};
use crate::manifest::Manifest;
use crate::store::Store;

/// First retry delay.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// The retry delays: `FIRST_RETRY` doubling up to `MAX_RETRY`.
pub fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_RETRY)
}

/// Pulls in progress in the background.
#[derive(Debug)]
pub struct ImageWaiter {
    arrived: Receiver<String>,
}

impl ImageWaiter {
    /// Report `waiting` on the console and start retrying the ones that can succeed.
    pub fn spawn(
        manifest: &Manifest,
        base_dir: &Path,
        state_dir: &Path,
        waiting: &[WaitingImage],
    ) -> ImageWaiter {
        let (tx, arrived) = mpsc::channel();
        for image in waiting {
            let who = if image.containers.is_empty() {
                "no container uses it".to_string()
            } else {
                format!("container(s) {} wait for it", image.containers.join(", "))
            };
            let retry = if image.retryable {
                format!("; retrying in {}s", retry_delay(0).as_secs())
            } else {
                "; not retried: fix the manifest and apply it".to_string()
            };
            console::emit(&Event::Error {
                what: format!(
                    "{}: image {:?}: cannot pull {}: {}; {who}{retry}",
                    image.at, image.name, image.reference, image.error
                ),
            });
            if !image.retryable {
                continue;
            }
            let job = Job {
                manifest: manifest.clone(),
                base_dir: base_dir.to_path_buf(),
                state_dir: state_dir.to_path_buf(),
                image: image.clone(),
            };
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pull-{}", image.name))
                .spawn(move || {
                    if job.run() {
                        let _ = tx.send(job.image.name.clone());
                    }
                });
            if let Err(e) = spawned {
                console::emit(&Event::Error {
                    what: format!("image {:?}: cannot start its pull thread: {e}", image.name),
                });
            }
        }
        ImageWaiter { arrived }
    }

    /// Images that arrived since the last call.
    pub fn arrived(&self) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            match self.arrived.try_recv() {
                Ok(name) => names.push(name),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return names,
            }
        }
    }
}

struct Job {
    manifest: Manifest,
    base_dir: PathBuf,
    state_dir: PathBuf,
    image: WaitingImage,
}

impl Job {
    /// Retry until the image is in the store (true) or cannot ever be (false).
    fn run(&self) -> bool {
        let mut attempt = 0;
        loop {
            std::thread::sleep(retry_delay(attempt));
            attempt += 1;
            let store = match Store::open(&store_dir(&self.state_dir)) {
                Ok(store) => store,
                Err(e) => {
                    self.report(&crate::runtime::init::error_chain(&e), attempt, true);
                    continue;
                }
            };
            match ensure_registry_image(
                &store,
                &self.manifest,
                &self.base_dir,
                &self.state_dir,
                &self.image.name,
                &self.image.reference,
            ) {
                Ok(_) => {
                    console::emit(&Event::Pulling {
                        image: self.image.name.clone(),
                        what: format!("done after {attempt} retries"),
                    });
                    return true;
                }
                Err(e) => {
                    let retryable = e.is_retryable();
                    self.report(&crate::runtime::init::error_chain(&e), attempt, retryable);
                    if !retryable {
                        return false;
                    }
                }
            }
        }
    }

    fn report(&self, error: &str, attempt: u32, retry: bool) {
        let next = if retry {
            format!("; retrying in {}s", retry_delay(attempt).as_secs())
        } else {
            "; not retried: fix the manifest and apply it".into()
        };
        console::emit(&Event::Error {
            what: format!(
                "{}: image {:?}: cannot pull {}: {error}{next}",
                self.image.at, self.image.name, self.image.reference
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_and_cap() {
        let secs: Vec<u64> = (0..9).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
