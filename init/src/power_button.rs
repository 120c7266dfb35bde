//! The ACPI power button: finding its evdev node and decoding key presses.
//!
//! QEMU's `system_powerdown` presses the ACPI power button; the kernel's ACPI button driver
//! reports it as an input device named "Power Button". PID 1 polls those event nodes in its
//! main loop and treats a KEY_POWER press as a power-off request.

use std::fs;
use std::path::{Path, PathBuf};

/// Name the ACPI button driver gives the power button input device.
pub const POWER_BUTTON_NAME: &str = "Power Button";
/// Size of `struct input_event` on 64-bit Linux (16-byte timeval, u16, u16, i32).
pub const INPUT_EVENT_SIZE: usize = 24;
/// `EV_KEY`.
pub const EV_KEY: u16 = 1;
/// `KEY_POWER`.
pub const KEY_POWER: u16 = 116;

/// One decoded `struct input_event` (the timestamp is not needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type (`EV_KEY`, ...).
    pub kind: u16,
    /// Event code (`KEY_POWER`, ...).
    pub code: u16,
    /// Value (1 = press, 0 = release, 2 = repeat for keys).
    pub value: i32,
}

impl InputEvent {
    /// Whether this is a press of the power key.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Decode one native-endian `struct input_event`; `None` if the slice is too short.
pub fn decode(bytes: &[u8]) -> Option<InputEvent> {
    let kind = bytes.get(16..18)?;
    let code = bytes.get(18..20)?;
    let value = bytes.get(20..24)?;
    Some(InputEvent {
        kind: u16::from_ne_bytes([kind[0], kind[1]]),
        code: u16::from_ne_bytes([code[0], code[1]]),
        value: i32::from_ne_bytes([value[0], value[1], value[2], value[3]]),
    })
}

/// Whether a buffer of whole events read from an evdev node contains a power key press.
pub fn contains_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE)
        .filter_map(decode)
        .any(|e| e.is_power_press())
}

/// The `/dev/input/eventN` nodes (under `dev_input`) whose device is named "Power Button",
/// according to `sys_class_input` (`/sys/class/input`).
pub fn find(sys_class_input: &Path, dev_input: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(sys_class_input)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("event"))
                .filter(|n| {
                    fs::read_to_string(sys_class_input.join(n).join("device/name"))
                        .map(|name| name.trim_end() == POWER_BUTTON_NAME)
                        .unwrap_or(false)
                })
                .map(|n| dev_input.join(n))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut buf = vec![0xAAu8; 16];
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&code.to_ne_bytes());
        buf.extend_from_slice(&value.to_ne_bytes());
        buf
    }

    #[test]
    fn decodes_input_event() {
        assert_eq!(
            decode(&event(1, 116, 1)),
            Some(InputEvent {
                kind: 1,
                code: 116,
                value: 1
            })
        );
        assert_eq!(decode(&event(1, 116, 1)[..23]), None);
        assert!(decode(&event(EV_KEY, KEY_POWER, 1))
            .unwrap()
            .is_power_press());
        assert!(!decode(&event(EV_KEY, KEY_POWER, 0))
            .unwrap()
            .is_power_press());
        assert!(!decode(&event(0, 0, 0)).unwrap().is_power_press());
        assert!(!decode(&event(EV_KEY, 114, 1)).unwrap().is_power_press());
    }

    #[test]
    fn finds_press_in_a_batch_of_events() {
        let mut batch = event(EV_KEY, KEY_POWER, 1);
        batch.extend(event(0, 0, 0)); // EV_SYN
        batch.extend(event(EV_KEY, KEY_POWER, 0));
        assert!(contains_power_press(&batch));
        let release_only = [event(EV_KEY, KEY_POWER, 0), event(0, 0, 0)].concat();
        assert!(!contains_power_press(&release_only));
    }

    #[test]
    fn finds_power_button_nodes_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("sys");
        for (ev, name) in [
            ("event0", "Power Button\n"),
            ("event1", "AT Translated Set 2 keyboard\n"),
            ("event2", "Power Button\n"),
        ] {
            fs::create_dir_all(sys.join(ev).join("device")).unwrap();
            fs::write(sys.join(ev).join("device/name"), name).unwrap();
        }
        fs::create_dir_all(sys.join("input0")).unwrap();
        let dev = Path::new("/dev/input");
        assert_eq!(
            find(&sys, dev),
            vec![dev.join("event0"), dev.join("event2")]
        );
        assert!(find(&tmp.path().join("missing"), dev).is_empty());
    }
}
