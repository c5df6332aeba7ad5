//! Copying both ways once a tunnel is up, held as small as an idle tunnel can be (issue 13).
//!
//! An idle tunnel is mostly the state it waits in, so that state is one plain struct polled by
//! hand ([`Splice`]): the two sockets, one remainder slot per direction, byte totals and the
//! last activity. Copy buffers are borrowed per poll from one buffer per runtime thread and
//! never held while waiting; the nested async copies this replaces kept a state machine per
//! direction plus `try_join!`/`select!` around them.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// The most one read takes from a socket.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// One copy buffer per runtime thread, shared by every tunnel on it. A direction reads into
    /// it and writes straight on within one poll, so the buffer is never held across a wait
    /// and an idle tunnel holds no buffer at all (issue 13: idle tunnels held two 16 KiB
    /// buffers each). Only what a full socket does not take is copied out, and freed once sent.
    static CHUNK_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// How a spliced tunnel ended, and what it carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes agent → host, the replayed ClientHello included.
    pub up: u64,
    /// Bytes host → agent.
    pub down: u64,
    /// `closed`, `idle-timeout`, `drain-timeout` or `io-error`.
    pub end: &'static str,
}

/// Byte counters the splice updates as it goes (so long tunnels show in metrics while open).
#[derive(Clone)]
pub struct Counters {
    /// Agent → host.
    pub up: IntCounter,
    /// Host → agent.
    pub down: IntCounter,
}

/// Copies both ways after replaying `replay` upstream, with half-close: EOF from one side shuts
/// down writing to the other, and the tunnel ends when both directions are done. Ends early on
/// an I/O error, when neither side has sent anything for `idle`, or when `stop` fires.
/// `replay` is freed once sent.
pub fn splice<'a>(
    client: TcpStream,
    upstream: TcpStream,
    replay: Vec<u8>,
    idle: Duration,
    stop: &'a CancellationToken,
    counters: &'a Counters,
) -> impl Future<Output = Transfer> + Send + 'a {
    // Not an `async fn`: it moves its arguments into locals, so its state would hold each one
    // twice for the tunnel's life. An `async` block uses what it captured in place.
    let mut tunnel = Splice::new(client, upstream, replay);
    async move {
        let mut idle_at = pin!(sleep_until(tunnel.last_read + idle));
        let mut cancelled = pin!(stop.cancelled());
        let end = poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready("drain-timeout");
            }
            if let Poll::Ready(end) = tunnel.poll_copy(cx, counters) {
                return Poll::Ready(end);
            }
            // The timer is armed for the idle deadline as of the last time it fired; reads
            // since then pushed the deadline on, so re-arm for it rather than end the tunnel.
            while idle_at.as_mut().poll(cx).is_ready() {
                let deadline = tunnel.last_read + idle;
                if Instant::now() >= deadline {
                    return Poll::Ready("idle-timeout");
                }
                idle_at.as_mut().reset(deadline);
            }
            Poll::Pending
        })
        .await;
        Transfer {
            up: tunnel.up.total,
            down: tunnel.down.total,
            end,
        }
    }
}

/// Both sockets and both directions of one tunnel.
struct Splice {
    client: TcpStream,
    upstream: TcpStream,
    /// Agent → host (starts with the replayed ClientHello as its remainder).
    up: Direction,
    /// Host → agent.
    down: Direction,
    /// When either side last sent anything (the idle timeout counts from here).
    last_read: Instant,
}

impl Splice {
    fn new(client: TcpStream, upstream: TcpStream, replay: Vec<u8>) -> Self {
        Splice {
            client,
            upstream,
            up: Direction::with_remainder(replay),
            down: Direction::with_remainder(Vec::new()),
            last_read: Instant::now(),
        }
    }

    /// Polls both directions; ready with how the tunnel ended once both are done or one fails.
    fn poll_copy(&mut self, cx: &mut Context<'_>, counters: &Counters) -> Poll<&'static str> {
        let up = self.up.poll(
            cx,
            &mut self.client,
            &mut self.upstream,
            &counters.up,
            &mut self.last_read,
        );
        let down = self.down.poll(
            cx,
            &mut self.upstream,
            &mut self.client,
            &counters.down,
            &mut self.last_read,
        );
        match (up, down) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => Poll::Ready("io-error"),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready("closed"),
            _ => Poll::Pending,
        }
    }
}

/// Where one direction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Copying (first writing out any remainder).
    Copying,
    /// The reader hit EOF; the writer is being shut down (half-close).
    ShuttingDown,
    /// EOF passed on: nothing more to do.
    Done,
}

/// One direction's state between polls: what a full socket refused (written before the next
/// read, so order holds), how far into it, and the bytes carried.
struct Direction {
    stage: Stage,
    remainder: Vec<u8>,
    written: usize,
    total: u64,
}

impl Direction {
    fn with_remainder(remainder: Vec<u8>) -> Self {
        Direction {
            stage: Stage::Copying,
            remainder,
            written: 0,
            total: 0,
        }
    }

    /// Moves what `reader` has to `writer` until one of them would block; ready once EOF has
    /// been passed on (or on an error).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
        writer: &mut TcpStream,
        metric: &IntCounter,
        last_read: &mut Instant,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::ShuttingDown => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.stage = Stage::Done;
                }
                Stage::Copying => {
                    ready!(self.poll_flush_remainder(cx, writer, metric))?;
                    match ready!(forward_ready(cx, reader, writer))? {
                        Step::Eof => self.stage = Stage::ShuttingDown,
                        Step::Sent { written, rest } => {
                            *last_read = Instant::now();
                            self.count(written, metric);
                            self.remainder = rest;
                            self.written = 0;
                        }
                    }
                }
            }
        }
    }

    /// Writes out the remainder, then frees it.
    fn poll_flush_remainder(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut TcpStream,
        metric: &IntCounter,
    ) -> Poll<io::Result<()>> {
        while let Some(rest) = self.remainder.get(self.written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.count(n, metric);
        }
        // Not `clear`: the allocation goes too, an idle direction holds none.
        self.remainder = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn count(&mut self, n: usize, metric: &IntCounter) {
        self.total += n as u64;
        metric.inc_by(n as u64);
    }
}

/// What one readiness of a reader came to.
enum Step {
    /// The peer closed its side.
    Eof,
    /// Bytes were read; `written` of them went on, `rest` (usually empty) is still to write.
    Sent { written: usize, rest: Vec<u8> },
}

/// Reads what `reader` has into the thread's buffer and writes as much of it as `writer` takes
/// without waiting, all within one poll.
fn forward_ready(
    cx: &mut Context<'_>,
    reader: &mut TcpStream,
    writer: &TcpStream,
) -> Poll<io::Result<Step>> {
    CHUNK_BUF.with_borrow_mut(|buf| {
        let mut read = ReadBuf::new(buf.as_mut_slice());
        // `poll_read` rather than `try_read`: it clears readiness after a short read, so no
        // extra EAGAIN read per wake-up.
        ready!(Pin::new(reader).poll_read(cx, &mut read))?;
        let data = read.filled();
        if data.is_empty() {
            return Poll::Ready(Ok(Step::Eof));
        }
        let written = match writer.try_write(data) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let rest = data.get(written..).map(<[u8]>::to_vec).unwrap_or_default();
        Poll::Ready(Ok(Step::Sent { written, rest }))
    })
}

#[cfg(test)]
mod tests;
