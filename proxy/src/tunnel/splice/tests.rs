//! The copy: bulk through a full socket, half-close, and the idle timeout (which must cut
//! only a tunnel where neither side sent anything for the whole timeout).

#![allow(clippy::unwrap_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn counters() -> Counters {
    Counters {
        up: IntCounter::new("up", "up").unwrap(),
        down: IntCounter::new("down", "down").unwrap(),
    }
}

/// A connected loopback pair: (the proxy's end, the peer's end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap());
    let (peer, accepted) = tokio::join!(peer, listener.accept());
    (accepted.unwrap().0, peer.unwrap())
}

#[tokio::test]
async fn splice_carries_bulk_to_a_slow_reader_in_order_then_half_closes() {
    // Far more than loopback socket buffers hold while the agent is not reading: the copy must
    // keep what the agent's socket refuses and send it later, in order.
    const BULK: usize = 12 << 20;
    let pattern: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
    let (client, mut agent) = pair().await;
    let (upstream, mut host) = pair().await;
    let counters = counters();
    let proxy = tokio::spawn(async move {
        let stop = CancellationToken::new();
        let idle = Duration::from_secs(60);
        splice(client, upstream, b"hello".to_vec(), idle, &stop, &counters).await
    });
    let sent = pattern.clone();
    let host_side = tokio::spawn(async move {
        let mut replay = [0u8; 5];
        host.read_exact(&mut replay).await.unwrap();
        host.write_all(&sent).await.unwrap();
        host.shutdown().await.unwrap();
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).await.unwrap();
        (replay, rest)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    agent.read_to_end(&mut got).await.unwrap();
    assert!(
        got == pattern,
        "the agent got {} bytes, not the host's",
        got.len()
    );
    agent.write_all(b"bye").await.unwrap();
    agent.shutdown().await.unwrap();
    let (replay, rest) = host_side.await.unwrap();
    assert_eq!((&replay, rest.as_slice()), (b"hello", &b"bye"[..]));
    let transfer = proxy.await.unwrap();
    assert_eq!(
        transfer,
        Transfer {
            up: 8,
            down: BULK as u64,
            end: "closed"
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_silent_for_the_idle_timeout_is_cut_as_idle_timeout() {
    let (client, _agent) = pair().await;
    let (upstream, mut host) = pair().await;
    let counters = counters();
    let stop = CancellationToken::new();
    let idle = Duration::from_secs(600);
    let started = Instant::now();
    let proxy = splice(client, upstream, b"hello".to_vec(), idle, &stop, &counters);
    let (transfer, replay) = tokio::join!(proxy, async {
        let mut replay = [0u8; 5];
        host.read_exact(&mut replay).await.unwrap();
        replay
    });
    assert_eq!(&replay, b"hello");
    assert_eq!(
        transfer,
        Transfer {
            up: 5,
            down: 0,
            end: "idle-timeout"
        }
    );
    // The paused clock only moves when every task waits, so this is exact, not a timing guess.
    assert!(
        started.elapsed() >= idle,
        "cut after {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_that_keeps_talking_outlives_many_idle_timeouts() {
    let (client, mut agent) = pair().await;
    let (upstream, mut host) = pair().await;
    let counters = counters();
    let stop = CancellationToken::new();
    let idle = Duration::from_secs(10);
    let proxy = splice(client, upstream, Vec::new(), idle, &stop, &counters);
    // One byte each way every 6 s for 60 s: never 10 s of silence, six idle timeouts long.
    let talk = async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            agent.write_all(b"a").await.unwrap();
            let mut byte = [0u8; 1];
            host.read_exact(&mut byte).await.unwrap();
            host.write_all(b"b").await.unwrap();
            agent.read_exact(&mut byte).await.unwrap();
        }
        agent.shutdown().await.unwrap();
        host.shutdown().await.unwrap();
    };
    let (transfer, ()) = tokio::join!(proxy, talk);
    assert_eq!(
        transfer,
        Transfer {
            up: 10,
            down: 10,
            end: "closed"
        }
    );
}

#[tokio::test]
async fn stop_cuts_a_tunnel_as_drain_timeout() {
    let (client, _agent) = pair().await;
    let (upstream, _host) = pair().await;
    let counters = counters();
    let stop = CancellationToken::new();
    stop.cancel();
    let idle = Duration::from_secs(600);
    let transfer = splice(client, upstream, Vec::new(), idle, &stop, &counters).await;
    assert_eq!(transfer.end, "drain-timeout");
}
