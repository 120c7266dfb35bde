//! QEMU boot-test harness.
