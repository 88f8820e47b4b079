use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

#[test]
fn stream_ids_spread_over_the_table() {
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    let b = BuildHasherDefault::<IdHasher>::default();
    // A window of ids as a long-lived connection has open, far from 1.
    let hashes: Vec<u64> = (1_000_000u32..1_000_512).map(|id| b.hash_one(id)).collect();
    // hashbrown picks the bucket from the low bits and a tag from the
    // top 7: both must vary.
    let buckets: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
    let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
    assert!(buckets.len() > 300, "{} buckets", buckets.len());
    assert_eq!(tags.len(), 128);
}

fn pair() -> (Connector, Acceptor) {
    pair_of(Version::V2)
}

fn pair_of(v: Version) -> (Connector, Acceptor) {
    let (a, b) = duplex(64 * 1024);
    let (c, cd) = connector(a, v);
    let (s, sd) = acceptor(b, v);
    tokio::spawn(cd);
    tokio::spawn(sd);
    (c, s)
}

/// Echoes every stream back until its end.
fn echo(s: Acceptor) {
    tokio::spawn(async move {
        while let Some(mut st) = s.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match st.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if st.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = st.shutdown().await;
            });
        }
    });
}

fn data(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn streams_carry_their_own_bytes_beyond_the_window() {
    for v in [Version::V2, Version::V1] {
        carry(v).await;
    }
}

async fn carry(v: Version) {
    let (c, s) = pair_of(v);
    echo(s);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut st = c.open().expect("a stream");
        // A few streams carry more than a window each way.
        let len = if i % 25 == 0 {
            1024 * 1024 + 17
        } else {
            100 + i * 37
        };
        tasks.push(tokio::spawn(async move {
            let sent = data(i, len);
            let (mut r, mut w) = tokio::io::split(&mut st);
            let write = async {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let read = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(write, read);
            n.unwrap();
            assert_eq!(got, sent, "stream {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn streams_written_out_of_order() {
    let (c, s) = pair();
    echo(s);
    let mut first = c.open().unwrap();
    let mut second = c.open().unwrap();
    second.write_all(b"2").await.unwrap();
    tokio::task::yield_now().await;
    first.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    second.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"2");
    first.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"1");
    // A stream opened and dropped unused is fine too.
    drop(c.open().unwrap());
    let mut third = c.open().unwrap();
    third.write_all(b"3").await.unwrap();
    third.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"3");
}

/// 32 streams, each sending a full window and its end, and the other
/// side's ends of them (not read).
async fn flood(c: &Connector, s: &Acceptor) -> (Vec<JoinHandle<Stream>>, Vec<Stream>) {
    let mut writers = Vec::new();
    for i in 0..32 {
        let mut st = c.open().unwrap();
        writers.push(tokio::spawn(async move {
            st.write_all(&data(i, WINDOW as usize)).await.unwrap();
            st.shutdown().await.unwrap();
            st
        }));
    }
    let mut theirs = Vec::new();
    for _ in 0..32 {
        theirs.push(s.accept().await.unwrap());
    }
    (writers, theirs)
}

/// Reads what [`flood`] sent, checking every byte.
async fn drain(writers: Vec<JoinHandle<Stream>>, theirs: Vec<Stream>) {
    for (i, mut st) in theirs.into_iter().enumerate() {
        let mut got = Vec::new();
        st.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data(i, WINDOW as usize), "stream {i}");
    }
    for w in writers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn v1_stops_reading_while_too_much_is_unread() {
    let (c, s) = pair_of(Version::V1);
    // 32 streams each send a full window; nobody reads on the other
    // side at first.
    let (writers, theirs) = flood(&c, &s).await;
    // Let the transfer run until it stalls.
    let (mut last, mut still) = (0, 0);
    while still < 50 {
        tokio::task::yield_now().await;
        let now = lock(&theirs[0].state).buffered;
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    assert!(
        (BUFFERED_MAX..=BUFFERED_MAX + READS_PER_TURN * 32 * 1024).contains(&last),
        "{last} bytes buffered"
    );
    // Reading resumes as the streams consume: everything arrives.
    drain(writers, theirs).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn v2_bounds_unread_data_by_the_connection_window_and_keeps_talking() {
    let (c, s) = pair();
    // 32 streams each send a full window; nobody reads on the other
    // side for a minute.
    let (writers, theirs) = flood(&c, &s).await;
    tokio::time::sleep(PING_EVERY * 6).await;
    {
        let st = lock(&theirs[0].state);
        assert_eq!(st.buffered, CONN_WINDOW as usize, "exactly the window");
        assert!(st.closed.is_none());
    }
    // Both sides pinged the silent other and were answered.
    assert!(!c.is_closed());
    // Reading resumes the transfer: everything arrives.
    drain(writers, theirs).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn v2_gives_up_on_a_peer_that_answers_nothing() {
    let (a, mut raw) = duplex(64 * 1024);
    let (c, cd) = connector(a, Version::V2);
    let driver = tokio::spawn(cd);
    // The peer's host is gone: what is sent is never answered.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = raw.read(&mut buf).await {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut st = c.open().unwrap();
    st.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let start = tokio::time::Instant::now();
    let mut b = [0u8; 1];
    let e = st.read(&mut b).await.unwrap_err();
    let after = start.elapsed();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
    assert!(e.to_string().contains("did not answer a ping"), "{e}");
    assert!(
        (PING_EVERY * 2..=PING_EVERY * 3).contains(&after),
        "{after:?}"
    );
    assert!(c.is_closed());
    assert_eq!(driver.await.unwrap(), End::Silent);
    // The one PING: stream 0, kind 3, no flags, 8 bytes.
    let seen = seen.lock().unwrap();
    let ping = [0, 0, 0, 0, PING, 0, 0, 8];
    assert_eq!(seen.windows(8).filter(|w| *w == ping).count(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn v2_answers_pings_and_pings_only_with_streams_open() {
    let (a, mut raw) = duplex(64 * 1024);
    let (s, sd) = acceptor(a, Version::V2);
    tokio::spawn(sd);
    let mut ping = BytesMut::new();
    frame(&mut ping, 0, PING, 0, b"8 bytes!");
    raw.write_all(&ping).await.unwrap();
    let mut got = [0u8; 16];
    tokio::time::timeout(PING_EVERY, raw.read_exact(&mut got))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&got[..8], &[0, 0, 0, 0, PING, ACK, 0, 8]);
    assert_eq!(&got[8..], b"8 bytes!");
    // With no stream open, silence is left to TCP keep-alive.
    tokio::time::sleep(PING_EVERY * 5).await;
    let waker = std::task::Waker::noop();
    let mut one = [0u8; 1];
    let mut rb = ReadBuf::new(&mut one);
    assert!(Pin::new(&mut raw)
        .poll_read(&mut Context::from_waker(waker), &mut rb)
        .is_pending());
    drop(s);
}

#[tokio::test(flavor = "current_thread")]
async fn v2_goaway_stops_new_streams_and_the_opener_closes_when_done() {
    let (c, s) = pair();
    let mut st = c.open().unwrap();
    st.write_all(b"before").await.unwrap();
    let mut theirs = s.accept().await.unwrap();
    let retired = st.retired();
    assert!(!retired.load(Ordering::Acquire));
    assert!(s.go_away());
    while !c.is_closed() {
        tokio::task::yield_now().await;
    }
    assert!(c.open().is_none(), "no new stream after GOAWAY");
    assert!(retired.load(Ordering::Acquire));
    // The stream already open goes on both ways.
    let mut buf = [0u8; 6];
    theirs.read_exact(&mut buf).await.unwrap();
    theirs.write_all(b"answer").await.unwrap();
    theirs.shutdown().await.unwrap();
    st.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"answer");
    st.shutdown().await.unwrap();
    assert_eq!(theirs.read(&mut buf).await.unwrap(), 0);
    // Its last stream done, the opener closes the connection though
    // its handle is kept.
    drop((st, theirs));
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), s.accept()).await;
    assert!(end.expect("the connection ends").is_none());
    drop(c);
}

#[tokio::test(flavor = "current_thread")]
async fn v1_has_no_goaway() {
    let (c, s) = pair_of(Version::V1);
    assert!(!s.go_away());
    echo(s);
    let mut st = c.open().unwrap();
    st.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    st.read_exact(&mut b).await.unwrap();
    assert!(!c.is_closed());
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_stream_is_reset_on_the_other_side() {
    let (c, s) = pair();
    let mut st = c.open().unwrap();
    st.write_all(b"hello").await.unwrap();
    let mut theirs = s.accept().await.unwrap();
    let mut buf = [0u8; 5];
    theirs.read_exact(&mut buf).await.unwrap();
    drop(st);
    let e = theirs.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    assert!(theirs.write_all(b"late").await.is_err());

    // The other way round.
    let mut st = c.open().unwrap();
    st.write_all(b"x").await.unwrap();
    let theirs = s.accept().await.unwrap();
    drop(theirs);
    let e = st.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "current_thread")]
async fn at_most_max_streams_are_open() {
    let (c, s) = pair();
    echo(s);
    let open: Vec<Stream> = (0..MAX_STREAMS).map(|_| c.open().unwrap()).collect();
    assert!(c.open().is_none());
    drop(open);
    let mut st = c.open().expect("room again");
    st.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    st.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// A transport that counts the writes it is asked for.
struct Counting(DuplexStream, Arc<AtomicUsize>);

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn what_streams_write_together_goes_out_in_one_write() {
    let (a, b) = duplex(1024 * 1024);
    let writes = Arc::new(AtomicUsize::new(0));
    let (c, cd) = connector(Counting(a, writes.clone()), Version::V2);
    let (s, sd) = acceptor(b, Version::V2);
    tokio::spawn(cd);
    tokio::spawn(sd);
    let streams: Vec<Stream> = (0..50).map(|_| c.open().unwrap()).collect();
    // The SYNs go out first.
    tokio::task::yield_now().await;
    let before = writes.load(Ordering::Relaxed);
    // 50 requests written in one turn, as 50 connection tasks woken by
    // one epoll round would.
    let mut tasks = Vec::new();
    for mut st in streams {
        tasks.push(tokio::spawn(async move {
            st.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            st
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.unwrap());
    }
    for _ in 0..50 {
        let mut st = s.accept().await.unwrap();
        let mut buf = [0u8; 27];
        st.read_exact(&mut buf).await.unwrap();
    }
    assert_eq!(writes.load(Ordering::Relaxed) - before, 1);
}

/// A raw peer that sends `bytes` after opening stream 1 properly.
async fn broken_by(v: Version, bytes: &[u8]) -> io::Error {
    let (a, mut raw) = duplex(64 * 1024);
    let (s, sd) = acceptor(a, v);
    let driver = tokio::spawn(sd);
    let mut open = BytesMut::new();
    frame(&mut open, 1, DATA, SYN, b"hi");
    raw.write_all(&open).await.unwrap();
    let mut st = s.accept().await.unwrap();
    let mut buf = [0u8; 2];
    st.read_exact(&mut buf).await.unwrap();
    raw.write_all(bytes).await.unwrap();
    // The connection is closed (the raw peer reads to its end) before
    // the stream has read anything more, so no credit was given back.
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    // Data that came before the offence may still be read; then the
    // stream fails.
    let mut sink = Vec::new();
    let e = st.read_to_end(&mut sink).await.unwrap_err();
    assert!(s.accept().await.is_none());
    assert_eq!(driver.await.unwrap(), End::Framing);
    e
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_breaks_the_framing_loses_the_connection() {
    let f = |id, kind, flags, payload: &[u8]| {
        let mut b = BytesMut::new();
        frame(&mut b, id, kind, flags, payload);
        b.to_vec()
    };
    let mut too_big = f(1, DATA, 0, b"");
    too_big[6..8].copy_from_slice(&((MAX_PAYLOAD + 1) as u16).to_be_bytes());
    let mut beyond = Vec::new();
    for _ in 0..(WINDOW as usize / MAX_PAYLOAD) {
        beyond.extend(f(1, DATA, 0, &[0u8; MAX_PAYLOAD]));
    }
    // 16 more streams, each sent a full window: 4 MiB, past the
    // connection's window with the 2 bytes stream 1 had.
    let mut past_connection = Vec::new();
    for id in (3..35).step_by(2) {
        past_connection.extend(f(id, DATA, SYN, b""));
        for _ in 0..(WINDOW as usize / MAX_PAYLOAD) {
            past_connection.extend(f(id, DATA, 0, &[0u8; MAX_PAYLOAD]));
        }
    }
    let v2_only: Vec<(&str, Vec<u8>)> = vec![
        ("beyond the connection window", past_connection),
        ("short PING", f(0, PING, 0, b"1234567")),
        ("PING on a stream", f(1, PING, 0, b"12345678")),
        ("GOAWAY from the opener", f(0, GOAWAY, 0, b"")),
        (
            "connection over-credit",
            f(0, WINDOW_UPDATE, 0, &1u32.to_be_bytes()),
        ),
    ];
    for (name, bytes) in &v2_only {
        let e = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            broken_by(Version::V2, bytes),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: no end"));
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{name}: {e}");
    }
    // `ward-mux/1` knows no PING.
    let e = broken_by(Version::V1, &f(0, PING, 0, b"12345678")).await;
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown kind", f(1, 9, 0, b"")),
        ("too large", too_big),
        ("reused id", f(1, DATA, SYN, b"again")),
        ("never opened", f(7, DATA, 0, b"x")),
        ("beyond the window", beyond),
        (
            "after FIN",
            [f(3, DATA, SYN | FIN, b""), f(3, DATA, 0, b"x")].concat(),
        ),
        ("bad WINDOW", f(1, WINDOW_UPDATE, 0, b"12")),
        ("over-credit", f(1, WINDOW_UPDATE, 0, &1u32.to_be_bytes())),
    ];
    for v in [Version::V2, Version::V1] {
        for (name, bytes) in &cases {
            let e = tokio::time::timeout(std::time::Duration::from_secs(5), broken_by(v, bytes))
                .await
                .unwrap_or_else(|_| panic!("{name} ({v:?}): no end"));
            assert_eq!(
                e.kind(),
                io::ErrorKind::ConnectionAborted,
                "{name} ({v:?}): {e}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_reads_no_refusals_is_cut_off() {
    let (a, mut raw) = duplex(64 * 1024);
    let (s, sd) = acceptor(a, Version::V2);
    let driver = tokio::spawn(sd);
    // 1,024 streams open (the most the acceptor keeps), then a flood
    // of streams it must refuse; the peer never reads.
    let mut flood = BytesMut::new();
    for id in (1..).step_by(2).take(2 * MAX_STREAMS + 200_000) {
        frame(&mut flood, id, DATA, SYN, &[]);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), raw.write_all(&flood))
        .await
        .expect("the flood is not held up forever");
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), driver)
        .await
        .expect("the connection ends")
        .unwrap();
    assert_eq!(end, End::Framing);
    let queued = lock(&s.state.0).queue.len();
    assert!(
        queued <= CONTROL_QUEUE_MAX + HEADER,
        "{queued} bytes queued"
    );
    assert!(s.accept().await.is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn the_connection_closes_when_every_handle_is_gone() {
    let (a, mut raw) = duplex(64 * 1024);
    let (c, cd) = connector(a, Version::V2);
    let driver = tokio::spawn(cd);
    let mut st = c.open().unwrap();
    st.write_all(b"abc").await.unwrap();
    st.shutdown().await.unwrap();
    drop(st);
    drop(c);
    assert_eq!(driver.await.unwrap(), End::Closed);
    let mut got = Vec::new();
    raw.read_to_end(&mut got).await.unwrap();
    // SYN, "abc", FIN, then RESET (the peer never ended its half).
    assert_eq!(&got[..8], &[0, 0, 0, 1, DATA, SYN, 0, 0]);
    assert_eq!(&got[8..16], &[0, 0, 0, 1, DATA, 0, 0, 3]);
    assert_eq!(&got[16..19], b"abc");
    assert_eq!(&got[19..27], &[0, 0, 0, 1, DATA, FIN, 0, 0]);
    assert_eq!(&got[27..35], &[0, 0, 0, 1, RESET, 0, 0, 0]);
    assert_eq!(got.len(), 35);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_idle_connection_closes() {
    let (c, s) = pair();
    echo(s);
    let mut st = c.open().unwrap();
    st.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    st.read_exact(&mut b).await.unwrap();
    // Open streams keep it.
    tokio::time::sleep(IDLE_FOR * 2).await;
    assert!(!c.is_closed());
    drop(st);
    tokio::time::sleep(IDLE_FOR / 2).await;
    assert!(!c.is_closed());
    tokio::time::sleep(IDLE_FOR).await;
    assert!(c.is_closed());
    assert!(c.open().is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn streams_fail_when_the_connection_drops() {
    let (a, raw) = duplex(64 * 1024);
    let (c, cd) = connector(a, Version::V2);
    tokio::spawn(cd);
    let mut st = c.open().unwrap();
    st.write_all(b"abc").await.unwrap();
    drop(raw);
    let mut buf = [0u8; 1];
    let e = st.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
    assert!(c.is_closed());
    assert!(c.open().is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn refused_when_not_accepting() {
    let (c, s) = pair();
    drop(s);
    let mut st = c.open().unwrap();
    st.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1];
    let e = st.read(&mut buf).await.unwrap_err();
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        ),
        "{e}"
    );
}
