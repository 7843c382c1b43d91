//! The upstream leg of an intercepted HTTP/1.1 tunnel: one keep-alive HTTP/1.1 connection to
//! the CONNECT target, driven on the tunnel's own task (no pool lookup or second task per
//! request), handed to an idle pool when the tunnel closes and taken back by the next tunnel.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::header::{HOST, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

/// A connection's I/O future, run by the tunnel's task alongside the agent's connection.
pub type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long a pooled connection may wait for the next tunnel to the same host.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_IDLE_PER_HOST: usize = 32;
const MAX_IDLE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("connecting to the upstream: {0}")]
    Connect(std::io::Error),
    #[error("connecting to the upstream timed out")]
    Timeout,
    #[error("the upstream host is not a valid TLS server name")]
    ServerName,
    #[error("upstream HTTP/1.1: {0}")]
    Http(#[from] hyper::Error),
}

/// Connections of closed tunnels, per `host:port`, each driven by a small task while it waits
/// (so a host's close is seen) until a tunnel reclaims it or it has been idle too long.
#[derive(Default)]
pub struct IdlePool {
    idle: Mutex<HashMap<(String, u16), Vec<IdleConnection>>>,
}

struct IdleConnection {
    sender: http1::SendRequest<Incoming>,
    /// Asks the connection's waiting task to hand its driver over.
    reclaim: oneshot::Sender<oneshot::Sender<Driver>>,
}

impl IdlePool {
    fn park(&self, key: (String, u16), sender: http1::SendRequest<Incoming>, mut driver: Driver) {
        let mut idle = self.idle.lock();
        for connections in idle.values_mut() {
            connections.retain(|c| !c.sender.is_closed());
        }
        idle.retain(|_, connections| !connections.is_empty());
        let total: usize = idle.values().map(Vec::len).sum();
        let connections = idle.entry(key).or_default();
        if total >= MAX_IDLE || connections.len() >= MAX_IDLE_PER_HOST {
            return;
        }
        let (reclaim, reclaimed) = oneshot::channel::<oneshot::Sender<Driver>>();
        tokio::spawn(async move {
            tokio::select! {
                () = &mut driver => {}
                () = tokio::time::sleep(IDLE_TIMEOUT) => {}
                reply = reclaimed => {
                    if let Ok(reply) = reply {
                        let _ = reply.send(driver);
                    }
                }
            }
        });
        connections.push(IdleConnection { sender, reclaim });
    }

    /// The most recently parked open connection to `key`, with its driver.
    async fn reclaim(&self, key: &(String, u16)) -> Option<(http1::SendRequest<Incoming>, Driver)> {
        loop {
            let parked = self.idle.lock().get_mut(key)?.pop()?;
            let (reply, driver) = oneshot::channel();
            if parked.reclaim.send(reply).is_err() {
                continue;
            }
            if let Ok(driver) = driver.await
                && !parked.sender.is_closed()
            {
                return Some((parked.sender, driver));
            }
        }
    }
}

/// The tunnel's upstream: at most one idle sender, reopened when the host closes it.
pub struct TunnelUpstream {
    key: (String, u16),
    /// `Host` for every request: the CONNECT target (port omitted when 443).
    host_header: HeaderValue,
    tls: TlsConnector,
    connect_timeout: Duration,
    pool: Arc<IdlePool>,
    sender: Mutex<Option<http1::SendRequest<Incoming>>>,
    drivers: mpsc::UnboundedSender<Driver>,
}

impl TunnelUpstream {
    /// The upstream for a tunnel to `host:port` (host lower-case, IPv6 without brackets), and
    /// the receiving end of its connections' drivers, for [`drive`].
    pub fn new(
        host: &str,
        port: u16,
        tls: Arc<ClientConfig>,
        connect_timeout: Duration,
        pool: Arc<IdlePool>,
    ) -> Option<(Self, mpsc::UnboundedReceiver<Driver>)> {
        let authority = match (host.contains(':'), port) {
            (true, 443) => format!("[{host}]"),
            (true, _) => format!("[{host}]:{port}"),
            (false, 443) => host.to_owned(),
            (false, _) => format!("{host}:{port}"),
        };
        let host_header = HeaderValue::from_str(&authority).ok()?;
        let (drivers, receiver) = mpsc::unbounded_channel();
        let upstream = Self {
            key: (host.to_owned(), port),
            host_header,
            tls: TlsConnector::from(tls),
            connect_timeout,
            pool,
            sender: Mutex::new(None),
            drivers,
        };
        Some((upstream, receiver))
    }

    /// Sends one origin-form request and returns the response head; its body streams from the
    /// connection as the agent reads it. A request the connection never started to write
    /// (the host had closed it while idle) is sent again on a fresh connection.
    pub async fn send(&self, mut req: Request<Incoming>) -> Result<Response<Incoming>, TunnelError> {
        req.headers_mut().insert(HOST, self.host_header.clone());
        let idle = self.sender.lock().take();
        let mut sender = match idle {
            Some(sender) if !sender.is_closed() => sender,
            _ => match self.pool.reclaim(&self.key).await {
                Some((sender, driver)) => {
                    // The receiver lives as long as the tunnel's task, the only caller.
                    let _ = self.drivers.send(driver);
                    sender
                }
                None => self.open().await?,
            },
        };
        if sender.ready().await.is_err() {
            sender = self.open().await?;
            sender.ready().await?;
        }
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut failed) => match failed.take_message() {
                Some(req) => {
                    sender = self.open().await?;
                    sender.ready().await?;
                    sender.send_request(req).await?
                }
                None => return Err(failed.into_error().into()),
            },
        };
        *self.sender.lock() = Some(sender);
        Ok(response)
    }

    /// Hands the tunnel's connection to the pool if it is open and between requests (`drivers`:
    /// what [`drive`] still ran when the agent's side ended).
    pub fn release(&self, mut drivers: Vec<Driver>) {
        let Some(sender) = self.sender.lock().take() else { return };
        if drivers.len() == 1
            && !sender.is_closed()
            && sender.is_ready()
            && let Some(driver) = drivers.pop()
        {
            self.pool.park(self.key.clone(), sender, driver);
        }
    }

    async fn open(&self) -> Result<http1::SendRequest<Incoming>, TunnelError> {
        let (host, port) = &self.key;
        let server_name = ServerName::try_from(host.clone()).map_err(|_| TunnelError::ServerName)?;
        let connect = async {
            let tcp = TcpStream::connect((host.as_str(), *port)).await.map_err(TunnelError::Connect)?;
            let _ = tcp.set_nodelay(true);
            self.tls.connect(server_name, tcp).await.map_err(TunnelError::Connect)
        };
        let tls = tokio::time::timeout(self.connect_timeout, connect).await.map_err(|_| TunnelError::Timeout)??;
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
        let driver: Driver = Box::pin(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        let _ = self.drivers.send(driver);
        Ok(sender)
    }
}

/// Runs `agent` (the tunnel's agent-side connection) and the upstream connections it opens on
/// this one task, until the agent's connection ends; returns its output and the upstream
/// connections still open.
///
/// Each side is polled with its own waker, and only when it was woken. A side woken by the
/// other during the same task poll (the agent side handing a request to the upstream
/// connection, the upstream connection handing the response and its body back) is polled again
/// at once, instead of the task waking itself and going through the scheduler's run queue
/// (often waking a parked worker thread) two or three times per request.
pub async fn drive<F: Future>(agent: F, mut drivers: mpsc::UnboundedReceiver<Driver>) -> (F::Output, Vec<Driver>) {
    let mut agent = std::pin::pin!(agent);
    // One at a time in practice: a new connection is opened only once the previous one closed.
    let mut running: Vec<Driver> = Vec::new();
    let wakes = Arc::new(Wakes { state: AtomicU8::new(WOKEN), task: Mutex::new(None) });
    let agent_waker = Waker::from(Arc::new(SideWaker { wakes: Arc::clone(&wakes), side: AGENT }));
    let upstream_waker = Waker::from(Arc::new(SideWaker { wakes: Arc::clone(&wakes), side: UPSTREAM }));
    let new_driver_waker = Waker::from(Arc::new(SideWaker { wakes: Arc::clone(&wakes), side: NEW_DRIVER }));
    let output = std::future::poll_fn(|cx: &mut Context<'_>| {
        wakes.set_task(cx.waker());
        wakes.state.fetch_or(POLLING, Ordering::AcqRel);
        for _ in 0..MAX_PASSES {
            let woken = wakes.state.fetch_and(POLLING, Ordering::AcqRel);
            let mut new_driver = false;
            if woken & NEW_DRIVER != 0 {
                while let Poll::Ready(Some(driver)) = drivers.poll_recv(&mut Context::from_waker(&new_driver_waker)) {
                    running.push(driver);
                    new_driver = true;
                }
            }
            // Upstream first: a response it reads is then handed to the agent side in this pass.
            if woken & UPSTREAM != 0 || new_driver {
                let mut upstream_cx = Context::from_waker(&upstream_waker);
                running.retain_mut(|driver| driver.as_mut().poll(&mut upstream_cx).is_pending());
            }
            if woken & AGENT != 0
                && let Poll::Ready(output) = agent.as_mut().poll(&mut Context::from_waker(&agent_waker))
            {
                wakes.state.fetch_and(!POLLING, Ordering::AcqRel);
                return Poll::Ready(output);
            }
            // Nothing woken meanwhile: wait for the next wake-up, which now goes to the task.
            if wakes.state.compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Poll::Pending;
            }
        }
        // Still woken after MAX_PASSES (a side yielding, or out of the runtime's budget): let the
        // scheduler run other tasks first.
        if wakes.state.fetch_and(!POLLING, Ordering::AcqRel) & WOKEN != 0 {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    while let Ok(driver) = drivers.try_recv() {
        running.push(driver);
    }
    (output, running)
}

/// [`drive`] is inside a task poll: wake-ups are only noted, and picked up before it returns.
const POLLING: u8 = 1;
const AGENT: u8 = 2;
const UPSTREAM: u8 = 4;
/// A connection was sent to the receiver of drivers.
const NEW_DRIVER: u8 = 8;
const WOKEN: u8 = AGENT | UPSTREAM | NEW_DRIVER;
/// Passes over the two sides per task poll, so a side that keeps waking itself cannot keep the
/// task (and the runtime's cooperative budget) from yielding.
const MAX_PASSES: usize = 8;

/// Which sides of a [`drive`] were woken, and the task to wake when it is not being polled.
struct Wakes {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Wakes {
    fn set_task(&self, waker: &Waker) {
        let mut task = self.task.lock();
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

struct SideWaker {
    wakes: Arc<Wakes>,
    side: u8,
}

impl Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let before = self.wakes.state.fetch_or(self.side, Ordering::AcqRel);
        if before & POLLING == 0
            && let Some(task) = self.wakes.task.lock().as_ref()
        {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[tokio::test]
    async fn each_side_wakes_the_other_within_one_drive() {
        let (drivers, receiver) = mpsc::unbounded_channel::<Driver>();
        let (to_upstream, mut upstream_rx) = mpsc::unbounded_channel::<u32>();
        let (to_agent, mut agent_rx) = mpsc::unbounded_channel::<u32>();
        // The "upstream connection" answers every number with its double; a second one never ends.
        drivers
            .send(Box::pin(async move {
                while let Some(n) = upstream_rx.recv().await {
                    to_agent.send(n * 2).unwrap();
                }
            }))
            .unwrap();
        let agent = async move {
            let mut sum = 0;
            for n in 1..=100 {
                to_upstream.send(n).unwrap();
                sum += agent_rx.recv().await.unwrap();
            }
            // Opened while the agent side runs: picked up, and handed back when it ends.
            drivers.send(Box::pin(std::future::pending())).unwrap();
            sum
        };
        let (sum, open) = drive(agent, receiver).await;
        assert_eq!(sum, 10_100);
        // Both still open: the first was not polled again once the agent side ended.
        assert_eq!(open.len(), 2);
    }

    /// A side that keeps waking itself (or is out of the runtime's budget) must not keep the
    /// task from yielding: on a single thread, the other task only runs when it does.
    #[tokio::test(flavor = "current_thread")]
    async fn a_side_waking_itself_still_lets_other_tasks_run() {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        tokio::spawn(async move { set.store(true, Ordering::SeqCst) });
        let agent = std::future::poll_fn(|cx| {
            if flag.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        });
        let (_, receiver) = mpsc::unbounded_channel::<Driver>();
        let ((), open) = drive(agent, receiver).await;
        assert!(open.is_empty());
    }

    #[tokio::test]
    async fn wake_ups_from_another_thread_reach_the_task() {
        let (tx, rx) = oneshot::channel::<u8>();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        let (_, receiver) = mpsc::unbounded_channel::<Driver>();
        let (value, _) = drive(rx, receiver).await;
        assert_eq!(value.unwrap(), 7);
    }
}
