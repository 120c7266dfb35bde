//! The name files of a container: `/etc/hosts` listing every container of the manifest by
//! name, and `/etc/resolv.conf` with the host's resolvers.
//!
//! Both are plain text rendered here (pure functions, unit-tested) and bind-mounted read-only
//! into the container by [`super::Network`].

use std::net::Ipv4Addr;

/// `/etc/hosts` for container `own` (its hostname `hostname`), given every container's names
/// (`NAME [HOSTNAME]`) and address.
pub fn hosts_file(own: &str, hostname: &str, names: &[(String, Ipv4Addr)]) -> String {
    let mut out = String::from(
        "# Written by berth: every container of the host manifest by name.\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let first = |label: &str| label.split_whitespace().next() == Some(own);
    for (label, ip) in names {
        out.push_str(&format!("{ip}\t{label}\n"));
    }
    if !names.iter().any(|(n, _)| first(n)) {
        // network = "none": its own name still resolves, to loopback.
        out.push_str(&format!("127.0.1.1\t{own}"));
        if hostname != own {
            out.push_str(&format!(" {hostname}"));
        }
        out.push('\n');
    }
    out
}

/// The nameservers in resolv.conf-style text (`nameserver X` lines), loopback ones dropped: a
/// resolver on the host's loopback is not reachable from a container's namespace.
pub fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter(|ns| {
            ns.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_owned)
        .collect()
}

/// The `search` line of resolv.conf-style text, if any.
fn search(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("search ") || l.starts_with("domain "))
        .map(|l| format!("search {}", l.split_once(' ').map_or("", |(_, d)| d.trim())))
}

/// `/etc/resolv.conf` for a container, from the host's resolv.conf text (else the kernel's
/// `/proc/net/pnp`, which has the same format and holds what the kernel's DHCP received).
pub fn resolv_conf(host: &str, pnp: &str) -> String {
    let mut servers = nameservers(host);
    let mut search_line = search(host);
    if servers.is_empty() {
        servers = nameservers(pnp);
        search_line = search_line.or_else(|| search(pnp));
    }
    let mut out = String::from("# Written by berth from the host's resolvers.\n");
    if let Some(s) = search_line {
        out.push_str(&s);
        out.push('\n');
    }
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if servers.is_empty() {
        out.push_str("# (the host has no resolver)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lists_every_container_and_the_own_hostname() {
        let names = vec![
            ("db".to_owned(), Ipv4Addr::new(10, 88, 0, 3)),
            ("web www".to_owned(), Ipv4Addr::new(10, 88, 0, 2)),
        ];
        let text = hosts_file("web", "www", &names);
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.88.0.3\tdb\n"));
        assert!(text.contains("10.88.0.2\tweb www\n"));
        let plain = hosts_file("db", "db", &names);
        assert!(plain.contains("10.88.0.3\tdb\n"));
        let isolated = hosts_file("lonely", "lonely", &names);
        assert!(isolated.contains("127.0.1.1\tlonely\n"));
        assert!(isolated.contains("10.88.0.2\tweb www\n"));
    }

    #[test]
    fn resolv_conf_copies_the_hosts_resolvers_but_not_loopback_ones() {
        let host = "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.0.2.3\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, ""),
            "# Written by berth from the host's resolvers.\nsearch example.org\nnameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn resolv_conf_falls_back_to_the_kernels_dhcp_answer() {
        let pnp = "#PROTO: DHCP\ndomain qemu.lan\nnameserver 10.0.2.3\nbootserver 10.0.2.2\n";
        let text = resolv_conf("", pnp);
        assert!(text.contains("nameserver 10.0.2.3\n"), "{text}");
        assert!(text.contains("search qemu.lan\n"), "{text}");
        assert!(resolv_conf("", "").contains("no resolver"));
    }
}
