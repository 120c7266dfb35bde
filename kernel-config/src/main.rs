//! `berth-kconfig check CONFIG`: list every option a kernel config lacks for berth, and why.
//!
//! In the spirit of moby's `check-config.sh`, but the requirement list is the project's own
//! fragments, so the check and the build can never disagree.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_kconfig::{check, load_fragments, parse_config};

const USAGE: &str = "usage: berth-kconfig check KERNEL_CONFIG [--fragments DIR]\n       berth-kconfig list [--fragments DIR]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("berth-kconfig: {message}");
            ExitCode::from(2)
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut fragments = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fragments");
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--fragments" => {
                fragments = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("--fragments needs a directory\n{USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => positional.push(arg.as_str()),
        }
    }
    let requirements = load_fragments(&fragments).map_err(|e| error_chain(&e))?;
    match positional.as_slice() {
        ["list"] => {
            for r in &requirements {
                println!("{:<28} {}", r.option, r.why);
            }
            Ok(ExitCode::SUCCESS)
        }
        ["check", config] => {
            let text = std::fs::read_to_string(config)
                .map_err(|e| format!("cannot read kernel config {config}: {e}"))?;
            let settings = parse_config(&text);
            let missing = check(&requirements, &settings);
            if missing.is_empty() {
                println!(
                    "{config}: all {} options berth requires are built in",
                    requirements.len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{config}: {} of {} required options missing:",
                missing.len(),
                requirements.len()
            );
            for m in &missing {
                println!(
                    "  {:<28} is {}; needed because: {} ({})",
                    m.requirement.option, m.found, m.requirement.why, m.requirement.origin
                );
            }
            Ok(ExitCode::from(1))
        }
        _ => Err(USAGE.to_string()),
    }
}
