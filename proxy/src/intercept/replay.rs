//! A stream that first yields bytes already read from the socket (the ClientHello the router
//! peeked at), then the socket itself, so the TLS acceptor sees the connection from its start.
//! It also counts the bytes each way, for the connection's log line.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from (`up`) and written to (`down`) the client, shared with whoever reports them.
#[derive(Clone, Debug, Default)]
pub struct ByteCounts {
    /// Read from the client, the replayed prefix included.
    pub up: Arc<AtomicU64>,
    /// Written to the client.
    pub down: Arc<AtomicU64>,
}

impl ByteCounts {
    /// (up, down) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// `prefix` then `inner` for reads; writes go straight to `inner`.
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
    counts: ByteCounts,
}

impl<S> Replay<S> {
    /// Reads `prefix` before anything from `inner`. The prefix counts as read.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        let counts = ByteCounts::default();
        counts.up.store(prefix.len() as u64, Ordering::Relaxed);
        Self {
            prefix,
            pos: 0,
            inner,
            counts,
        }
    }

    /// The live byte counts.
    pub fn counts(&self) -> ByteCounts {
        self.counts.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Done with it: give the memory back for long-lived connections.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        this.counts.up.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counts.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counts.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_the_prefix_then_the_stream_and_writes_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut replay = Replay::new(b"hello ".to_vec(), a);
        b.write_all(b"world").await.unwrap();
        b.shutdown().await.unwrap();
        let mut small = [0u8; 3];
        replay.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = String::new();
        replay.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "lo world");
        replay.write_all(b"back").await.unwrap();
        let mut echoed = [0u8; 4];
        b.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"back");
        assert_eq!(replay.counts().get(), (11, 4));
    }
}
