//! berthd: the berth agent daemon (stub).
fn main() {}
