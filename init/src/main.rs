//! berth PID 1 (stub).
fn main() {}
