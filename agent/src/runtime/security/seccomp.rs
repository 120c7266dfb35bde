//! The default seccomp filter: the syscalls Docker's default profile refuses, refused with
//! `EPERM` (a deny list over an allow-by-default filter), each let through again when the
//! container was given the capability that Docker's profile ties it to.
//!
//! The rule list is built by a pure function (unit-tested), compiled to classic BPF with
//! `seccompiler` in the shim *before* it forks, and installed by the container's process as
//! its very last step before `execve`, after `no_new_privs`.

use std::collections::BTreeMap;

use caps::Capability;

use super::capabilities::CapSet;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Manifest `seccomp = "default" | "unconfined"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompProfile {
    /// The filter of this module.
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
}

impl SeccompProfile {
    /// Parse the manifest value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "default" => Ok(SeccompProfile::Default),
            "unconfined" => Ok(SeccompProfile::Unconfined),
            other => Err(format!(
                "seccomp profile {other:?} is not known; write \"default\" (Docker's default \
                 filter) or \"unconfined\" (no filter)"
            )),
        }
    }
}

/// When a listed syscall is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// When argument `arg` has any of `bits` set (one rule per bit).
    AnyBit {
        /// Argument index.
        arg: u8,
        /// The bits.
        bits: Vec<u64>,
    },
    /// When 32-bit argument `arg` is none of `allowed`.
    NotIn {
        /// Argument index.
        arg: u8,
        /// The allowed values.
        allowed: Vec<u64>,
    },
}

/// One refused syscall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Syscall name.
    pub syscall: &'static str,
    /// The errno it fails with.
    pub errno: i32,
    /// Under which arguments.
    pub when: When,
}

/// Why the filter cannot be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The machine's architecture has no seccompiler backend.
    #[error("seccomp: architecture {0} is not supported; set seccomp = \"unconfined\"")]
    Arch(String),
    /// seccompiler refused the rules.
    #[error("seccomp: cannot build the filter")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("seccomp: cannot install the filter")]
    Install(#[source] seccompiler::Error),
}

/// Namespace flags of clone(2) (Docker's mask 0x7E020000; CLONE_NEWTIME overlaps the exit
/// signal byte of clone(2) and only exists for clone3/unshare).
pub const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, both, and the query.
pub const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// (syscall, capability that lets it through as in Docker's profile).
const DENIED: &[(&str, Option<Capability>)] = &[
    ("acct", Some(Capability::CAP_SYS_PACCT)),
    ("add_key", None),
    ("adjtimex", Some(Capability::CAP_SYS_TIME)),
    ("bpf", Some(Capability::CAP_SYS_ADMIN)),
    ("clock_adjtime", Some(Capability::CAP_SYS_TIME)),
    ("clock_settime", Some(Capability::CAP_SYS_TIME)),
    ("create_module", None),
    ("delete_module", Some(Capability::CAP_SYS_MODULE)),
    ("fanotify_init", Some(Capability::CAP_SYS_ADMIN)),
    ("finit_module", Some(Capability::CAP_SYS_MODULE)),
    ("get_kernel_syms", None),
    ("get_mempolicy", Some(Capability::CAP_SYS_NICE)),
    ("init_module", Some(Capability::CAP_SYS_MODULE)),
    ("ioperm", Some(Capability::CAP_SYS_RAWIO)),
    ("iopl", Some(Capability::CAP_SYS_RAWIO)),
    ("kexec_file_load", Some(Capability::CAP_SYS_BOOT)),
    ("kexec_load", Some(Capability::CAP_SYS_BOOT)),
    ("keyctl", None),
    ("lookup_dcookie", Some(Capability::CAP_SYS_ADMIN)),
    ("mbind", Some(Capability::CAP_SYS_NICE)),
    ("mount", Some(Capability::CAP_SYS_ADMIN)),
    ("move_pages", Some(Capability::CAP_SYS_NICE)),
    ("name_to_handle_at", Some(Capability::CAP_SYS_ADMIN)),
    ("nfsservctl", None),
    ("open_by_handle_at", Some(Capability::CAP_DAC_READ_SEARCH)),
    ("perf_event_open", Some(Capability::CAP_SYS_ADMIN)),
    ("pivot_root", Some(Capability::CAP_SYS_ADMIN)),
    ("ptrace", Some(Capability::CAP_SYS_PTRACE)),
    ("query_module", None),
    ("quotactl", Some(Capability::CAP_SYS_ADMIN)),
    ("reboot", Some(Capability::CAP_SYS_BOOT)),
    ("request_key", None),
    ("set_mempolicy", Some(Capability::CAP_SYS_NICE)),
    ("setns", Some(Capability::CAP_SYS_ADMIN)),
    ("settimeofday", Some(Capability::CAP_SYS_TIME)),
    ("stime", Some(Capability::CAP_SYS_TIME)),
    ("swapoff", Some(Capability::CAP_SYS_ADMIN)),
    ("swapon", Some(Capability::CAP_SYS_ADMIN)),
    ("sysfs", None),
    ("syslog", Some(Capability::CAP_SYSLOG)),
    ("_sysctl", None),
    ("umount2", Some(Capability::CAP_SYS_ADMIN)),
    ("unshare", Some(Capability::CAP_SYS_ADMIN)),
    ("uselib", None),
    ("userfaultfd", Some(Capability::CAP_SYS_PTRACE)),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// The default profile's rules for a container holding `caps`.
pub fn default_rules(caps: &CapSet) -> Vec<Rule> {
    let allowed = |cap: &Option<Capability>| cap.is_some_and(|c| caps.contains(&c));
    let mut rules: Vec<Rule> = DENIED
        .iter()
        .filter(|(_, cap)| !allowed(cap))
        .map(|(syscall, _)| Rule {
            syscall,
            errno: libc::EPERM,
            when: When::Always,
        })
        .collect();
    rules.push(Rule {
        syscall: "personality",
        errno: libc::EPERM,
        when: When::NotIn {
            arg: 0,
            allowed: ALLOWED_PERSONALITIES.to_vec(),
        },
    });
    if !caps.contains(&Capability::CAP_SYS_ADMIN) {
        rules.push(Rule {
            syscall: "clone",
            errno: libc::EPERM,
            when: When::AnyBit {
                arg: 0,
                bits: CLONE_NAMESPACE_FLAGS.to_vec(),
            },
        });
        // clone3 passes its flags in memory a filter cannot read: refuse it as "not
        // implemented" so libc falls back to clone(2), which is checked (Docker does the same).
        rules.push(Rule {
            syscall: "clone3",
            errno: libc::ENOSYS,
            when: When::Always,
        });
    }
    rules
}

/// The syscall number of `name` on this architecture (`None` when it has no such syscall).
pub fn syscall_number(name: &str) -> Option<i64> {
    #[allow(unreachable_patterns)]
    let nr = match name {
        "acct" => libc::SYS_acct,
        "add_key" => libc::SYS_add_key,
        "adjtimex" => libc::SYS_adjtimex,
        "bpf" => libc::SYS_bpf,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "clock_settime" => libc::SYS_clock_settime,
        "clone" => libc::SYS_clone,
        "clone3" => libc::SYS_clone3,
        "delete_module" => libc::SYS_delete_module,
        "fanotify_init" => libc::SYS_fanotify_init,
        "finit_module" => libc::SYS_finit_module,
        "get_mempolicy" => libc::SYS_get_mempolicy,
        "init_module" => libc::SYS_init_module,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "kexec_load" => libc::SYS_kexec_load,
        "keyctl" => libc::SYS_keyctl,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "mbind" => libc::SYS_mbind,
        "mount" => libc::SYS_mount,
        "move_pages" => libc::SYS_move_pages,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "nfsservctl" => libc::SYS_nfsservctl,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "perf_event_open" => libc::SYS_perf_event_open,
        "personality" => libc::SYS_personality,
        "pivot_root" => libc::SYS_pivot_root,
        "ptrace" => libc::SYS_ptrace,
        "quotactl" => libc::SYS_quotactl,
        "reboot" => libc::SYS_reboot,
        "request_key" => libc::SYS_request_key,
        "set_mempolicy" => libc::SYS_set_mempolicy,
        "setns" => libc::SYS_setns,
        "settimeofday" => libc::SYS_settimeofday,
        "swapoff" => libc::SYS_swapoff,
        "swapon" => libc::SYS_swapon,
        "syslog" => libc::SYS_syslog,
        "umount2" => libc::SYS_umount2,
        "unshare" => libc::SYS_unshare,
        "userfaultfd" => libc::SYS_userfaultfd,
        // Removed from the kernel long ago but still numbered; refuse them like Docker.
        #[cfg(target_arch = "x86_64")]
        "create_module" => 174,
        #[cfg(target_arch = "x86_64")]
        "get_kernel_syms" => 177,
        #[cfg(target_arch = "x86_64")]
        "query_module" => 178,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => libc::SYS_ioperm,
        #[cfg(target_arch = "x86_64")]
        "iopl" => libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "sysfs" => libc::SYS_sysfs,
        #[cfg(target_arch = "x86_64")]
        "_sysctl" => libc::SYS__sysctl,
        #[cfg(target_arch = "x86_64")]
        "uselib" => libc::SYS_uselib,
        #[cfg(target_arch = "x86_64")]
        "ustat" => libc::SYS_ustat,
        _ => return None,
    };
    Some(nr)
}

fn conditions(when: &When) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    match when {
        When::Always => Ok(Vec::new()),
        When::AnyBit { arg, bits } => bits
            .iter()
            .map(|bit| {
                SeccompRule::new(vec![SeccompCondition::new(
                    *arg,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(*bit),
                    *bit,
                )?])
            })
            .collect(),
        When::NotIn { arg, allowed } => {
            let all_different = allowed
                .iter()
                .map(|v| SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![SeccompRule::new(all_different)?])
        }
    }
}

/// Compile rules into BPF programs for this machine, one per errno (a seccomp filter has a
/// single "match" action; the kernel runs every installed filter). Syscalls this
/// architecture does not have are skipped.
pub fn compile(rules: &[Rule]) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_string()))?;
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let Some(nr) = syscall_number(rule.syscall) else {
            continue;
        };
        let conds = conditions(&rule.when).map_err(SeccompError::Build)?;
        by_errno.entry(rule.errno).or_default().insert(nr, conds);
    }
    by_errno
        .into_iter()
        .map(|(errno, map)| {
            let filter = SeccompFilter::new(
                map,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
                arch,
            )
            .map_err(SeccompError::Build)?;
            let mut program = BpfProgram::try_from(filter).map_err(SeccompError::Build)?;
            if errno == libc::EPERM && arch == TargetArch::x86_64 {
                refuse_x32(&mut program);
            }
            Ok(program)
        })
        .collect()
}

/// Bit that marks x32-ABI syscalls on x86_64: they pass the architecture check but carry
/// other numbers, so a deny list keyed on x86_64 numbers would not see them.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Length of seccompiler's leading architecture check (load arch, compare, kill).
const ARCH_CHECK_LEN: usize = 3;

/// Insert, right after the architecture check, "any syscall number with the x32 bit set fails
/// with EPERM" (the program reloads the number itself afterwards).
fn refuse_x32(program: &mut BpfProgram) {
    let stmt = |code: u32, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let load_nr = stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0);
    let is_x32 = seccompiler::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
        jt: 0,
        jf: 1,
        k: X32_SYSCALL_BIT,
    };
    let refuse = stmt(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    );
    let at = ARCH_CHECK_LEN.min(program.len());
    program.splice(at..at, [load_nr, is_x32, refuse]);
}

/// Install the programs on the calling thread (sets `no_new_privs` too).
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::security::capabilities::DEFAULT_CAPS;

    fn defaults() -> CapSet {
        DEFAULT_CAPS.into_iter().collect()
    }

    fn refused(rules: &[Rule]) -> Vec<&'static str> {
        rules.iter().map(|r| r.syscall).collect()
    }

    #[test]
    fn default_caps_refuse_the_dangerous_syscalls() {
        let rules = default_rules(&defaults());
        let names = refused(&rules);
        for syscall in [
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "mount",
            "umount2",
            "pivot_root",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "ptrace",
            "acct",
            "settimeofday",
            "clock_settime",
            "iopl",
            "open_by_handle_at",
            "unshare",
            "setns",
            "userfaultfd",
            "syslog",
            "move_pages",
            "mbind",
            "set_mempolicy",
            "get_mempolicy",
            "personality",
            "clone",
            "clone3",
        ] {
            assert!(names.contains(&syscall), "{syscall} is not refused");
        }
        for rule in &rules {
            let expected = if rule.syscall == "clone3" {
                libc::ENOSYS
            } else {
                libc::EPERM
            };
            assert_eq!(rule.errno, expected, "{}", rule.syscall);
        }
        assert!(!names.contains(&"read"));
    }

    #[test]
    fn clone_and_personality_are_refused_only_for_some_arguments() {
        let rules = default_rules(&defaults());
        let clone = rules.iter().find(|r| r.syscall == "clone").unwrap();
        match &clone.when {
            When::AnyBit { arg: 0, bits } => {
                assert!(bits.contains(&(libc::CLONE_NEWUSER as u64)));
                assert_eq!(bits.iter().fold(0, |m, b| m | b), 0x7E02_0000);
            }
            other => panic!("{other:?}"),
        }
        let personality = rules.iter().find(|r| r.syscall == "personality").unwrap();
        assert!(
            matches!(&personality.when, When::NotIn { arg: 0, allowed } if allowed.contains(&0))
        );
    }

    #[test]
    fn added_capabilities_let_their_syscalls_through() {
        let mut caps = defaults();
        caps.insert(Capability::CAP_SYS_ADMIN);
        caps.insert(Capability::CAP_SYS_TIME);
        let names = refused(&default_rules(&caps));
        for allowed in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "settimeofday",
        ] {
            assert!(!names.contains(&allowed), "{allowed} still refused");
        }
        // Kernel keyrings are not namespaced: refused whatever the capabilities.
        for still in ["keyctl", "add_key", "request_key", "reboot", "ptrace"] {
            assert!(names.contains(&still), "{still}");
        }
    }

    #[test]
    fn rules_compile_into_one_program_per_errno() {
        let programs = compile(&default_rules(&defaults())).unwrap();
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        // Unconditional refusal of everything with a known number still compiles.
        let known: Vec<&str> = DENIED
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| syscall_number(s).is_some())
            .collect();
        assert!(known.contains(&"mount") && known.contains(&"keyctl"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_syscalls_are_refused_right_after_the_arch_check() {
        let programs = compile(&default_rules(&defaults())).unwrap();
        let eperm = &programs[0];
        // seccompiler's arch check: load arch, compare, kill.
        assert_eq!(eperm[2].k, libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(
            (eperm[3].code as u32, eperm[3].k),
            (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0)
        );
        assert_eq!(eperm[4].k, X32_SYSCALL_BIT);
        assert_eq!(eperm[5].k, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
        // The ENOSYS program is left as built.
        assert_ne!(programs[1][4].k, X32_SYSCALL_BIT);
    }

    #[test]
    fn profile_names() {
        assert_eq!(
            SeccompProfile::parse("default"),
            Ok(SeccompProfile::Default)
        );
        assert_eq!(
            SeccompProfile::parse("unconfined"),
            Ok(SeccompProfile::Unconfined)
        );
        assert!(SeccompProfile::parse("Default")
            .unwrap_err()
            .contains("\"unconfined\""));
    }
}
