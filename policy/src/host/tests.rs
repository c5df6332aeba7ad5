use super::*;

fn exact(s: &str) -> HostPattern {
    HostPattern::Exact(s.to_owned())
}

fn suffix(s: &str) -> HostPattern {
    HostPattern::Suffix(s.to_owned())
}

#[test]
fn normalize_lowercases_and_strips_one_trailing_dot() {
    assert_eq!(normalize_host("PyPI.Org").unwrap(), "pypi.org");
    assert_eq!(normalize_host("pypi.org.").unwrap(), "pypi.org");
    assert_eq!(normalize_host("localhost").unwrap(), "localhost");
    assert_eq!(
        normalize_host("_dmarc.example.com").unwrap(),
        "_dmarc.example.com"
    );
    assert_eq!(
        normalize_host("xn--bcher-kva.example").unwrap(),
        "xn--bcher-kva.example"
    );
    assert_eq!(normalize_host("a-b.c1").unwrap(), "a-b.c1");
    // Only one dot is stripped: "pypi.org.." has an empty last label.
    assert_eq!(
        normalize_host("pypi.org.."),
        Err(HostError::InvalidLabel(String::new()))
    );
}

#[test]
fn normalize_refuses_empty_and_too_long() {
    assert_eq!(normalize_host(""), Err(HostError::Empty));
    assert_eq!(normalize_host("."), Err(HostError::Empty));
    let label = "a".repeat(63);
    let max = format!("{label}.{label}.{label}.{}", "b".repeat(61)); // 253 characters
    assert_eq!(max.len(), 253);
    assert_eq!(normalize_host(&max).unwrap(), max);
    assert_eq!(normalize_host(&format!("{max}.")).unwrap(), max);
    assert_eq!(normalize_host(&format!("x{max}")), Err(HostError::TooLong));
}

#[test]
fn normalize_refuses_bad_labels() {
    let long = "a".repeat(64);
    for (input, label) in [
        ("a..b", ""),
        (".a", ""),
        ("-a.com", "-a"),
        ("a-.com", "a-"),
        ("a b.com", "a b"),
        ("a*.com", "a*"),
        ("*.com", "*"),
        ("bücher.de", "bücher"),
        ("a/b", "a/b"),
        (long.as_str(), long.as_str()),
    ] {
        assert_eq!(
            normalize_host(input),
            Err(HostError::InvalidLabel(label.to_owned())),
            "{input:?}"
        );
    }
}

#[test]
fn normalize_refuses_ip_literals() {
    for input in [
        "10.0.0.1",
        "10.0.0.1.",
        "::1",
        "[::1]",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "1.2.3",
        "example.123",
        "2130706433",
        "0x7f.1",
        "a.0x7F",
    ] {
        assert_eq!(
            normalize_host(input),
            Err(HostError::IpLiteral),
            "{input:?}"
        );
    }
    // Digits inside a name, or a non-hex "0x" label, are names.
    assert_eq!(normalize_host("123.example").unwrap(), "123.example");
    assert_eq!(normalize_host("a.1com").unwrap(), "a.1com");
    assert_eq!(normalize_host("a.0xg").unwrap(), "a.0xg");
}

#[test]
fn normalize_never_panics_on_short_byte_strings() {
    // Every string of up to 3 bytes over an alphabet of the interesting characters, plus a
    // pseudo-random sweep of longer ones (a fixed LCG keeps the test deterministic).
    let alphabet: &[u8] = b"a0-_.*:[] Z\xc3\xa9\xff";
    let mut checked = 0usize;
    for len in 0..=3u32 {
        for n in 0..alphabet.len().pow(len) {
            let mut n = n;
            let mut bytes = Vec::new();
            for _ in 0..len {
                bytes.push(alphabet[n % alphabet.len()]);
                n /= alphabet.len();
            }
            let s = String::from_utf8_lossy(&bytes);
            let _ = normalize_host(&s);
            let _ = HostPattern::parse(&s);
            checked += 1;
        }
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let len = (state >> 58) as usize; // 0..64
        let bytes: Vec<u8> = (0..len)
            .map(|i| alphabet[((state >> (i % 56)) as usize + i) % alphabet.len()])
            .collect();
        let s = String::from_utf8_lossy(&bytes);
        if let Ok(host) = normalize_host(&s) {
            // Whatever is accepted is already normal: normalising again changes nothing.
            assert_eq!(normalize_host(&host).unwrap(), host);
        }
        checked += 1;
    }
    assert!(checked > 20_000);
}

#[test]
fn pattern_parse_forms() {
    assert_eq!(
        HostPattern::parse("Example.COM.").unwrap(),
        exact("example.com")
    );
    assert_eq!(
        HostPattern::parse("*.Example.com").unwrap(),
        suffix("example.com")
    );
    assert_eq!(HostPattern::parse("*").unwrap(), HostPattern::Any);
    for bad in [
        "a.*.com",
        "*example.com",
        "**.x",
        "*.*.x",
        "x.*",
        "*.",
        "",
        "10.0.0.1",
        "*.10.0.0.1",
        "[::1]",
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
    }
    let message = HostPattern::parse("a.*.com").unwrap_err();
    assert!(
        message.contains("only allowed as the whole first label"),
        "{message}"
    );
}

#[test]
fn pattern_display_is_as_written() {
    for text in ["example.com", "*.example.com", "*"] {
        assert_eq!(HostPattern::parse(text).unwrap().to_string(), text);
    }
}

#[test]
fn suffix_matches_one_or_more_labels_on_a_label_boundary() {
    let p = suffix("example.com");
    assert!(p.matches("a.example.com"));
    assert!(p.matches("a.b.example.com"));
    assert!(!p.matches("example.com"));
    assert!(!p.matches("badexample.com"));
    assert!(!p.matches(".example.com"));
    assert!(!p.matches("example.com.evil"));
    assert!(!p.matches("com"));
}

#[test]
fn exact_and_any_match() {
    assert!(exact("example.com").matches("example.com"));
    assert!(!exact("example.com").matches("a.example.com"));
    assert!(!exact("example.com").matches("example.co"));
    assert!(HostPattern::Any.matches("anything.at.all"));
}

#[test]
fn find_prefers_exact_then_longest_suffix_then_any() {
    let list = HostList(vec![
        HostPattern::Any,
        suffix("com"),
        suffix("example.com"),
        exact("a.example.com"),
        suffix("b.example.com"),
    ]);
    assert_eq!(list.find("a.example.com"), Some(&exact("a.example.com")));
    assert_eq!(list.find("x.b.example.com"), Some(&suffix("b.example.com")));
    assert_eq!(list.find("c.example.com"), Some(&suffix("example.com")));
    assert_eq!(list.find("example.com"), Some(&suffix("com")));
    assert_eq!(list.find("example.org"), Some(&HostPattern::Any));
    let no_any = HostList(list.0[1..].to_vec());
    assert_eq!(no_any.find("example.org"), None);
    assert_eq!(no_any.len(), 4);
    assert!(!no_any.is_empty());
    assert!(HostList::default().is_empty());
    assert_eq!(HostList::default().find("x"), None);
}
