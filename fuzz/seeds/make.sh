#!/usr/bin/env bash
# Rebuilds the committed seed corpora in fuzz/seeds/<target>/ from the project's fixtures:
#   client_hello/  every captured ClientHello (proxy/src/client_hello/fixtures/*.bin), prefixed
#                  with the target's chunking header: pushed byte by byte, and in 65/256-byte
#                  pieces; plus curl's hello re-framed as 1-byte TLS records.
#   policy_parse/  the example policies and the one-error-each bad policies of the policy crate.
#   dns_query/     a phase byte and a DNS query: allowed, refused, search expansion, TXT, HTTPS,
#                  two questions, EDNS (the DNS tests' cases).
#   (money/ is hand-written and left alone: real upstream price strings and operator amounts.)
# Re-run after re-capturing fixtures or adding policy examples: bash fuzz/seeds/make.sh
set -euo pipefail
cd "$(dirname "$0")"
root=../..
rm -rf client_hello policy_parse
mkdir -p client_hello policy_parse
python3 - "$root/proxy/src/client_hello/fixtures" client_hello <<'PY'
import pathlib, struct, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in sorted(src.glob("*.bin")):
    raw = f.read_bytes()
    (out / f"{f.stem}-bytewise").write_bytes(b"\x00" + raw)
    (out / f"{f.stem}-split").write_bytes(b"\x02\x40\xff" + raw)
    if f.stem == "curl":
        payload, pos = b"", 0
        while pos < len(raw):
            n = struct.unpack("!H", raw[pos + 3:pos + 5])[0]
            payload += raw[pos + 5:pos + 5 + n]
            pos += 5 + n
        records = b"".join(b"\x16\x03\x01\x00\x01" + bytes([b]) for b in payload)
        (out / "curl-1-byte-records").write_bytes(b"\x01\x06" + records)
PY
rm -rf dns_query && mkdir -p dns_query
python3 - dns_query <<'PY'
import pathlib, struct, sys
out = pathlib.Path(sys.argv[1])
def name(n):
    return b"".join(bytes([len(l)]) + l.encode() for l in n.split(".")) + b"\0"
def query(n, t, qd=1, edns=False):
    head = struct.pack("!HHHHHH", 0x1234, 0x0100, qd, 0, 0, 1 if edns else 0)
    body = b"".join(name(n) + struct.pack("!HH", t, 1) for _ in range(qd))
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0) if edns else b""
    return head + body + opt
cases = {
    "allowed-a": (0, query("pypi.org", 1)),
    "intercept-aaaa-edns": (0, query("openrouter.ai", 28, edns=True)),
    "refused": (0, query("6c65616b.attacker.example", 1)),
    "search-expansion": (0, query("pypi.org.ns.svc.cluster.local", 1)),
    "txt": (0, query("pypi.org", 16)),
    "https-verification": (1, query("pypi.org", 65)),
    "two-questions": (0, query("pypi.org", 1, qd=2)),
}
for k, (phase, q) in cases.items():
    (out / k).write_bytes(bytes([phase]) + q)
PY
cp "$root"/policy/examples/*.toml "$root"/policy/tests/bad/*.toml policy_parse/
ls client_hello policy_parse dns_query | wc -l
