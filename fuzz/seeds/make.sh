#!/usr/bin/env bash
# Rebuilds the committed seed corpora in fuzz/seeds/<target>/ from the project's fixtures:
#   client_hello/  every captured ClientHello (proxy/src/client_hello/fixtures/*.bin), prefixed
#                  with the target's chunking header: pushed byte by byte, and in 65/256-byte
#                  pieces; plus curl's hello re-framed as 1-byte TLS records.
#   policy_parse/  the example policies and the one-error-each bad policies of the policy crate.
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
cp "$root"/policy/examples/*.toml "$root"/policy/tests/bad/*.toml policy_parse/
ls client_hello policy_parse | wc -l
