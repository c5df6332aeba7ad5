#![allow(clippy::unwrap_used)] // a test that unwraps bad data fails, which is the point
use proptest::prelude::*;

use super::*;
use crate::spend::money::Micros;

const STREAM: &str = ": OPENROUTER PROCESSING\n\n\
data: {\"id\":\"gen-1\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
: OPENROUTER PROCESSING\n\n\
data: {\"id\":\"gen-1\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n\
data: {\"id\":\"gen-1\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14,\"cost\":0.000046}}\n\n\
data: [DONE]\n\n";

#[test]
fn reads_usage_id_model_and_provider_from_a_stream() {
    let s = parse_sse(STREAM.as_bytes());
    assert!(s.done && !s.overflowed);
    assert_eq!((s.events, s.comments, s.malformed), (4, 2, 0));
    assert_eq!(s.response.id.as_deref(), Some("gen-1"));
    assert_eq!(s.response.model.as_deref(), Some("openai/gpt-4o"));
    assert_eq!(s.response.provider.as_deref(), Some("OpenAI"));
    let u = s.response.usage.clone().unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cost),
        (Some(12), Some(2), Some(Micros(46)))
    );
    assert!(s.response.error.is_none());
}

#[test]
fn any_chunking_and_line_ending_gives_the_same_summary() {
    let whole = parse_sse(STREAM.as_bytes());
    for ending in ["\n", "\r\n", "\r"] {
        let text = STREAM.replace('\n', ending);
        for size in [1, 2, 3, 7, 64, 1000] {
            let mut p = SseParser::new();
            for chunk in text.as_bytes().chunks(size) {
                p.feed(chunk);
            }
            assert_eq!(p.finish(), whole, "ending {ending:?}, chunks of {size}");
        }
    }
}

#[test]
fn joins_multi_line_data_and_ignores_other_fields() {
    let text =
        "event: message\nid: 5\nretry: 10\ndata: {\"id\":\"g\",\ndata:\"usage\":{\"cost\":1}}\n\n";
    let s = parse_sse(text.as_bytes());
    assert_eq!(s.events, 1);
    assert_eq!(s.response.id.as_deref(), Some("g"));
    assert_eq!(s.response.cost(), Some(Micros(1_000_000)));
}

#[test]
fn reads_a_mid_stream_error() {
    let text = "data: {\"id\":\"gen-2\",\"model\":\"m\",\"provider\":\"p\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n\
data: {\"id\":\"gen-2\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":\"server_error\",\"message\":\"Provider disconnected\"},\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n";
    let s = parse_sse(text.as_bytes());
    let e = s.response.error.unwrap();
    assert_eq!(e.code.as_deref(), Some("server_error"));
    assert_eq!(e.message.as_deref(), Some("Provider disconnected"));
    assert!(!s.done);
    assert_eq!(s.response.usage, None);
}

#[test]
fn a_cut_stream_keeps_what_it_saw() {
    let cut = &STREAM.as_bytes()[..STREAM.find("\"usage\"").unwrap() + 20];
    let s = parse_sse(cut);
    assert_eq!(s.response.id.as_deref(), Some("gen-1"));
    assert_eq!(s.response.usage, None);
    assert_eq!(s.malformed, 1); // the cut final event
}

#[test]
fn an_unterminated_last_event_is_still_read() {
    let s = parse_sse(b"data: {\"usage\":{\"cost\":0.5}}");
    assert_eq!(s.response.cost(), Some(Micros(500_000)));
}

#[test]
fn an_oversized_event_stops_parsing_but_keeps_earlier_findings() {
    let mut p = SseParser::with_limit(100);
    p.feed(b"data: {\"id\":\"early\",\"model\":\"m\"}\n\n");
    p.feed(&[b'x'; 60]);
    assert!(!p.summary().overflowed);
    p.feed(&[b'x'; 60]);
    assert!(p.summary().overflowed);
    p.feed(b"\n\ndata: {\"usage\":{\"cost\":1}}\n\n");
    let s = p.finish();
    assert!(s.overflowed);
    assert_eq!(s.response.id.as_deref(), Some("early"));
    assert_eq!(s.response.usage, None);
    // Many small data lines count toward the same bound.
    let mut p = SseParser::with_limit(100);
    for _ in 0..20 {
        p.feed(b"data: 0123456789\n");
    }
    assert!(p.finish().overflowed);
}

#[test]
fn skips_parsing_content_deltas_once_identity_is_known() {
    let mut text = String::from("data: {\"id\":\"a\",\"model\":\"m\",\"provider\":\"p\"}\n\n");
    text.push_str("data: not json at all\n\n");
    text.push_str("data: not json but mentions usage\n\n");
    let s = parse_sse(text.as_bytes());
    assert_eq!((s.events, s.malformed), (3, 1));
}

#[test]
fn fuzz_entry_accepts_odd_input() {
    fuzz_chunked(b"");
    fuzz_chunked(b"\r");
    fuzz_chunked(b"\r\r\n\n:\n");
    fuzz_chunked(STREAM.as_bytes());
    fuzz_chunked(&[0xff, 0xfe, b'\r', b'\n', b'\n']);
    fuzz_chunked(&[b'x'; 1000]);
}

proptest! {
    /// Chunk boundaries never change the parse (the property the fuzz target checks).
    #[test]
    fn chunking_is_invisible(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("data: ".to_string()),
                Just("\n".to_string()),
                Just("\r".to_string()),
                Just("\r\n".to_string()),
                Just(": keep-alive".to_string()),
                Just("{\"usage\":{\"cost\":0.25},\"id\":\"z\"}".to_string()),
                Just("[DONE]".to_string()),
                proptest::collection::vec(
                    proptest::sample::select(vec!['a', 'z', ':', '{', '}', '"', ' ', 'd']),
                    0..40,
                )
                .prop_map(String::from_iter),
            ],
            0..40,
        ),
    ) {
        let text: String = parts.concat();
        fuzz_chunked(text.as_bytes());
    }
}
