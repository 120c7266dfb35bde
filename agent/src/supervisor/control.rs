//! The supervisor's side of the API: answer each [`Command`] from the API thread between two
//! rounds of the main loop, so every change to the containers happens on one thread.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{boot, Clock, ContainerPlan, DepStatus, Runner, Slot, State, Supervisor};
use crate::api::{Command, ContainerDetail, ContainerStatus, Envelope, HostStatus, Power, Reply};
use crate::console::{self, Event};
use crate::manifest::Manifest;
use crate::runtime::exec::ExecConfig;
use crate::runtime::init::error_chain;

/// The name of the applied manifest in the state directory; berthd prefers it at boot.
pub const SAVED_MANIFEST: &str = "manifest.toml";

/// What the API needs besides the supervisor.
#[derive(Debug)]
pub struct Control {
    /// Requests from the API thread.
    pub requests: Receiver<Envelope>,
    /// The state directory (store, containers, the saved manifest).
    pub state_dir: PathBuf,
    /// The directory image sources are relative to (the boot manifest's).
    pub base_dir: PathBuf,
    /// PID 1, when berthd runs under berth-init (power requests go there).
    pub init: Option<Pid>,
    /// The container network, told about an applied manifest before it is reconciled.
    pub network: Option<std::sync::Arc<std::sync::Mutex<crate::net::Network>>>,
}

impl Control {
    /// Answer every waiting request. Returns false when the API thread is gone.
    pub fn serve<R: Runner, C: Clock>(&self, sup: &mut Supervisor<R, C>) -> bool {
        loop {
            match self.requests.try_recv() {
                Ok((command, reply)) => {
                    let answer = self.handle(sup, command);
                    let _ = reply.send(answer);
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Answer one request.
    pub fn handle<R: Runner, C: Clock>(
        &self,
        sup: &mut Supervisor<R, C>,
        command: Command,
    ) -> Reply {
        let not_found = |name: &str| {
            Reply::NotFound(format!(
                "no container named {name:?}; `berthctl ps` lists them"
            ))
        };
        match command {
            Command::List => Reply::Host(host_status(sup)),
            Command::Inspect(name) => match sup.slot(&name) {
                Some(slot) => Reply::Container(Box::new(detail(
                    slot,
                    sup.runner().address_of(&slot.plan.name),
                ))),
                None => not_found(&name),
            },
            Command::Start(name) => done(sup.start_container(&name), &name),
            Command::Stop(name) => done(sup.stop(&name), &name),
            Command::Restart(name) => done(sup.restart_container(&name), &name),
            Command::Events { follow } => {
                let history = sup.events().history().cloned().collect();
                if let Some(tx) = follow {
                    sup.events_mut().subscribe(tx);
                }
                Reply::Events(history)
            }
            Command::LogPath(name) => match sup.slot(&name) {
                Some(slot) => Reply::LogPath(slot.plan.log_path(), slot.plan.supervision.log.files),
                None => not_found(&name),
            },
            Command::Apply { text, apply } => self.apply(sup, &text, apply),
            Command::Power(power) => self.power(power),
            Command::ExecTarget(name) => match sup.slot(&name) {
                None => not_found(&name),
                Some(slot) => match slot.pid() {
                    None => Reply::Conflict(format!(
                        "container {name:?} is {}, not running; start it first",
                        slot.state.name()
                    )),
                    Some(pid) => Reply::ExecTarget(ExecConfig {
                        pid: pid.as_raw(),
                        args: Vec::new(),
                        env: slot.plan.init.process.env.clone(),
                        cwd: slot.plan.init.process.cwd.clone(),
                    }),
                },
            },
        }
    }

    fn apply<R: Runner, C: Clock>(
        &self,
        sup: &mut Supervisor<R, C>,
        text: &str,
        apply: bool,
    ) -> Reply {
        let manifest = match Manifest::parse(text, Path::new(SAVED_MANIFEST)) {
            Ok(m) => m,
            Err(e) => return Reply::Invalid(e.to_string()),
        };
        let hostname = manifest.host.hostname.clone();
        let for_network = manifest.clone();
        let plans = match boot::prepare_manifest(manifest, &self.base_dir, &self.state_dir) {
            Ok(b) => match b.waiting.first() {
                // apply changes all or nothing: every image must be in the store first.
                Some(w) => {
                    return Reply::Invalid(format!(
                        "{}: image {:?}: cannot pull {}: {}; nothing was changed (pull it with `berthctl pull`, then apply again)",
                        w.at, w.name, w.reference, w.error
                    ))
                }
                None => b.plans,
            },
            Err(e) => return Reply::Invalid(error_chain(&e)),
        };
        if !apply {
            return Reply::Applied(sup.diff(&plans));
        }
        if let Some(Ok(mut net)) = self.network.as_ref().map(|n| n.lock()) {
            if let Err(e) = net.update(&for_network) {
                return Reply::Invalid(format!("{}; nothing was changed", error_chain(&e)));
            }
        }
        if let Err(e) = save_manifest(&self.state_dir, text) {
            let what = format!("{}; nothing was changed", error_chain(&e));
            console::emit(&Event::Error {
                what: format!("apply: {what}"),
            });
            return Reply::Conflict(what);
        }
        if let Err(e) = super::set_host_hostname(&hostname) {
            console::emit(&Event::Error {
                what: format!("cannot set the hostname to {hostname:?}: {e}"),
            });
        }
        Reply::Applied(sup.reconcile(plans))
    }

    fn power(&self, power: Power) -> Reply {
        let Some(init) = self.init else {
            return Reply::Conflict(
                "berthd does not run under berth-init (its parent is not PID 1); stop the host another way".into(),
            );
        };
        // berth-init: SIGUSR2 powers off, SIGUSR1 reboots.
        let signal = match power {
            Power::PowerOff => Signal::SIGUSR2,
            Power::Reboot => Signal::SIGUSR1,
        };
        match nix::sys::signal::kill(init, signal) {
            Ok(()) => Reply::Done,
            Err(e) => Reply::Conflict(format!("cannot signal PID 1: {e}")),
        }
    }
}

fn done(result: Result<(), super::ControlError>, name: &str) -> Reply {
    match result {
        Ok(()) => Reply::Done,
        Err(_) => Reply::NotFound(format!(
            "no container named {name:?}; `berthctl ps` lists them"
        )),
    }
}

/// Write `text` to `STATE/manifest.toml` atomically (see [`crate::config_source::LastGood`]):
/// a power cut at any point leaves the old or the new manifest, never a mix, and a failed write
/// (disk full) leaves the old manifest in place.
pub fn save_manifest(
    state_dir: &Path,
    text: &str,
) -> Result<(), crate::config_source::last_good::SaveError> {
    crate::config_source::LastGood::in_state_dir(state_dir)
        .save(text.as_bytes())
        .map(|_| ())
}

fn status(slot: &Slot, ip: Option<std::net::Ipv4Addr>) -> ContainerStatus {
    let waiting = slot.waiting().map(|w| match w {
        DepStatus::Waiting { on, condition } => format!("waiting for {on} to be {condition}"),
        DepStatus::Blocked {
            on,
            condition,
            reason,
        } => format!("blocked: {on} cannot become {condition} ({reason})"),
        DepStatus::Ready => String::new(),
    });
    let started_ms = match slot.state {
        State::Running { .. } => slot.started_ms,
        _ => None,
    };
    ContainerStatus {
        name: slot.plan.name.clone(),
        image: slot.plan.supervision.image.clone(),
        state: slot.state.name().to_owned(),
        health: slot.health.name().to_owned(),
        pid: slot.pid().map(Pid::as_raw),
        restarts: slot.restarts,
        started_ms,
        exit_code: slot.last_exit,
        waiting,
        restart: slot.plan.supervision.restart.to_string(),
        essential: slot.plan.supervision.essential,
        ip: ip.map(|a| a.to_string()),
        ports: slot.plan.supervision.ports.clone(),
    }
}

/// Every container and the host state.
pub fn host_status<R: Runner, C: Clock>(sup: &Supervisor<R, C>) -> HostStatus {
    let failed = sup.degraded().to_vec();
    let counts = crate::procstat::count(Path::new("/proc"));
    HostStatus {
        host: if failed.is_empty() { "ok" } else { "degraded" }.to_owned(),
        failed,
        containers: sup
            .slots()
            .iter()
            .map(|s| status(s, sup.runner().address_of(&s.plan.name)))
            .collect(),
        processes: counts.map(|c| c.processes),
        zombies: counts.map(|c| c.zombies),
        agent_rss_kib: crate::procstat::own_rss_kib(),
    }
}

fn detail(slot: &Slot, ip: Option<std::net::Ipv4Addr>) -> ContainerDetail {
    let plan: &ContainerPlan = &slot.plan;
    ContainerDetail {
        status: status(slot, ip),
        args: plan.init.process.args.clone(),
        env: plan.init.process.env.clone(),
        cwd: plan.init.process.cwd.clone(),
        hostname: plan.init.process.hostname.clone(),
        depends_on: plan
            .supervision
            .depends_on
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        max_restarts: plan.supervision.max_restarts,
        stop_signal: plan.stop_signal.as_str().to_owned(),
        log_path: plan.log_path(),
        log_max_size: plan.supervision.log.max_size,
        log_files: plan.supervision.log.files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_manifest_replaces_the_old_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        save_manifest(tmp.path(), "version = 1\n# old\n").unwrap();
        save_manifest(tmp.path(), "version = 1\n# new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(SAVED_MANIFEST)).unwrap(),
            "version = 1\n# new\n"
        );
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [SAVED_MANIFEST]);
    }

    #[test]
    fn a_failed_save_leaves_the_old_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        save_manifest(tmp.path(), "version = 1\n# old\n").unwrap();
        // The temporary file cannot be written (as on a full disk): the old manifest stays,
        // nothing was written over it in place.
        std::fs::create_dir(tmp.path().join(format!(".{SAVED_MANIFEST}.tmp"))).unwrap();
        assert!(save_manifest(tmp.path(), "version = 1\n# new\n").is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(SAVED_MANIFEST)).unwrap(),
            "version = 1\n# old\n"
        );
    }
}
