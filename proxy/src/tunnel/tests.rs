//! [`relay`] over real TCP connections: a "client" and an "upstream" socket pair each, the relay
//! in between, as pingora hands it the two streams.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Ended, Observer, relay};

/// Records every chunk; refuses client chunks once `refuse_after` bytes came from the client.
#[derive(Default)]
struct Recorder {
    client_bytes: Vec<u8>,
    upstream_bytes: Vec<u8>,
    refuse_after: Option<usize>,
}

impl Observer for Recorder {
    fn client_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.client_bytes.extend_from_slice(chunk);
        match self.refuse_after {
            Some(max) if self.client_bytes.len() > max => Err(io::Error::other("revoked")),
            _ => Ok(()),
        }
    }

    fn upstream_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.upstream_bytes.extend_from_slice(chunk);
        Ok(())
    }
}

/// A connected pair: (our end, the relay's end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (theirs, _) = listener.accept().await.unwrap();
    (ours, theirs)
}

/// Bytes that differ at every position, so a reordered or dropped chunk shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 8) as u8)).collect()
}

#[tokio::test]
async fn bytes_cross_both_ways_in_order_with_what_was_read_before_first() {
    let (mut client, client_side) = pair().await;
    let (mut upstream, upstream_side) = pair().await;
    // Several MiB each way at once: both directions meet full socket buffers (writes that wait).
    let up = pattern(6 << 20, 1);
    let down = pattern(5 << 20, 2);
    let relay = tokio::spawn(async move {
        let mut recorder = Recorder::default();
        let ended = relay(
            client_side,
            Some(Bytes::from_static(b"early-client|")),
            upstream_side,
            Some(Bytes::from_static(b"early-upstream|")),
            Duration::from_secs(3600),
            &mut recorder,
        )
        .await;
        (ended.unwrap(), recorder)
    });
    let (up2, down_len) = (up.clone(), down.len());
    // Each side reads everything meant for it while writing; the client closes only then, and
    // its close ends the tunnel.
    let client_task = tokio::spawn(async move {
        let mut got = vec![0; b"early-upstream|".len() + down_len];
        {
            let (mut r, mut w) = client.split();
            let (write, read) = tokio::join!(w.write_all(&up2), r.read_exact(&mut got));
            write.unwrap();
            read.unwrap();
        }
        client.shutdown().await.unwrap();
        assert_eq!(client.read(&mut [0; 1]).await.unwrap(), 0, "the tunnel closes the client once it closed");
        got
    });
    let down2 = down.clone();
    let upstream_task = tokio::spawn(async move {
        let mut got = vec![0; b"early-client|".len() + up.len()];
        {
            let (mut r, mut w) = upstream.split();
            let (read, write) = tokio::join!(r.read_exact(&mut got), w.write_all(&down2));
            read.unwrap();
            write.unwrap();
        }
        assert_eq!(upstream.read(&mut [0; 1]).await.unwrap(), 0, "the client's close reaches the upstream");
        (got, up)
    });
    let (got_up, sent_up) = upstream_task.await.unwrap();
    let got_down = client_task.await.unwrap();
    let (ended, recorder) = relay.await.unwrap();
    assert_eq!(ended, Ended::Closed);
    assert_eq!(&got_up[..13], b"early-client|");
    assert!(got_up[13..] == sent_up[..], "client→upstream bytes arrive whole and in order");
    assert_eq!(&got_down[..15], b"early-upstream|");
    assert!(got_down[15..] == down[..], "upstream→client bytes arrive whole and in order");
    assert_eq!(recorder.client_bytes, got_up, "the observer saw every client byte once, in order");
    assert_eq!(recorder.upstream_bytes, got_down, "the observer saw every upstream byte once, in order");
}

#[tokio::test]
async fn a_close_on_either_side_closes_the_other_after_its_bytes() {
    for upstream_closes in [false, true] {
        let (mut client, client_side) = pair().await;
        let (mut upstream, upstream_side) = pair().await;
        let relay = tokio::spawn(async move {
            relay(client_side, None, upstream_side, None, Duration::from_secs(3600), &mut Recorder::default()).await
        });
        let (closer, other) = if upstream_closes { (&mut upstream, &mut client) } else { (&mut client, &mut upstream) };
        closer.write_all(b"last words").await.unwrap();
        closer.shutdown().await.unwrap();
        let mut got = Vec::new();
        other.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words", "upstream closes: {upstream_closes}");
        assert_eq!(relay.await.unwrap().unwrap(), Ended::Closed);
    }
}

#[tokio::test]
async fn an_observer_error_ends_the_tunnel_and_closes_both_sides() {
    let (mut client, client_side) = pair().await;
    let (mut upstream, upstream_side) = pair().await;
    let relay = tokio::spawn(async move {
        let mut recorder = Recorder { refuse_after: Some(5), ..Default::default() };
        relay(client_side, None, upstream_side, None, Duration::from_secs(3600), &mut recorder).await
    });
    client.write_all(b"hello").await.unwrap();
    let mut got = [0; 5];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    // The sixth byte is refused: it never reaches the upstream, and both connections close.
    client.write_all(b"!").await.unwrap();
    let err = relay.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "revoked");
    assert_eq!(upstream.read(&mut [0; 8]).await.unwrap(), 0, "the upstream sees the close, not the refused byte");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_with_nothing_moving_ends_at_its_idle_timeout() {
    let (mut client, client_side) = pair().await;
    let (mut upstream, upstream_side) = pair().await;
    let start = tokio::time::Instant::now();
    let ended =
        relay(client_side, None, upstream_side, None, Duration::from_secs(3600), &mut Recorder::default()).await;
    assert_eq!(ended.unwrap(), Ended::Idle);
    assert!(start.elapsed() >= Duration::from_secs(3600), "not before the idle timeout");
    assert_eq!(client.read(&mut [0; 1]).await.unwrap(), 0);
    assert_eq!(upstream.read(&mut [0; 1]).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn traffic_either_way_moves_the_idle_limit() {
    let (mut client, client_side) = pair().await;
    let (mut upstream, upstream_side) = pair().await;
    let start = tokio::time::Instant::now();
    let relay = tokio::spawn(async move {
        relay(client_side, None, upstream_side, None, Duration::from_secs(3600), &mut Recorder::default()).await
    });
    // 40 min in, one byte each way: the limit moves to 100 min.
    tokio::time::sleep(Duration::from_secs(40 * 60)).await;
    client.write_all(b"c").await.unwrap();
    upstream.read_exact(&mut [0; 1]).await.unwrap();
    upstream.write_all(b"u").await.unwrap();
    client.read_exact(&mut [0; 1]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(50 * 60)).await;
    assert!(!relay.is_finished(), "90 min in, 50 after the last byte: still open");
    assert_eq!(relay.await.unwrap().unwrap(), Ended::Idle);
    assert!(start.elapsed() >= Duration::from_secs(100 * 60), "not before an idle hour after the last byte");
}
