//! The upstream leg of an intercepted HTTP/1.1 tunnel: one keep-alive HTTP/1.1 connection to
//! the CONNECT target, driven on the tunnel's own task (no pool lookup or second task per
//! request), handed to an idle pool when the tunnel closes and taken back by the next tunnel.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
pub async fn drive<F: Future>(agent: F, mut drivers: mpsc::UnboundedReceiver<Driver>) -> (F::Output, Vec<Driver>) {
    let mut agent = std::pin::pin!(agent);
    // One at a time in practice: a new connection is opened only once the previous one closed.
    let mut running: Vec<Driver> = Vec::new();
    let output = std::future::poll_fn(|cx: &mut Context<'_>| {
        loop {
            while let Poll::Ready(Some(driver)) = drivers.poll_recv(cx) {
                running.push(driver);
            }
            // Upstream first: a response it reads is then handed to the agent side in this pass.
            running.retain_mut(|driver| driver.as_mut().poll(cx).is_pending());
            if let Poll::Ready(output) = agent.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
            // The agent side may just have opened a connection: start driving it now.
            if drivers.is_empty() {
                return Poll::Pending;
            }
        }
    })
    .await;
    while let Ok(driver) = drivers.try_recv() {
        running.push(driver);
    }
    (output, running)
}
