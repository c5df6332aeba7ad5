//! Which resolved addresses a tunnel may dial.
//!
//! An allowed SNI must not become a way into the Pod, the node or the cloud's metadata service,
//! so anything that is not a public unicast address is refused unless the policy names its range
//! for that host. Addresses that embed an IPv4 address (v4-mapped, NAT64, 6to4) are judged by the
//! address they embed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is not public, for logs.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

/// True when the tunnel may dial `ip` for a host whose rule allows `allow_ranges`.
pub fn permitted(ip: IpAddr, allow_ranges: &[IpNet]) -> bool {
    non_public_kind(ip).is_none() || allow_ranges.iter().any(|net| net.contains(&ip))
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("shared-address-space")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        Some("unique-local")
    } else if seg[0] == 0x0064 && seg[1] == 0xff9b {
        // NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48): judge the embedded IPv4.
        v4_kind(Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32))
    } else if seg[0] == 0x2002 {
        // 6to4 carries an IPv4 address in bits 16..48.
        v4_kind(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32))
    } else if seg[..6] == [0; 6] {
        // IPv4-compatible (deprecated) ::a.b.c.d.
        v4_kind(Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32)).or(Some("reserved"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kind(s: &str) -> Option<&'static str> {
        non_public_kind(s.parse().unwrap())
    }

    #[test]
    fn refuses_every_non_public_range() {
        for (addr, want) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("169.254.169.254", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared-address-space"),
            ("100.127.255.254", "shared-address-space"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fc00::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::10.0.0.1", "private"),
            ("2002:7f00:1::", "loopback"),
            ("::10.0.0.1", "private"),
        ] {
            assert_eq!(kind(addr), Some(want), "{addr}");
        }
    }

    #[test]
    fn permits_public_and_documentation_addresses() {
        for addr in [
            "1.1.1.1",
            "192.0.2.10",
            "198.51.100.7",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2001:db8::2",
            "64:ff9b::101:101",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(kind(addr), None, "{addr}");
        }
    }

    #[test]
    fn allow_ranges_open_exactly_their_range() {
        let ranges: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(permitted("127.0.0.1".parse().unwrap(), &ranges));
        assert!(!permitted("10.0.0.1".parse().unwrap(), &ranges));
        assert!(!permitted("::1".parse().unwrap(), &ranges));
        assert!(permitted("1.1.1.1".parse().unwrap(), &[]));
    }
}
