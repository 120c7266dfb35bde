//! Boot test of the boot timeline: every boot prints its phases as CLOCK_BOOTTIME
//! milliseconds, a summary and the PID 1 / agent footprint. Only presence, order and format
//! are checked: tests never assert timings (tests/bench/boot-timeline reports them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_tests::{demo_image, BootOptions, Guest};

const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(60);

fn ms_of(line: &str) -> u64 {
    line.rsplit_once("ms=")
        .and_then(|(_, ms)| ms.parse().ok())
        .unwrap_or_else(|| panic!("no ms=N at the end of {line:?}"))
}

#[test]
fn boot_prints_its_timeline_summary_and_footprint() {
    let mut guest = Guest::boot(&BootOptions {
        image: demo_image().unwrap(),
        limit: Duration::from_secs(300),
        forwards: vec![],
        append: String::new(),
    })
    .unwrap();
    let mut previous = 0;
    for phase in [
        "phase=pid1_started ",
        "phase=state_mounted ",
        "phase=agent_started ",
        "phase=manifest_loaded ",
        "phase=container_running name=",
        "phase=ready ",
    ] {
        let line = guest
            .wait_for(
                &format!("berth: timeline {phase}"),
                if previous == 0 { BOOT } else { STEP },
            )
            .unwrap();
        // CLOCK_BOOTTIME never goes backwards: the phases come in order.
        let ms = ms_of(&line);
        assert!(ms >= previous, "{line} after {previous} ms");
        previous = ms;
    }
    let summary = guest.wait_for("berth: timeline summary ", STEP).unwrap();
    for key in [
        "kernel_started=0 ",
        "pid1_started=",
        "state_mounted=",
        "agent_started=",
        "manifest_loaded=",
        "ready=",
        "first_container_running=",
        "pid1_to_first_container=",
    ] {
        assert!(summary.contains(key), "{key} missing in {summary}");
    }
    let footprint = guest.wait_for("berth: footprint ", STEP).unwrap();
    let kib = |key: &str| -> u64 {
        footprint
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}N in {footprint}"))
    };
    assert!(
        kib("pid1_rss_kib=") > 0 && kib("agent_rss_kib=") > 0,
        "{footprint}"
    );
    guest.power_button().unwrap();
    guest.wait_for("berth: poweroff", STEP).unwrap();
}
