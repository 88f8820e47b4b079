//! Many HTTP/1.1 exchanges on one mTLS connection between two sidecars
//! (ALPN `ward-mux/2`, and `ward-mux/1` with sidecars that predate it).
//!
//! With a TLS connection per exchange, every request and every response
//! between the sidecars costs its own system calls and TLS record on both
//! sides. Here the exchanges share one connection: each is a stream of
//! bytes (the HTTP/1.1 messages, as they would be on a connection of their
//! own) cut into frames. What several streams write while the connection's
//! task is queued goes out as one write, and one read brings in frames for
//! many streams. HTTP/2 carries the same, but between the sidecars its
//! per-request work cost more than it saved (docs/performance.md); this
//! framing has no header compression, priorities or settings to pay for.
//!
//! A frame is an 8-byte header, then its payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0–3 | stream id (big-endian) |
//! | 4 | kind: 0 DATA, 1 WINDOW, 2 RESET, 3 PING and 4 GOAWAY (`ward-mux/2`) |
//! | 5 | flags: DATA 1 SYN opens the stream, 2 FIN ends the sender's half; PING 1 ACK |
//! | 6–7 | payload length (big-endian, at most 16 KiB) |
//!
//! - Only the side that connected opens streams, with ids that always
//!   increase: an empty DATA frame with SYN, sent when the stream is
//!   opened (so in the order of the ids).
//! - Each side may have at most [`WINDOW`] bytes of a stream unread by the
//!   other; WINDOW frames (a 4-byte increment) give credit back as the
//!   reader consumes.
//! - `ward-mux/1`: a side stops reading the connection while 4 MiB over
//!   all streams is unread (TCP then holds the sender back).
//! - `ward-mux/2` instead gives the connection a window of its own, as
//!   HTTP/2 does: at most [`CONN_WINDOW`] bytes of DATA over all streams
//!   unread by the other side, credited back with WINDOW frames on stream
//!   0 as the reader consumes (or discards). So a side always reads the
//!   connection, and control frames pass even while every stream waits
//!   for its reader.
//! - PING (`ward-mux/2`, stream 0, an 8-byte payload) is answered with the
//!   same payload and flag ACK. A side with streams open that has heard
//!   nothing from the peer for [`PING_EVERY`] sends one, and ends the
//!   connection (failing its streams) if nothing arrives in the next
//!   [`PING_EVERY`]: a peer whose host vanished with requests in flight is
//!   noticed within 20–30 s, where TCP alone retransmits for minutes.
//! - RESET abandons a stream in both directions (a stream dropped before
//!   both halves ended, or refused).
//! - The opener keeps at most [`MAX_STREAMS`] streams open; the acceptor
//!   refuses streams beyond twice that (it may not yet have dropped streams
//!   the opener has finished).
//! - GOAWAY (`ward-mux/2`, stream 0, empty, from the accepting side only)
//!   says the acceptor is stopping: the opener opens no more streams on
//!   the connection (its new exchanges dial instead) and closes it once its
//!   streams are done. The acceptor still serves streams that were opened
//!   before the GOAWAY arrived, so no exchange is refused by the race.
//! - A peer that makes this side queue more than 1 MiB of answers
//!   (refusals) without reading them loses the connection.
//! - Anything else (an unknown kind, a frame too large, data beyond the
//!   window, after FIN or on a stream never opened, an id used twice, a
//!   PING that is not 8 bytes on stream 0, a GOAWAY from the opener or
//!   with a payload) ends the connection, and every
//!   stream on it fails.
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The ALPN protocols of this framing, the preferred first.
pub(crate) const ALPNS: [&[u8]; 2] = [b"ward-mux/2", b"ward-mux/1"];

/// The version a connection speaks, by its ALPN protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// No connection window and no PING.
    V1,
    V2,
}

impl Version {
    pub(crate) fn of(alpn: Option<&[u8]>) -> Option<Version> {
        match alpn? {
            b"ward-mux/2" => Some(Version::V2),
            b"ward-mux/1" => Some(Version::V1),
            _ => None,
        }
    }
}

/// `ward-mux/2`: DATA bytes over all streams that one side may have unread
/// by the other.
pub(crate) const CONN_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection credit is given back once this much has been consumed.
const CONN_CREDIT_AT: u32 = CONN_WINDOW / 8;
/// `ward-mux/2`: silence from the peer, with streams open, before a PING;
/// and the time the peer then has to be heard.
pub(crate) const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes of one stream that one side may have unread by the other.
pub(crate) const WINDOW: u32 = 256 * 1024;
/// Streams the connecting side keeps open on one connection.
pub(crate) const MAX_STREAMS: usize = 256;

const HEADER: usize = 8;
const MAX_PAYLOAD: usize = 16 * 1024;
/// Frames queued for the connection beyond which writers wait for it.
const QUEUE_HIGH: usize = 512 * 1024;
/// Frames queued beyond which a peer that makes this side answer (a
/// refused stream's RESET) without reading the answers loses the
/// connection. Streams' writes stop at [`QUEUE_HIGH`], a PING has one
/// answer queued at most, so only such a peer gets here.
const CONTROL_QUEUE_MAX: usize = 2 * QUEUE_HIGH;
/// Reads per turn of the connection's task before it yields.
const READS_PER_TURN: usize = 16;
/// `ward-mux/1`: bytes received and not yet read, over all streams, beyond
/// which the connection is not read until streams consume (TCP then holds
/// the sender back): per-stream windows alone would allow 512 × 256 KiB.
const BUFFERED_MAX: usize = 4 * 1024 * 1024;
/// The connecting side closes a connection without streams for this long.
pub(crate) const IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(90);

const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const RESET: u8 = 2;
const PING: u8 = 3;
const GOAWAY: u8 = 4;
const SYN: u8 = 1;
const FIN: u8 = 2;
const ACK: u8 = 1;

/// The connecting side's handle: opens streams.
#[derive(Clone)]
pub(crate) struct Connector {
    state: Arc<Handle>,
}

/// The accepting side's handle: takes the streams the peer opens.
pub(crate) struct Acceptor {
    state: Arc<Handle>,
}

/// One stream: one HTTP/1.1 connection's worth of bytes.
pub(crate) struct Stream {
    state: Arc<Mutex<State>>,
    id: u32,
}

/// Counts the handles that keep a connection open: when the last is
/// dropped and everything queued is written, the connection closes.
struct Handle(Arc<Mutex<State>>);

impl Drop for Handle {
    fn drop(&mut self) {
        let mut s = lock(&self.0);
        if !s.client {
            s.accepting = false;
            // Streams opened but not yet accepted are refused.
            while let Some(id) = s.accept.pop_front() {
                s.forget(id);
                frame(&mut s.queue, id, RESET, 0, &[]);
            }
        }
        s.release();
    }
}

/// How a connection's task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Closed by either side in order (no stream left, the peer closed).
    Closed,
    /// The peer answered no PING (`ward-mux/2`).
    Silent,
    /// The peer broke the framing, or piled up answers it did not read.
    Framing,
    /// The transport failed (reset, TLS error).
    Error,
}

impl End {
    /// The `reason` label of `ward_proxy_peer_connections_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Silent => "silent_peer",
            End::Framing => "framing",
            End::Error => "error",
        }
    }
}

/// The task that reads and writes the connection. It must be polled (run
/// or spawned) for any stream to make progress, and ends when the
/// connection fails or every handle is gone.
pub(crate) struct Driver<T> {
    io: T,
    state: Arc<Mutex<State>>,
    /// The state's, kept here to be read without the lock.
    version: Version,
    read: BytesMut,
    /// Frames being written (taken from the queue), and whether some were
    /// written since the last flush.
    out: BytesMut,
    unflushed: bool,
    shutting_down: bool,
    /// Connecting side: runs while no stream is open.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `ward-mux/2`: ticks every [`PING_EVERY`] (made on the first poll).
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Something arrived since the last tick.
    heard: bool,
    /// A PING was sent at the last tick.
    pinged: bool,
    /// PINGs sent (the payload of the next is one more).
    pings: u64,
}

#[derive(Default)]
struct Half {
    recv: BytesMut,
    recv_fin: bool,
    /// What the peer may still send before more credit.
    recv_window: u32,
    /// Read since the last credit given back.
    consumed: u32,
    send_window: u32,
    sent_fin: bool,
    reset: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Half {
    fn new() -> Half {
        Half {
            recv_window: WINDOW,
            send_window: WINDOW,
            ..Half::default()
        }
    }

    fn wake_all(&mut self) {
        wake(&mut self.reader);
        wake(&mut self.writer);
    }
}

struct State {
    client: bool,
    version: Version,
    /// `ward-mux/2`: DATA bytes this side may still send, over all streams.
    conn_send: u32,
    /// `ward-mux/2`: DATA bytes the peer may still send, over all streams.
    conn_recv: u32,
    /// `ward-mux/2`: consumed or discarded since the last credit given back.
    released: u32,
    /// A PING's answer is queued and not yet taken for writing (one at a
    /// time: a peer that pings faster than it reads gets fewer answers).
    pong_queued: bool,
    /// `ward-mux/2`: the acceptor is stopping (it sent, or the opener
    /// received, GOAWAY).
    going_away: bool,
    /// Set once no new exchange may start on the opener's streams (GOAWAY
    /// received, or the connection ended): read without the lock by the
    /// pool that keeps idle streams.
    retired: Arc<AtomicBool>,
    streams: HashMap<u32, Half, BuildHasherDefault<IdHasher>>,
    /// Opener: the next id to use. Acceptor: the lowest id a new stream
    /// may have.
    next_id: u64,
    /// Frames waiting to be written.
    queue: BytesMut,
    /// Bytes received on all streams and not yet read.
    buffered: usize,
    driver: Option<Waker>,
    /// Writers waiting for the queue to drain or for connection credit.
    drained: Vec<Waker>,
    accept: VecDeque<u32>,
    acceptor: Option<Waker>,
    accepting: bool,
    /// Connector, Acceptor and Stream handles alive.
    handles: usize,
    /// Why the connection ended.
    closed: Option<String>,
}

/// Hashes stream ids for the stream table, which every read and write on a
/// stream looks up. The ids are small integers, and at most a few hundred
/// are open at once on a connection whose peer has authenticated, so a
/// keyed hash (SipHash, several times the cost) buys nothing here: a
/// multiplication spreads them over the high bits the table uses.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

fn keep(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn frame(queue: &mut BytesMut, id: u32, kind: u8, flags: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    queue.reserve(HEADER + payload.len());
    queue.put_u32(id);
    queue.put_u8(kind);
    queue.put_u8(flags);
    queue.put_u16(payload.len() as u16);
    queue.put_slice(payload);
}

impl State {
    fn new(client: bool, version: Version) -> State {
        State {
            client,
            version,
            conn_send: CONN_WINDOW,
            conn_recv: CONN_WINDOW,
            released: 0,
            pong_queued: false,
            going_away: false,
            retired: Arc::new(AtomicBool::new(false)),
            streams: HashMap::default(),
            next_id: 1,
            queue: BytesMut::new(),
            buffered: 0,
            driver: None,
            drained: Vec::new(),
            accept: VecDeque::new(),
            acceptor: None,
            accepting: !client,
            handles: 1,
            closed: None,
        }
    }

    fn release(&mut self) {
        self.handles -= 1;
        wake(&mut self.driver);
    }

    fn closed_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!(
                "the connection between the sidecars ended: {}",
                self.closed.as_deref().unwrap_or("closed")
            ),
        )
    }

    fn fail(&mut self, why: String) {
        if self.closed.is_none() {
            self.closed = Some(why);
        }
        self.retired.store(true, Ordering::Release);
        for h in self.streams.values_mut() {
            h.wake_all();
        }
        wake(&mut self.acceptor);
        for w in self.drained.drain(..) {
            w.wake();
        }
    }

    /// Removes a stream from the table; what it had received and not
    /// read is discarded (and, `ward-mux/2`, credited back).
    fn forget(&mut self, id: u32) -> Option<Half> {
        let h = self.streams.remove(&id)?;
        self.buffered -= h.recv.len();
        self.give_back(h.recv.len());
        Some(h)
    }

    /// `ward-mux/2`: `n` bytes received were consumed or discarded; true
    /// when that queued connection credit for the peer.
    fn give_back(&mut self, n: usize) -> bool {
        if self.version == Version::V1 || n == 0 {
            return false;
        }
        self.released += n as u32;
        if self.released < CONN_CREDIT_AT || self.closed.is_some() {
            return false;
        }
        let credit = std::mem::take(&mut self.released);
        frame(&mut self.queue, 0, WINDOW_UPDATE, 0, &credit.to_be_bytes());
        self.conn_recv += credit;
        true
    }

    /// Takes one frame from the peer.
    fn receive(&mut self, id: u32, kind: u8, flags: u8, payload: &[u8]) -> Result<(), String> {
        let v2 = self.version == Version::V2;
        match kind {
            DATA => {
                if v2 {
                    // Every DATA byte counts, whatever becomes of its stream.
                    let n = payload.len() as u32;
                    if n > self.conn_recv {
                        return Err("data beyond the connection's window".into());
                    }
                    self.conn_recv -= n;
                }
                if flags & SYN != 0 {
                    if self.client {
                        return Err("the accepting side opened a stream".into());
                    }
                    if u64::from(id) < self.next_id {
                        return Err(format!("stream {id} opened twice"));
                    }
                    self.next_id = u64::from(id) + 1;
                    if !self.accepting || self.streams.len() >= 2 * MAX_STREAMS {
                        if self.queue.len() >= CONTROL_QUEUE_MAX {
                            // Refusals it does not read would pile up here.
                            return Err("the peer opens streams faster than it reads".into());
                        }
                        frame(&mut self.queue, id, RESET, 0, &[]);
                        self.give_back(payload.len());
                        return Ok(());
                    }
                    self.streams.insert(id, Half::new());
                    self.accept.push_back(id);
                    wake(&mut self.acceptor);
                }
                let Some(h) = self.streams.get_mut(&id) else {
                    // A stream this side has dropped or refused: its RESET
                    // is on the way.
                    if u64::from(id) < self.next_id {
                        self.give_back(payload.len());
                        return Ok(());
                    }
                    return Err(format!("data on stream {id}, which was never opened"));
                };
                if h.reset {
                    self.give_back(payload.len());
                    return Ok(());
                }
                if h.recv_fin {
                    return Err(format!("data on stream {id} after its end"));
                }
                let n = payload.len() as u32;
                if n > h.recv_window {
                    return Err(format!("stream {id} sent beyond its window"));
                }
                h.recv_window -= n;
                h.recv.extend_from_slice(payload);
                self.buffered += payload.len();
                if flags & FIN != 0 {
                    h.recv_fin = true;
                }
                wake(&mut h.reader);
            }
            WINDOW_UPDATE => {
                let Ok(inc) = <[u8; 4]>::try_from(payload) else {
                    return Err("a WINDOW frame without a 4-byte increment".into());
                };
                if id == 0 && v2 {
                    match self.conn_send.checked_add(u32::from_be_bytes(inc)) {
                        Some(w) if w <= CONN_WINDOW => self.conn_send = w,
                        _ => return Err("the connection credited beyond its window".into()),
                    }
                    for w in self.drained.drain(..) {
                        w.wake();
                    }
                } else if let Some(h) = self.streams.get_mut(&id) {
                    match h.send_window.checked_add(u32::from_be_bytes(inc)) {
                        Some(w) if w <= WINDOW => h.send_window = w,
                        _ => return Err(format!("stream {id} credited beyond its window")),
                    }
                    wake(&mut h.writer);
                }
            }
            RESET => {
                if let Some(h) = self.streams.get_mut(&id) {
                    h.reset = true;
                    h.wake_all();
                }
            }
            GOAWAY if v2 => {
                if !self.client || !payload.is_empty() || id != 0 {
                    return Err("a GOAWAY not from the accepting side, or not empty".into());
                }
                self.going_away = true;
                self.retired.store(true, Ordering::Release);
            }
            PING if v2 => {
                if id != 0 || payload.len() != 8 {
                    return Err("a PING not of 8 bytes on stream 0".into());
                }
                if flags & ACK == 0 && !self.pong_queued {
                    frame(&mut self.queue, 0, PING, ACK, payload);
                    self.pong_queued = true;
                }
            }
            other => return Err(format!("unknown frame kind {other}")),
        }
        Ok(())
    }
}

/// The opening side of a new connection.
pub(crate) fn connector<T>(io: T, version: Version) -> (Connector, Driver<T>) {
    let state = Arc::new(Mutex::new(State::new(true, version)));
    (
        Connector {
            state: Arc::new(Handle(state.clone())),
        },
        Driver::new(io, state, version),
    )
}

/// The accepting side of a new connection.
pub(crate) fn acceptor<T>(io: T, version: Version) -> (Acceptor, Driver<T>) {
    let state = Arc::new(Mutex::new(State::new(false, version)));
    (
        Acceptor {
            state: Arc::new(Handle(state.clone())),
        },
        Driver::new(io, state, version),
    )
}

impl Connector {
    /// A new stream, or None when the connection has ended or has
    /// [`MAX_STREAMS`] open (then another connection is needed). Its SYN is
    /// queued at once, so that streams open in the order of their ids
    /// whichever writes first.
    pub(crate) fn open(&self) -> Option<Stream> {
        let state = &self.state.0;
        let mut s = lock(state);
        if s.closed.is_some()
            || s.going_away
            || s.streams.len() >= MAX_STREAMS
            || s.next_id > u64::from(u32::MAX)
        {
            return None;
        }
        let id = s.next_id as u32;
        s.next_id += 1;
        s.streams.insert(id, Half::new());
        frame(&mut s.queue, id, DATA, SYN, &[]);
        wake(&mut s.driver);
        s.handles += 1;
        Some(Stream {
            state: state.clone(),
            id,
        })
    }

    /// The connection has ended, or takes no new streams (GOAWAY).
    pub(crate) fn is_closed(&self) -> bool {
        let s = lock(&self.state.0);
        s.closed.is_some() || s.going_away
    }
}

impl Acceptor {
    /// Streams open on the connection (accepted or waiting to be).
    pub(crate) fn streams_open(&self) -> usize {
        lock(&self.state.0).streams.len()
    }

    /// `ward-mux/2`: tells the opener this side is stopping (GOAWAY), and
    /// returns true; the caller goes on accepting the streams opened
    /// before the opener hears it. `ward-mux/1` has no GOAWAY: false.
    pub(crate) fn go_away(&self) -> bool {
        let mut s = lock(&self.state.0);
        if s.version == Version::V1 {
            return false;
        }
        if !s.going_away && s.closed.is_none() {
            s.going_away = true;
            frame(&mut s.queue, 0, GOAWAY, 0, &[]);
            wake(&mut s.driver);
        }
        true
    }

    /// The next stream the peer opened; None once the connection has ended.
    pub(crate) async fn accept(&self) -> Option<Stream> {
        let state = &self.state.0;
        poll_fn(|cx| {
            let mut s = lock(state);
            if s.closed.is_some() {
                return Poll::Ready(None);
            }
            if let Some(id) = s.accept.pop_front() {
                s.handles += 1;
                return Poll::Ready(Some(Stream {
                    state: state.clone(),
                    id,
                }));
            }
            keep(&mut s.acceptor, cx);
            Poll::Pending
        })
        .await
    }
}

impl Stream {
    /// A flag set once no new exchange may start on this stream's
    /// connection (see [`State::retired`]).
    pub(crate) fn retired(&self) -> Arc<AtomicBool> {
        lock(&self.state).retired.clone()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if let Some(h) = s.forget(self.id) {
            if s.buffered < BUFFERED_MAX {
                wake(&mut s.driver);
            }
            let finished = h.reset || (h.sent_fin && h.recv_fin);
            if !finished && s.closed.is_none() {
                frame(&mut s.queue, self.id, RESET, 0, &[]);
            }
        }
        s.release();
    }
}

fn reset_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the stream was reset by the peer",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        let Some(h) = s.streams.get_mut(&id) else {
            return Poll::Ready(Err(reset_error()));
        };
        if !h.recv.is_empty() {
            let n = h.recv.len().min(buf.remaining());
            buf.put_slice(&h.recv[..n]);
            h.recv.advance(n);
            if h.recv.is_empty() {
                // An idle stream holds no buffer.
                h.recv = BytesMut::new();
            }
            h.consumed += n as u32;
            let mut queued = false;
            if h.consumed >= WINDOW / 2 && !h.recv_fin && !h.reset {
                frame(
                    &mut s.queue,
                    id,
                    WINDOW_UPDATE,
                    0,
                    &h.consumed.to_be_bytes(),
                );
                h.recv_window += h.consumed;
                h.consumed = 0;
                queued = true;
            }
            let was_full = s.buffered >= BUFFERED_MAX;
            s.buffered -= n;
            queued |= s.give_back(n);
            if queued || (was_full && s.buffered < BUFFERED_MAX) {
                wake(&mut s.driver);
            }
            return Poll::Ready(Ok(()));
        }
        if h.recv_fin {
            return Poll::Ready(Ok(()));
        }
        if h.reset {
            return Poll::Ready(Err(reset_error()));
        }
        if s.closed.is_some() {
            return Poll::Ready(Err(s.closed_error()));
        }
        keep(&mut h.reader, cx);
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        if s.closed.is_some() {
            return Poll::Ready(Err(s.closed_error()));
        }
        let Some(h) = s.streams.get_mut(&id) else {
            return Poll::Ready(Err(reset_error()));
        };
        if h.reset {
            return Poll::Ready(Err(reset_error()));
        }
        if h.sent_fin {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if s.queue.len() >= QUEUE_HIGH {
            s.drained.push(cx.waker().clone());
            return Poll::Pending;
        }
        if h.send_window == 0 {
            keep(&mut h.writer, cx);
            return Poll::Pending;
        }
        let v2 = s.version == Version::V2;
        if v2 && s.conn_send == 0 {
            s.drained.push(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = buf.len().min(h.send_window as usize);
        if v2 {
            n = n.min(s.conn_send as usize);
            s.conn_send -= n as u32;
        }
        for chunk in buf[..n].chunks(MAX_PAYLOAD) {
            frame(&mut s.queue, id, DATA, 0, chunk);
        }
        h.send_window -= n as u32;
        wake(&mut s.driver);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames go out as soon as the driver runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        if let Some(h) = s.streams.get_mut(&id) {
            if !h.sent_fin && !h.reset && s.closed.is_none() {
                h.sent_fin = true;
                frame(&mut s.queue, id, DATA, FIN, &[]);
                wake(&mut s.driver);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> Driver<T> {
    fn new(io: T, state: Arc<Mutex<State>>, version: Version) -> Driver<T> {
        Driver {
            io,
            version,
            state,
            read: BytesMut::new(),
            out: BytesMut::new(),
            unflushed: false,
            shutting_down: false,
            idle: None,
            tick: None,
            heard: false,
            pinged: false,
            pings: 0,
        }
    }

    fn end(&mut self, how: End, why: String) -> Poll<End> {
        tracing::debug!(reason = %why, "connection between sidecars ended");
        lock(&self.state).fail(why);
        Poll::Ready(how)
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        lock(&self.state).fail("the connection was closed".into());
    }
}

/// Hands every complete frame in `read` to its stream.
fn dispatch(s: &mut State, read: &mut BytesMut) -> Result<(), String> {
    while read.len() >= HEADER {
        let h = &read[..HEADER];
        let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let (kind, flags) = (h[4], h[5]);
        let len = usize::from(u16::from_be_bytes([h[6], h[7]]));
        if len > MAX_PAYLOAD {
            return Err(format!("a frame of {len} bytes"));
        }
        if read.len() < HEADER + len {
            break;
        }
        s.receive(id, kind, flags, &read[HEADER..HEADER + len])?;
        read.advance(HEADER + len);
    }
    Ok(())
}

impl<T> Driver<T> {
    /// `ward-mux/2`: at each tick, pings a peer not heard from since the
    /// last while streams are open, and gives up on one that did not
    /// answer the ping sent at the last tick.
    fn check_peer(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let tick = self
            .tick
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(PING_EVERY)));
        if tick.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        if self.pinged && !self.heard {
            return Err(format!(
                "the peer did not answer a ping within {} s",
                PING_EVERY.as_secs()
            ));
        }
        let mut s = lock(&self.state);
        self.pinged = !self.heard && !s.streams.is_empty() && s.closed.is_none();
        if self.pinged {
            self.pings += 1;
            frame(&mut s.queue, 0, PING, 0, &self.pings.to_be_bytes());
        }
        drop(s);
        self.heard = false;
        tick.as_mut()
            .reset(tokio::time::Instant::now() + PING_EVERY);
        // Registers the waker for the next tick.
        let _ = tick.as_mut().poll(cx);
        Ok(())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// Shuts the transport down (TLS close_notify, then FIN) and ends.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => self.end(End::Closed, "closed: no stream or handle left".into()),
        }
    }

    /// Writes the queued frames; Ready(Err) when the connection failed.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            if self.out.is_empty() {
                let mut s = lock(&self.state);
                if s.queue.is_empty() {
                    break;
                }
                self.out.clear();
                std::mem::swap(&mut self.out, &mut s.queue);
                s.pong_queued = false;
                for w in s.drained.drain(..) {
                    w.wake();
                }
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err("the connection took no bytes".into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = &mut *self;
        if this.shutting_down {
            return this.poll_close(cx);
        }
        let v1 = this.version == Version::V1;
        // Read what has arrived, a bounded number of times per turn.
        let mut reads = 0;
        let mut paused = false;
        loop {
            if reads == READS_PER_TURN {
                cx.waker().wake_by_ref();
                break;
            }
            if v1 && lock(&this.state).buffered >= BUFFERED_MAX {
                // Streams wake the driver as they consume.
                paused = true;
                break;
            }
            if this.read.capacity() - this.read.len() < 4096 {
                this.read.reserve(32 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.read) {
                Poll::Ready(Ok(0)) => {
                    return this.end(End::Closed, "the peer closed the connection".into())
                }
                Poll::Ready(Ok(_)) => {
                    this.heard = true;
                    let r = dispatch(&mut lock(&this.state), &mut this.read);
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "closing a connection that broke the framing");
                        return this.end(End::Framing, e);
                    }
                }
                Poll::Ready(Err(e)) => return this.end(End::Error, e.to_string()),
                Poll::Pending => break,
            }
            reads += 1;
        }
        if !v1 {
            if let Err(e) = this.check_peer(cx) {
                tracing::warn!(error = %e, "closing a connection to a silent peer");
                return this.end(End::Silent, e);
            }
        }
        // Then write what the streams queued: what every stream woken
        // since the last turn wrote goes out in one write.
        match this.write_out(cx) {
            Poll::Ready(Err(e)) => return this.end(End::Error, e),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {}
        }
        let mut s = lock(&this.state);
        if !s.queue.is_empty() {
            // Written while this turn wrote.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let idle_out = if s.client && s.streams.is_empty() {
            let timer = this
                .idle
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_FOR)));
            timer.as_mut().poll(cx).is_ready()
        } else {
            this.idle = None;
            false
        };
        if idle_out {
            // No stream can be opened from here on.
            s.closed = Some("idle".into());
        }
        // An opener told GOAWAY closes once its streams are done.
        let gone = s.client && s.going_away && s.streams.is_empty();
        if s.handles == 0 || idle_out || gone {
            drop(s);
            this.shutting_down = true;
            return this.poll_close(cx);
        }
        keep(&mut s.driver, cx);
        if paused && s.buffered < BUFFERED_MAX {
            // Consumed since the check, before the waker was kept.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
