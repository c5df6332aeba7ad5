//! Refusals over HTTP/2 reach the agent as answers. A refusal sent before the request body was
//! read used to drop the body first, and h2 then reset the stream with CANCEL: curl reported
//! "(92) Stream error in the HTTP/2 framing layer" instead of the 400 or 401. The body is now
//! dropped after the answer (RST_STREAM NO_ERROR, RFC 9113 §8.1).

#![allow(clippy::unwrap_used)]

use tollgate_tests::fake_openrouter::CHAT;
use tollgate_tests::gateway::{Gateway, MODEL, chat, error_message};

#[tokio::test(flavor = "multi_thread")]
async fn refusals_before_the_body_is_read_reach_curl_over_h2_and_h1() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for http2 in [true, false] {
        let curl = |content_type: &str, auth: &str| {
            let mut c = if http2 {
                run.curl().http2()
            } else {
                run.curl()
            };
            c.headers = vec![
                format!("Content-Type: {content_type}"),
                format!("Authorization: {auth}"),
            ];
            c
        };
        let bearer = format!("Bearer {}", tollgate_tests::llm_client::AGENT_KEY);
        let cases = [
            (curl("text/plain", &bearer), 400),
            (curl("application/json", "Basic dXNlcjpwYXNz"), 401),
        ];
        // Larger than the h2 stream window (64 KiB): the body cannot have arrived whole when
        // the refusal is sent.
        let mut large = chat(MODEL);
        large["messages"][0]["content"] = "x".repeat(512 * 1024).into();
        for (c, status) in cases {
            let r = c.post(CHAT, &large).await.unwrap();
            let what = format!("http2={http2} want {status}: {r:?}");
            assert_eq!(r.code, 0, "{what}");
            assert_eq!(r.status, status, "{what}");
            error_message(status, &r.json()).unwrap();
            if http2 {
                assert_eq!(r.http_version, "2", "{what}");
            }
        }
    }
    assert!(gw.fake.requests_to(CHAT).is_empty());
}
