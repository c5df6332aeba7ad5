//! [`dial`] on unpinned hosts: what a resolver answers is filtered like a pin, and its failures
//! have their own reason.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use super::*;

/// A resolver that answers from a script and remembers what it was asked.
struct StubResolver {
    answer: Box<dyn Fn() -> io::Result<Vec<IpAddr>> + Send + Sync>,
    asked: Mutex<Vec<(String, u16)>>,
}

impl StubResolver {
    fn new(answer: impl Fn() -> io::Result<Vec<IpAddr>> + Send + Sync + 'static) -> Self {
        StubResolver {
            answer: Box::new(answer),
            asked: Mutex::new(Vec::new()),
        }
    }

    fn addrs(addrs: &[&str]) -> Self {
        let addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        StubResolver::new(move || Ok(addrs.clone()))
    }
}

impl Resolve for StubResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.asked.lock().unwrap().push((host.to_owned(), port));
        let answer = (self.answer)().map(|ips| {
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        });
        Box::pin(async move { answer })
    }
}

fn target<'a>(port: u16, pin: &'a [IpAddr], allow_ranges: &'a [IpNet]) -> Target<'a> {
    Target {
        host: "unpinned.test",
        port,
        pin,
        allow_ranges,
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn unpinned_hosts_are_resolved_with_their_port_and_dialled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resolver = StubResolver::addrs(&["127.0.0.1"]);
    let loopback: [IpNet; 1] = ["127.0.0.0/8".parse().unwrap()];
    let stream = dial(target(port, &[], &loopback), &resolver, TIMEOUT)
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert_eq!(stream.peer_addr().unwrap(), accepted.local_addr().unwrap());
    assert_eq!(
        *resolver.asked.lock().unwrap(),
        [("unpinned.test".to_owned(), port)]
    );
}

#[tokio::test]
async fn pinned_hosts_are_not_resolved() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resolver = StubResolver::addrs(&["10.0.0.1"]);
    let pin: [IpAddr; 1] = ["127.0.0.1".parse().unwrap()];
    let loopback: [IpNet; 1] = ["127.0.0.0/8".parse().unwrap()];
    dial(target(port, &pin, &loopback), &resolver, TIMEOUT)
        .await
        .unwrap();
    assert!(resolver.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn resolver_failures_and_empty_answers_are_resolve_failed() {
    let failing = StubResolver::new(|| Err(io::Error::new(io::ErrorKind::NotFound, "nxdomain")));
    let empty = StubResolver::addrs(&[]);
    for resolver in [failing, empty] {
        let err = dial(target(443, &[], &[]), &resolver, TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, DialError::Resolve(_)), "{err:?}");
        assert_eq!(err.reason().as_str(), "resolve-failed");
        assert_eq!(resolver.asked.lock().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn non_public_answers_are_refused_before_any_connect() {
    // A listener on the loopback answer shows no connect was tried: it stays unaccepted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for (answer, kind) in [
        (&["127.0.0.1"][..], "loopback"),
        (&["10.0.0.1", "127.0.0.1"], "private"),
        (&["169.254.169.254"], "cloud-metadata"),
        (&["::ffff:127.0.0.1"], "loopback"),
    ] {
        let resolver = StubResolver::addrs(answer);
        let err = dial(target(port, &[], &[]), &resolver, TIMEOUT)
            .await
            .unwrap_err();
        match &err {
            DialError::NonPublic { addr, kind: got } => {
                assert_eq!(*addr, answer[0].parse::<IpAddr>().unwrap());
                assert_eq!(*got, kind, "{answer:?}");
            }
            other => panic!("{answer:?}: {other:?}"),
        }
        assert_eq!(err.reason(), crate::route::Reason::NonPublicAddress);
    }
    let pending = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
    assert!(pending.is_err(), "a refused answer was dialled");
}

#[tokio::test]
async fn only_the_permitted_answers_are_dialled() {
    // One private answer (refused: no range for it) and one loopback answer the host may use.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resolver = StubResolver::addrs(&["10.0.0.1", "127.0.0.1"]);
    let loopback: [IpNet; 1] = ["127.0.0.0/8".parse().unwrap()];
    let stream = dial(target(port, &[], &loopback), &resolver, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        stream.peer_addr().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], port))
    );
}

#[tokio::test(start_paused = true)]
async fn a_resolver_that_never_answers_is_a_connect_timeout() {
    struct Never;
    impl Resolve for Never {
        fn resolve<'a>(&'a self, _: &'a str, _: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
            Box::pin(std::future::pending())
        }
    }
    let err = dial(target(443, &[], &[]), &Never, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.reason().as_str(), "connect-timeout");
}
