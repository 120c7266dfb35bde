//! berthctl: the berth operator CLI (stub).
fn main() {}
