//! Which addresses a connection may be sent to: resolved SNI hosts (the tunnel) and captured
//! original destinations (the capture router) go through the same classifier.
//!
//! An allowed SNI or an open verification phase must not become a way into the Pod, the node, the
//! cluster or the cloud's metadata and agent services, so anything that is not a public unicast
//! address is refused unless the policy names its range (`allow_ranges` for a host,
//! `[capture] allow` for a captured destination). Cloud metadata and agent endpoints hand out
//! credentials and are refused whatever the policy says. Addresses that embed an IPv4 address
//! (v4-mapped, v4-translated, NAT64 well-known prefix, 6to4, v4-compatible) are judged by the
//! address they embed.
//!
//! The documentation ranges (TEST-NET-1/2/3 `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`
//! and `2001:db8::/32`) are deliberately classified as public: they are never routed on the
//! Internet, so treating them as "the world" costs nothing in production, and the end-to-end tests
//! use them as exactly that (upstreams on a veth pair inside a test namespace). Moving them to a
//! non-public kind would make every such test need an allowance that production never needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The kind reported for cloud metadata and agent endpoints.
pub const CLOUD_METADATA_KIND: &str = "cloud-metadata";

/// Cloud metadata and agent endpoints: they hand out credentials or control the host, so no
/// policy can open them. Embedded forms (`::ffff:169.254.169.254`, NAT64, 6to4) count too.
pub const CLOUD_METADATA: [IpAddr; 8] = [
    // AWS, GCP, Azure IMDS, OpenStack, Oracle, DigitalOcean, Hetzner...
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS IMDS over IPv6 (Nitro).
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // AWS ECS task credentials endpoint.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    // AWS EKS Pod Identity agent, IPv4 and IPv6.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    // Azure WireServer (a public address, hence the list rather than a range).
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // Alibaba Cloud metadata.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Tencent Cloud metadata.
    IpAddr::V4(Ipv4Addr::new(169, 254, 0, 23)),
];

/// Why an address is not public, for logs; `None` for a public unicast address.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    if is_cloud_metadata(ip) {
        return Some(CLOUD_METADATA_KIND);
    }
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

/// True for a cloud metadata or agent endpoint, written plainly or embedded in IPv6.
pub fn is_cloud_metadata(ip: IpAddr) -> bool {
    CLOUD_METADATA.contains(&ip) || embedded_v4(ip).is_some_and(|v4| CLOUD_METADATA.contains(&v4))
}

/// True when `ip` may be dialled given the non-public ranges the policy opened (`allow_ranges`
/// of a host rule, or the `[capture] allow` entry that matched). Cloud metadata never is.
pub fn permitted(ip: IpAddr, allow_ranges: &[IpNet]) -> bool {
    match non_public_kind(ip) {
        None => true,
        Some(CLOUD_METADATA_KIND) => false,
        Some(_) => allow_ranges.iter().any(|net| net.contains(&ip)),
    }
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it: v4-mapped
/// (`::ffff:a.b.c.d`), v4-translated (`::ffff:0:a.b.c.d`), NAT64 well-known (`64:ff9b::/96`),
/// 6to4 (`2002:AABB:CCDD::/48`) and v4-compatible (`::a.b.c.d`).
fn embedded_v4(ip: IpAddr) -> Option<IpAddr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let seg = v6.segments();
    let low = || Ipv4Addr::from((u32::from(seg[6]) << 16) | u32::from(seg[7]));
    let v4 = if let Some(v4) = v6.to_ipv4_mapped() {
        v4
    } else if seg[..6] == [0, 0, 0, 0, 0xffff, 0] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // v4-translated, NAT64 well-known prefix.
        low()
    } else if seg[0] == 0x2002 {
        Ipv4Addr::from((u32::from(seg[1]) << 16) | u32::from(seg[2]))
    } else if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        low()
    } else {
        return None;
    };
    Some(IpAddr::V4(v4))
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
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
    } else if a == 192 && b == 0 && c == 0 {
        // IETF protocol assignments (DS-Lite B4/AFTR, NAT64 discovery, PCP anycast...).
        Some("protocol-assignment")
    } else if a == 198 && (b & 0xfe) == 18 {
        Some("benchmarking")
    } else if a == 192 && b == 88 && c == 99 {
        // Deprecated 6to4 relay anycast: a way into arbitrary IPv6 through someone's relay.
        Some("6to4-relay")
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
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if let Some(IpAddr::V4(v4)) = embedded_v4(IpAddr::V6(ip)) {
        // The v4-compatible form is deprecated: even a public embedded address is not dialled.
        let compatible = seg[..6] == [0; 6];
        return v4_kind(v4).or(compatible.then_some("reserved"));
    }
    if ip.is_multicast() {
        Some("multicast")
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        Some("unique-local")
    } else if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 0x0001 {
        // Local-use NAT64 (RFC 8215): the prefix length, hence where the IPv4 sits, is the
        // network's choice, and the translator is inside it.
        Some("nat64-local")
    } else if seg[0] == 0x0064 && seg[1] == 0xff9b {
        // The rest of 64:ff9b::/32 beyond the well-known /96 (judged above) is unassigned.
        Some("reserved")
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo: reaches an IPv4 host through a relay; which host the relay picks is not ours
        // to judge, and no legitimate upstream needs it.
        Some("teredo")
    } else if seg[0] == 0x2001 && seg[1] == 0x0002 && seg[2] == 0 {
        Some("benchmarking")
    } else if seg[..4] == [0x0100, 0, 0, 0] {
        Some("discard")
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
            ("169.254.1.1", "link-local"),
            ("169.254.255.255", "link-local"),
            ("10.1.2.3", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared-address-space"),
            ("100.127.255.254", "shared-address-space"),
            ("192.0.0.1", "protocol-assignment"),
            ("192.0.0.8", "protocol-assignment"),
            ("192.0.0.170", "protocol-assignment"),
            ("192.0.0.255", "protocol-assignment"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.88.99.1", "6to4-relay"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "reserved"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("fd00::1", "unique-local"),
            ("fc00::1", "unique-local"),
            ("ff02::1", "multicast"),
            // v4-mapped and v4-translated (SIIT) forms.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::ffff:0:10.0.0.1", "private"),
            ("::ffff:0:100.64.0.1", "shared-address-space"),
            // NAT64: the well-known prefix embeds the address; the local-use /48 is local.
            ("64:ff9b::10.0.0.1", "private"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::198.18.0.1", "benchmarking"),
            ("64:ff9b:1::1", "nat64-local"),
            ("64:ff9b:1::808:808", "nat64-local"),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "nat64-local"),
            ("64:ff9b:2::1", "reserved"),
            ("64:ff9b:0:0:1::808:808", "reserved"),
            // 6to4 embeds the address in bits 16..48.
            ("2002:7f00:1::", "loopback"),
            ("2002:a00:1::1", "private"),
            // v4-compatible (deprecated): never dialled, whatever it embeds.
            ("::10.0.0.1", "private"),
            ("::8.8.8.8", "reserved"),
            // Teredo, whatever its embedded server and client.
            ("2001::1", "teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:2:0:ffff::1", "benchmarking"),
            ("100::1", "discard"),
            ("100::ffff:ffff:ffff:ffff", "discard"),
        ] {
            assert_eq!(kind(addr), Some(want), "{addr}");
        }
    }

    #[test]
    fn cloud_metadata_and_agents_in_every_form() {
        for addr in [
            "169.254.169.254",
            "fd00:ec2::254",
            "169.254.170.2",
            "169.254.170.23",
            "fd00:ec2::23",
            "168.63.129.16",
            "100.100.100.200",
            "169.254.0.23",
            "::ffff:169.254.169.254",
            "::ffff:168.63.129.16",
            "::ffff:0:169.254.170.23",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::168.63.129.16",
            "2002:a9fe:a9fe::1",
            "::100.100.100.200",
        ] {
            assert_eq!(kind(addr), Some(CLOUD_METADATA_KIND), "{addr}");
            let everything: Vec<IpNet> =
                vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
            assert!(
                !permitted(addr.parse().unwrap(), &everything),
                "{addr}: no range opens metadata"
            );
        }
        // Neighbours of the endpoints are judged by their range, not as metadata.
        assert_eq!(kind("168.63.129.17"), None);
        assert_eq!(kind("169.254.170.24"), Some("link-local"));
        assert_eq!(kind("fd00:ec2::255"), Some("unique-local"));
    }

    #[test]
    fn permits_public_and_documentation_addresses() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            // TEST-NET-1/2/3 stay public: the end-to-end tests use them as the world.
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.9",
            "192.0.1.255",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.1",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "2606:4700::1111",
            "2001:db8::2",
            "2001:1::1",
            "2001:3::1",
            "2001:4860:4860::8888",
            "64:ff9b::101:101",
            "64:ff9b::8.8.8.8",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "2002:808:808::1",
            "101::1",
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
        let teredo: Vec<IpNet> = vec!["2001::/32".parse().unwrap()];
        assert!(permitted("2001::1".parse().unwrap(), &teredo));
    }
}
