//! The data plane on several threads. Each worker is a single-threaded
//! event loop with connections, pools and shared links to peers of its
//! own, as nginx's and Envoy's workers are: a connection stays on the
//! thread that got it, so no request, stream or wake-up crosses threads.
//! (A work-stealing runtime moved tasks between threads and cost 40 % more
//! CPU per request; docs/performance.md.)
//!
//! Each port keeps one listener, on the first worker. It hands every
//! connection it accepts to the worker with the fewest open (itself on a
//! tie), as Envoy's exact connection balance does: the kernel's hash of
//! `SO_REUSEPORT` would put both of a peer's two shared links on one
//! worker half the time.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Where a worker's connections for one port come from.
pub(crate) enum ConnSource {
    /// The port's listener, on the first worker, with every worker's
    /// connection counter (the first is this worker's own).
    Listener {
        listener: TcpListener,
        workers: Vec<Worker>,
    },
    /// Connections the first worker accepted for this one.
    Handed(mpsc::UnboundedReceiver<Handed>),
}

/// A worker as the accepting one sees it.
pub(crate) struct Worker {
    /// Its connections, one permit each, so that draining can wait for
    /// them; the permits left say how many it has open.
    conns: Arc<Semaphore>,
    /// Its queue; none for the accepting worker itself, or once the worker
    /// has gone.
    to: Option<mpsc::UnboundedSender<Handed>>,
}

/// An accepted connection on its way to another worker (out of the first
/// worker's reactor, into its own), with its permit of that worker.
pub(crate) struct Handed {
    tcp: std::net::TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// `listener` for the workers whose connection counters are `conns`: the
/// first accepts, the others are handed their share.
pub(crate) fn split(listener: TcpListener, conns: &[Arc<Semaphore>]) -> Vec<ConnSource> {
    let mut workers = Vec::new();
    let mut handed = Vec::new();
    for (i, c) in conns.iter().enumerate() {
        let to = (i > 0).then(|| {
            let (to, from) = mpsc::unbounded_channel();
            handed.push(ConnSource::Handed(from));
            to
        });
        workers.push(Worker {
            conns: c.clone(),
            to,
        });
    }
    let mut sources = vec![ConnSource::Listener { listener, workers }];
    sources.extend(handed);
    sources
}

/// The worker with the most permits left, i.e. the fewest connections
/// open; the lowest-numbered (the accepting one first) on a tie, so a lone
/// client's connections, one at a time, never leave the thread that
/// accepted them.
fn least_loaded(workers: &[Worker]) -> usize {
    let mut best = 0;
    for (i, w) in workers.iter().enumerate() {
        let gone = i > 0 && w.to.is_none();
        if !gone && w.conns.available_permits() > workers[best].conns.available_permits() {
            best = i;
        }
    }
    best
}

impl ConnSource {
    /// The listener's TCP options to set, if this worker has it.
    pub(crate) fn listener(&self) -> Option<&TcpListener> {
        match self {
            ConnSource::Listener { listener, .. } => Some(listener),
            ConnSource::Handed(_) => None,
        }
    }

    /// The next connection this worker serves, with its permit; `None`
    /// once the accepting worker or the counter has stopped.
    pub(crate) async fn accept(
        &mut self,
    ) -> Option<io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)>> {
        match self {
            ConnSource::Listener { listener, workers } => loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(v) => v,
                    Err(e) => return Some(Err(e)),
                };
                let i = least_loaded(workers);
                let permit = workers[i].conns.clone().acquire_owned().await.ok()?;
                let Some(to) = &workers[i].to else {
                    return Some(Ok((tcp, remote, permit)));
                };
                let tcp = match tcp.into_std() {
                    Ok(tcp) => tcp,
                    Err(e) => return Some(Err(e)),
                };
                // A worker that could not start leaves its share here.
                if let Err(mpsc::error::SendError(h)) = to.send(Handed {
                    tcp,
                    remote,
                    permit,
                }) {
                    workers[i].to = None;
                    drop(h.permit);
                    let permit = workers[0].conns.clone().acquire_owned().await.ok()?;
                    return Some(TcpStream::from_std(h.tcp).map(|tcp| (tcp, h.remote, permit)));
                }
            },
            ConnSource::Handed(from) => {
                let h = from.recv().await?;
                Some(TcpStream::from_std(h.tcp).map(|tcp| (tcp, h.remote, h.permit)))
            }
        }
    }
}

/// What a worker thread runs: the serving loop of each of its ports.
pub(crate) type Serve = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts worker `i` on a thread of its own: its ports' loops until they
/// end (at shutdown), then its connections until `finished` (the drain is
/// over).
pub(crate) fn spawn(
    i: usize,
    serves: Vec<Serve>,
    mut finished: watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ward-worker-{i}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, worker = i, "a data-plane worker could not start; the first worker serves its share");
                    return;
                }
            };
            rt.block_on(async move {
                let loops: Vec<_> = serves.into_iter().map(tokio::spawn).collect();
                for l in loops {
                    let _ = l.await;
                }
                let _ = finished.wait_for(|f| *f).await;
            });
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(open: &[usize]) -> Vec<Worker> {
        open.iter()
            .enumerate()
            .map(|(i, &n)| {
                let conns = Arc::new(Semaphore::new(100));
                conns
                    .clone()
                    .try_acquire_many_owned(n as u32)
                    .unwrap()
                    .forget();
                Worker {
                    conns,
                    to: (i > 0).then(|| mpsc::unbounded_channel().0),
                }
            })
            .collect()
    }

    #[test]
    fn the_fewest_open_wins_and_a_tie_stays_first() {
        assert_eq!(least_loaded(&workers(&[0, 0])), 0);
        assert_eq!(least_loaded(&workers(&[1, 0])), 1);
        assert_eq!(least_loaded(&workers(&[2, 1, 1])), 1);
        assert_eq!(least_loaded(&workers(&[3, 5, 2])), 2);
        // A worker that has gone gets nothing.
        let mut w = workers(&[3, 0]);
        w[1].to = None;
        assert_eq!(least_loaded(&w), 0);
    }

    /// A listener split for two workers of 100 permits each: its address,
    /// their counters and their connection sources.
    async fn two_workers() -> (
        SocketAddr,
        [Arc<Semaphore>; 2],
        std::vec::IntoIter<ConnSource>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = [Arc::new(Semaphore::new(100)), Arc::new(Semaphore::new(100))];
        let ports = split(listener, &conns).into_iter();
        (addr, conns, ports)
    }

    #[tokio::test]
    async fn connections_spread_over_the_workers() {
        let (addr, conns, mut ports) = two_workers().await;
        let (mut first, mut second) = (ports.next().unwrap(), ports.next().unwrap());
        let c1 = TcpStream::connect(addr).await.unwrap();
        let (_, remote, p1) = first.accept().await.unwrap().unwrap();
        assert_eq!(remote, c1.local_addr().unwrap());
        // The first worker has one open: the next goes to the second.
        let c2 = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::spawn(async move {
            let r = first.accept().await;
            (first, r)
        });
        let (tcp, remote, p2) = second.accept().await.unwrap().unwrap();
        assert_eq!(remote, c2.local_addr().unwrap());
        assert_eq!(tcp.peer_addr().unwrap(), c2.local_addr().unwrap());
        assert_eq!(conns[1].available_permits(), 99);
        // Both closed: the first worker is the least loaded again.
        drop((p1, p2));
        let c3 = TcpStream::connect(addr).await.unwrap();
        let (_, r) = accepting.await.unwrap();
        let (_, remote, _) = r.unwrap().unwrap();
        assert_eq!(remote, c3.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_worker_that_has_gone_leaves_its_share_to_the_first() {
        let (addr, conns, mut ports) = two_workers().await;
        let mut first = ports.next().unwrap();
        drop(ports); // the second worker's queue
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (_, _, _p1) = first.accept().await.unwrap().unwrap();
        let c2 = TcpStream::connect(addr).await.unwrap();
        let (_, remote, _p2) = first.accept().await.unwrap().unwrap();
        assert_eq!(remote, c2.local_addr().unwrap());
        assert_eq!(conns[0].available_permits(), 98);
        assert_eq!(conns[1].available_permits(), 100);
    }
}
