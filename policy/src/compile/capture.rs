//! `[capture]`: destinations for connections the catch-all redirect captured (every outbound TCP
//! port but the SNI ports). They carry no SNI, so the only thing to decide on is the original
//! destination address and port.

use toml::Spanned;

use crate::error::{PolicyError, Source};
use crate::policy::{CaptureSettings, Destination};
use crate::raw::{RawCapture, RawDestination};

/// Compiles `[capture]`.
pub(super) fn compile(src: Source<'_>, raw: &RawCapture) -> Result<CaptureSettings, PolicyError> {
    Ok(CaptureSettings {
        allow: list(src, "capture.allow", &raw.allow)?,
        deny: list(src, "capture.deny", &raw.deny)?,
    })
}

fn list(
    src: Source<'_>,
    key: &str,
    items: &[Spanned<RawDestination>],
) -> Result<Vec<Destination>, PolicyError> {
    let mut out: Vec<Destination> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let raw = item.get_ref();
        let net = super::hosts::ip_range(src, &format!("{item_key}.cidr"), &raw.cidr)?;
        let mut ports = Vec::new();
        for (j, port) in raw.ports.iter().flatten().enumerate() {
            ports.push(super::hosts::port(
                src,
                &format!("{item_key}.ports[{j}]"),
                port,
            )?);
        }
        if raw.ports.as_ref().is_some_and(Vec::is_empty) {
            // An empty list reads as "no ports" but would mean "every port": make it explicit.
            return Err(src.error(
                item.span(),
                format!("{item_key}.ports"),
                "expected at least one port, found an empty list; remove `ports` to cover every port",
            ));
        }
        let destination = Destination { net, ports };
        if out.contains(&destination) {
            return Err(src.error(
                item.span(),
                item_key,
                format!("duplicate destination {destination}"),
            ));
        }
        out.push(destination);
    }
    Ok(out)
}
