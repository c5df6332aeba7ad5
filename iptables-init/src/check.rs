//! The self-test's checks and their exit-code offsets: a leaf module that `error` and `verify`
//! share (it imports neither).

use std::fmt;

/// A self-test check; its exit code is the family's base (20 IPv4, 30 IPv6) plus [`Check::offset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The self-test could not run (a listener or a probe child failed).
    Setup,
    /// TCP to an SNI port was not redirected to the SNI port.
    SniRedirect,
    /// Redirected, but SO_ORIGINAL_DST is not the dialled address.
    OriginalDst,
    /// TCP to another port was not redirected to the capture port.
    CaptureRedirect,
    /// The proxy UID's connection was redirected (the proxy would connect to itself).
    ProxyExemption,
    /// UDP/443 from a non-proxy UID was not rejected.
    Udp,
    /// The installed rules differ from this configuration's.
    Rules,
    /// UDP or TCP to port 53 was not redirected to the DNS port.
    DnsRedirect,
}

impl Check {
    /// Every check, in exit-code order.
    pub const ALL: [Check; 8] = [
        Check::Setup,
        Check::SniRedirect,
        Check::OriginalDst,
        Check::CaptureRedirect,
        Check::ProxyExemption,
        Check::Udp,
        Check::Rules,
        Check::DnsRedirect,
    ];

    /// Added to the family's base exit code.
    pub fn offset(self) -> u8 {
        match self {
            Check::Setup => 0,
            Check::SniRedirect => 1,
            Check::OriginalDst => 2,
            Check::CaptureRedirect => 3,
            Check::ProxyExemption => 4,
            Check::Udp => 5,
            Check::Rules => 6,
            Check::DnsRedirect => 7,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::Setup => "setup",
            Check::SniRedirect => "sni-redirect",
            Check::OriginalDst => "original-destination",
            Check::CaptureRedirect => "capture-redirect",
            Check::ProxyExemption => "proxy-exemption",
            Check::Udp => "udp-fence",
            Check::Rules => "installed-rules",
            Check::DnsRedirect => "dns-redirect",
        })
    }
}
