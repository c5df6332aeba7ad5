//! What one connection's task holds while its tunnel idles (issue 13: an idle tunnel's memory
//! is mostly its task, and a future is as large as its largest state for its whole life).

use std::mem::size_of;

use super::*;

/// The size of the future `f` returns, without calling it (no socket or context needed).
fn returned<A, B, C, D, E, R>(_: impl FnOnce(A, B, C, D, E) -> R) -> usize {
    size_of::<R>()
}

fn returned6<A, B, C, D, E, F, R>(_: impl FnOnce(A, B, C, D, E, F) -> R) -> usize {
    size_of::<R>()
}

#[test]
fn an_idle_tunnel_holds_the_copy_state_not_the_hello_read_or_the_dial() {
    let connection = returned(handle);
    let copy = returned6(tunnel::splice);
    // On 137e908 the connection future was the size of its dial state (2,936 bytes in a debug
    // build, around a 1,696-byte copy); now it is the copy and the log line's fields (784
    // around 472). The task cell adds about 200 bytes and rounds up to 128: 1,024 bytes now.
    assert!(
        connection <= copy + 384,
        "the connection future is {connection} bytes around a {copy}-byte copy"
    );
    assert!(copy <= 512, "the copy future is {copy} bytes");
}
