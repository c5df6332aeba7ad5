//! One connection through the pipeline: original destination → ClientHello → decision →
//! tunnel, intercept or reject; then exactly one log line and one set of metric updates.
//! Captured connections (the catch-all port) skip the ClientHello: their original destination
//! is all there is to decide on.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate_policy::{Phase, Policy};

use crate::client_hello::{self, ClientHello};
use crate::evidence::{Recorder, record as evidence};
use crate::intercept::{Intercepted, Interceptor};
use crate::metrics::Metrics;
use crate::orig_dst::OrigDst;
use crate::phase;
use crate::route::{self, Decision, Route};
use crate::tunnel::{self, Counters, Resolve, Target, address};

/// Which listener accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The SNI router (`:15443`): TLS, decided by server name.
    Sni,
    /// The original-destination router (`:15001`): any TCP, decided by destination.
    Capture,
}

impl Listener {
    /// The listener as a log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Sni => "sni",
            Listener::Capture => "capture",
        }
    }
}

/// Everything a connection needs, shared by all of them.
pub struct Context {
    /// The current policy; each connection takes a snapshot after its ClientHello.
    pub policy: Arc<ArcSwap<Policy>>,
    /// The current phase.
    pub phase: Arc<phase::State>,
    /// The metrics catalog.
    pub metrics: Metrics,
    /// Resolves SNI hosts for tunnels.
    pub resolver: Arc<dyn Resolve>,
    /// Looks up pre-redirect destinations.
    pub orig_dst: Arc<dyn OrigDst>,
    /// Serves intercepted hosts.
    pub interceptor: Arc<dyn Interceptor>,
    /// Bound on the whole ClientHello read.
    pub hello_timeout: Duration,
    /// Tunnel byte counters, resolved once (label lookups are not free).
    pub counters: Counters,
    /// The proxy's own listening ports, never a captured connection's destination.
    pub own_ports: Vec<u16>,
    /// The hash-chained decision log, when a data dir is configured.
    pub evidence: Option<Arc<Recorder>>,
    /// Observe mode: the agent phase routes as verification and records the agent decision.
    pub observe: bool,
}

impl Context {
    /// Builds a context; the tunnel counters are resolved from `metrics` here.
    #[allow(clippy::too_many_arguments)] // a plain constructor; a builder would add nothing
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        phase: Arc<phase::State>,
        metrics: Metrics,
        resolver: Arc<dyn Resolve>,
        orig_dst: Arc<dyn OrigDst>,
        interceptor: Arc<dyn Interceptor>,
        hello_timeout: Duration,
    ) -> Self {
        let counters = Counters {
            up: metrics.tunnel_bytes.with_label_values(&["upstream"]),
            down: metrics.tunnel_bytes.with_label_values(&["downstream"]),
        };
        Self {
            policy,
            phase,
            metrics,
            resolver,
            orig_dst,
            interceptor,
            hello_timeout,
            counters,
            own_ports: Vec::new(),
            evidence: None,
            observe: false,
        }
    }
}

/// What happened to one connection: the fields of its log line.
#[derive(Debug)]
struct Outcome {
    listener: Listener,
    sni: Option<String>,
    phase: Phase,
    decision: Decision,
    bytes_up: u64,
    bytes_down: u64,
    end: &'static str,
    error: Option<String>,
    /// The route the pure decision gave (before a failed dial downgraded it); `None` when no
    /// decision was made. Recorded so `tollgate replay` compares like with like.
    decided: Option<Route>,
    /// The ECH/ESNI extension the hello carried (a decision input, for replay).
    encrypted: Option<client_hello::Encrypted>,
    /// Observe mode: the agent-phase decision that was not applied.
    /// Boxed: it is set only in observe mode, and inline it would widen every tunnel's task.
    observed: Option<Box<Decision>>,
}

impl Outcome {
    /// Nothing was forwarded because the dial failed: a reject, for the reason the dial gives.
    fn dial_failed(
        listener: Listener,
        phase: Phase,
        sni: Option<String>,
        decision: Decision,
        error: &tunnel::DialError,
    ) -> Self {
        let decision = Decision {
            route: Route::Reject,
            reason: error.reason(),
            ..decision
        };
        let mut outcome = Outcome::rejected(listener, phase, sni, decision, 0);
        outcome.error = Some(error.to_string());
        outcome
    }

    /// A dialled tunnel, before it ran: its decision stands; the copy fills in the rest.
    fn spliced(listener: Listener, phase: Phase, sni: Option<String>, decision: Decision) -> Self {
        Outcome::rejected(listener, phase, sni, decision, 0)
    }

    fn rejected(
        listener: Listener,
        phase: Phase,
        sni: Option<String>,
        decision: Decision,
        bytes_up: u64,
    ) -> Self {
        Self {
            listener,
            sni,
            phase,
            decision,
            bytes_up,
            bytes_down: 0,
            end: "closed",
            error: None,
            decided: None,
            encrypted: None,
            observed: None,
        }
    }
}

/// Runs one accepted connection to completion and records it. `stop` cuts it at drain timeout.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice, see below
pub fn handle(
    listener: Listener,
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send {
    // Not an `async fn`: it moves its arguments into locals, so the task would hold each one
    // twice for the connection's life. An `async` block uses what it captured in place.
    async move {
        let started = Instant::now();
        ctx.metrics.open_connections.inc();
        let _ = stream.set_nodelay(true);
        let orig_dst = ctx.orig_dst.original_dst(&stream);
        // Everything up to the copy runs boxed, and the box is freed before the copy starts:
        // a future is as large as its largest state for as long as it lives, and the
        // ClientHello read and the dial are far larger than the tunnel's copy. Unboxed, every
        // idle tunnel kept room for them (issue 13).
        let next = match listener {
            Listener::Sni => Box::pin(serve(stream, orig_dst, &ctx, &stop)).await,
            Listener::Capture => Box::pin(capture(stream, orig_dst, &ctx)).await,
        };
        let outcome = match next {
            Next::Done(outcome) => *outcome,
            Next::Splice(dialled) => {
                // Unboxed by a call: a box moved out of in place is freed only at the end of
                // its scope, which is when the tunnel ends.
                let Dialled {
                    mut outcome,
                    client,
                    upstream,
                    replay,
                    idle,
                } = unbox(dialled);
                let transfer = tunnel::splice(client, upstream, replay, idle, &stop, &ctx.counters);
                let transfer = transfer.await;
                outcome.bytes_up = transfer.up;
                outcome.bytes_down = transfer.down;
                outcome.end = transfer.end;
                outcome
            }
        };
        let evidence = ctx.evidence.as_deref();
        record(
            &ctx.metrics,
            evidence,
            &outcome,
            peer,
            orig_dst,
            started.elapsed(),
        );
        ctx.metrics.open_connections.dec();
    }
}

/// Moves a value out of its box and frees the box now.
#[allow(clippy::boxed_local)] // taking the box is the point: it is freed on return
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Where a connection stands once decided (and, for a tunnel, dialled).
enum Next {
    /// It ended (rejected, failed, or served by the interceptor).
    Done(Box<Outcome>),
    /// A tunnel is dialled and the copy is what is left.
    Splice(Box<Dialled>),
}

impl Next {
    /// The log line's fields, whichever way the connection went.
    fn outcome_mut(&mut self) -> &mut Outcome {
        match self {
            Next::Done(outcome) => outcome,
            Next::Splice(dialled) => &mut dialled.outcome,
        }
    }
}

impl From<Outcome> for Next {
    fn from(outcome: Outcome) -> Self {
        Next::Done(Box::new(outcome))
    }
}

/// A dialled tunnel: the two sockets, what to replay upstream, and its log line so far.
struct Dialled {
    outcome: Outcome,
    client: TcpStream,
    upstream: TcpStream,
    replay: Vec<u8>,
    idle: Duration,
}

/// Records a connection turned away at accept (before any byte was read).
pub fn refuse(
    metrics: &Metrics,
    evidence: Option<&Recorder>,
    listener: Listener,
    peer: SocketAddr,
    phase: Phase,
    reason: route::Reason,
) {
    metrics
        .connections_refused
        .with_label_values(&[reason.as_str()])
        .inc();
    let outcome = Outcome::rejected(listener, phase, None, Decision::reject(reason), 0);
    record(metrics, evidence, &outcome, peer, None, Duration::ZERO);
}

async fn serve(
    mut stream: TcpStream,
    orig_dst: Option<SocketAddr>,
    ctx: &Context,
    stop: &CancellationToken,
) -> Next {
    let read = tokio::select! {
        read = client_hello::read(&mut stream, ctx.hello_timeout) => read,
        _ = stop.cancelled() => Err(client_hello::HelloError::Timeout),
    };
    let (hello, raw) = match read {
        Ok(ok) => ok,
        Err(error) => {
            let reason = error.reason();
            ctx.metrics
                .client_hello_failures
                .with_label_values(&[reason])
                .inc();
            let decision = Decision::reject(route::Reason::Hello(reason));
            let mut outcome = Outcome::rejected(Listener::Sni, ctx.phase.get(), None, decision, 0);
            outcome.error = Some(error.to_string());
            return outcome.into();
        }
    };
    // One snapshot per connection: a reload mid-connection changes nothing for it.
    let policy = ctx.policy.load_full();
    let phase = ctx.phase.get();
    let (decision, observed) = observe(ctx.observe, phase, |p| {
        route::decide_hello(&hello, orig_dst, p, &policy)
    });
    let (decided, encrypted) = (
        observed.as_ref().unwrap_or(&decision).route,
        hello.encrypted,
    );
    let mut next = match decision.route {
        Route::Reject => {
            let error = ech_refusal(&ctx.metrics, &decision, hello.encrypted);
            let sni = Some(hello.sni);
            let mut outcome =
                Outcome::rejected(Listener::Sni, phase, sni, decision, raw.len() as u64);
            outcome.error = error;
            outcome.into()
        }
        Route::Tunnel => tunnel(stream, raw, hello, decision, phase, &policy, ctx).await,
        Route::Intercept => {
            let sni = hello.sni.clone();
            let conn = Intercepted {
                stream,
                replay: raw,
                hello,
            };
            let done = ctx.interceptor.handle(conn, stop.clone()).await;
            Outcome {
                listener: Listener::Sni,
                sni: Some(sni),
                phase,
                decision: Decision {
                    reason: done.reason,
                    ..decision
                },
                bytes_up: done.bytes_up,
                bytes_down: done.bytes_down,
                end: "closed",
                error: None,
                decided: None,
                encrypted: None,
                observed: None,
            }
            .into()
        }
    };
    let outcome = next.outcome_mut();
    outcome.decided = Some(decided);
    outcome.encrypted = encrypted;
    outcome.observed = observed.map(Box::new);
    next
}

/// Decides in `phase`; in observe mode the agent phase is decided as verification, and the
/// agent-phase decision is returned beside it, to be recorded, not applied.
fn observe(
    on: bool,
    phase: Phase,
    decide: impl Fn(Phase) -> Decision,
) -> (Decision, Option<Decision>) {
    if on && phase == Phase::Agent {
        (decide(Phase::Verification), Some(decide(Phase::Agent)))
    } else {
        (decide(phase), None)
    }
}

/// For a hello the ECH screen refused: counts it with the ClientHello failures (it is the hello's
/// content that is refused) and says which extension; `None` for every other rejection.
fn ech_refusal(
    metrics: &Metrics,
    decision: &Decision,
    encrypted: Option<client_hello::Encrypted>,
) -> Option<String> {
    let kind = encrypted.filter(|_| decision.reason == route::Reason::Ech)?;
    metrics
        .client_hello_failures
        .with_label_values(&[route::Reason::Ech.as_str()])
        .inc();
    Some(format!(
        "client hello carries {}: the real server name is hidden; the host's policy does not set \
         ech = true",
        kind.as_str()
    ))
}

/// Dials an SNI tunnel's host; the copy is left to [`handle`].
async fn tunnel(
    stream: TcpStream,
    raw: Vec<u8>,
    hello: ClientHello,
    decision: Decision,
    phase: Phase,
    policy: &Policy,
    ctx: &Context,
) -> Next {
    // Only the name outlives the dial: the rest of the hello is freed before the tunnel idles.
    let ClientHello { sni, .. } = hello;
    let rule = policy.host_rule(&sni);
    let target = Target {
        host: &sni,
        port: rule.and_then(|r| r.port).unwrap_or(443),
        pin: rule.map_or(&[], |r| r.pin.as_slice()),
        allow_ranges: rule.map_or(&[], |r| r.allow_ranges.as_slice()),
    };
    let upstream = match tunnel::dial(target, ctx.resolver.as_ref(), policy.tunnel.connect_timeout)
        .await
    {
        Ok(upstream) => upstream,
        Err(error) => {
            let outcome = Outcome::dial_failed(Listener::Sni, phase, Some(sni), decision, &error);
            return outcome.into();
        }
    };
    Next::Splice(Box::new(Dialled {
        outcome: Outcome::spliced(Listener::Sni, phase, Some(sni), decision),
        client: stream,
        upstream,
        replay: raw,
        idle: policy.tunnel.idle_timeout,
    }))
}

/// A captured connection: decided by its original destination, then passed through to it.
async fn capture(stream: TcpStream, orig_dst: Option<SocketAddr>, ctx: &Context) -> Next {
    let policy = ctx.policy.load_full();
    let phase = ctx.phase.get();
    let (decision, observed) = observe(ctx.observe, phase, |p| {
        route::decide_capture(orig_dst, p, &policy, &ctx.own_ports)
    });
    let decided = observed.as_ref().unwrap_or(&decision).route;
    let mut next = capture_decided(stream, orig_dst, decision, phase, &policy, ctx).await;
    let outcome = next.outcome_mut();
    outcome.decided = Some(decided);
    outcome.observed = observed.map(Box::new);
    next
}

/// A captured connection once decided: rejected, or passed through to its destination.
async fn capture_decided(
    stream: TcpStream,
    orig_dst: Option<SocketAddr>,
    decision: Decision,
    phase: Phase,
    policy: &Policy,
    ctx: &Context,
) -> Next {
    let dst = match (decision.route, orig_dst) {
        (Route::Tunnel, Some(dst)) => dst,
        _ => {
            let mut error = None;
            if let Some(dst) = orig_dst {
                let port = crate::metrics::port_label(dst.port());
                ctx.metrics
                    .capture_rejections
                    .with_label_values(&[port.as_ref(), decision.reason.as_str()])
                    .inc();
                error = address::non_public_kind(dst.ip())
                    .filter(|_| decision.reason == route::Reason::NonPublicAddress)
                    .map(|kind| format!("{} is {kind} and no [capture] allow names it", dst.ip()));
            }
            let mut outcome = Outcome::rejected(Listener::Capture, phase, None, decision, 0);
            outcome.error = error;
            return outcome.into();
        }
    };
    let deadline = Instant::now() + policy.tunnel.connect_timeout;
    let upstream = match tunnel::connect(dst, deadline).await {
        Ok(upstream) => upstream,
        Err(error) => {
            return Outcome::dial_failed(Listener::Capture, phase, None, decision, &error).into();
        }
    };
    Next::Splice(Box::new(Dialled {
        outcome: Outcome::spliced(Listener::Capture, phase, None, decision),
        client: stream,
        upstream,
        replay: Vec::new(),
        idle: policy.tunnel.idle_timeout,
    }))
}

fn record(
    metrics: &Metrics,
    evidence: Option<&Recorder>,
    o: &Outcome,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    duration: Duration,
) {
    let d = &o.decision;
    metrics
        .connections
        .with_label_values(&[d.route.as_str(), d.reason.as_str(), d.rule_label()])
        .inc();
    metrics.connection_duration.observe(duration.as_secs_f64());
    let orig = orig_dst.map_or_else(|| "-".to_owned(), |a| a.to_string());
    tracing::info!(
        target: "tollgate::connection",
        listener = o.listener.as_str(),
        peer = %peer,
        orig_dst = %orig,
        sni = o.sni.as_deref().unwrap_or("-"),
        route = d.route.as_str(),
        reason = d.reason.as_str(),
        rule = d.rule_label(),
        phase = o.phase.as_str(),
        bytes_up = o.bytes_up,
        bytes_down = o.bytes_down,
        duration_ms = duration.as_millis() as u64,
        end = o.end,
        error = o.error.as_deref().unwrap_or("-"),
        "connection"
    );
    if let Some(evidence) = evidence {
        evidence.append(evidence::Record::Connection(Box::new(evidence_line(
            o, peer, orig_dst, duration,
        ))));
    }
}

/// The connection's line in the hash-chained decision log: its log line's fields plus the
/// decision's inputs.
fn evidence_line(
    o: &Outcome,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    duration: Duration,
) -> evidence::Connection {
    let d = &o.decision;
    evidence::Connection {
        listener: o.listener.as_str().to_owned(),
        peer: peer.to_string(),
        orig_dst,
        sni: o.sni.clone(),
        encrypted: o.encrypted.map(|e| e.as_str().to_owned()),
        phase: o.phase.as_str().to_owned(),
        decided: o.decided.map(|r| r.as_str().to_owned()),
        route: d.route.as_str().to_owned(),
        reason: d.reason.as_str().to_owned(),
        rule: d.rule.clone(),
        bytes_up: o.bytes_up,
        bytes_down: o.bytes_down,
        duration_ms: duration.as_millis() as u64,
        end: o.end.to_owned(),
        error: o.error.clone(),
        observed: o.observed.as_ref().map(|d| evidence::Observed {
            route: d.route.as_str().to_owned(),
            reason: d.reason.as_str().to_owned(),
            rule: d.rule.clone(),
        }),
    }
}

#[cfg(test)]
mod tests;
