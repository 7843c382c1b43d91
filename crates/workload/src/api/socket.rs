//! The Workload API's unix socket: binding it safely (stale sockets replaced, live ones and
//! other files left alone), accepting connections with their attested [`Peer`], and removing
//! the socket file again on shutdown.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::Connected;

use crate::api::authority::AuthorityFilter;
use crate::attest::Peer;

/// Any local process may connect: attestation, not the file mode, decides what a caller gets
/// (as with SPIRE's world-accessible agent socket). Confine the API to fewer users by placing
/// the socket in a directory only they can search.
pub const SOCKET_MODE: u32 = 0o666;

/// Accepted connections not yet taken by the server before accepting pauses.
const BACKLOG: usize = 64;
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 8 * 1024;

/// How a connection's attested peer reaches each request: `request.extensions().get::<PeerInfo>()`.
#[derive(Debug, Clone)]
pub struct PeerInfo(pub Arc<Peer>);

/// A connection together with the peer attested when it was accepted. What the client sends
/// passes through an [`AuthorityFilter`] so gRPC C-core clients are understood.
pub struct PeerStream {
    inner: UnixStream,
    peer: Arc<Peer>,
    filter: AuthorityFilter,
    /// Filtered bytes not yet handed to the server, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
}

impl PeerStream {
    fn new(inner: UnixStream, peer: Peer) -> Self {
        Self { inner, peer: Arc::new(peer), filter: AuthorityFilter::default(), ready: Vec::new(), ready_at: 0 }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        PeerInfo(Arc::clone(&self.peer))
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream; a frame cut short is the server's to notice.
                return Poll::Ready(Ok(()));
            }
            // May hold everything back (an incomplete frame); then read on.
            this.filter.feed(read.filled(), &mut this.ready);
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("workload API socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A bound socket file, identified by its inode so that only this server's file is removed.
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    path: PathBuf,
    identity: (u64, u64),
}

impl BoundSocket {
    /// Binds `path` (made absolute), creating its directory if needed and replacing a stale
    /// socket left by a server that did not stop cleanly.
    pub async fn bind(path: &Path) -> Result<Self, SocketError> {
        let io_err = |source| SocketError::Io { path: path.to_owned(), source };
        // Clients accept only absolute socket paths, and the banner shows this one.
        let path = &std::path::absolute(path).map_err(io_err)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        remove_stale(path).await?;
        let listener = UnixListener::bind(path).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io_err)?;
        let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
        Ok(Self { listener, path: path.to_owned(), identity: (meta.dev(), meta.ino()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this server created.
    pub fn remove_file(path: &Path, identity: (u64, u64)) {
        let ours = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == identity);
        if ours && let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the workload API socket");
        }
    }

    /// Splits into the listener and what [`BoundSocket::remove_file`] needs later.
    pub fn into_parts(self) -> (UnixListener, PathBuf, (u64, u64)) {
        (self.listener, self.path, self.identity)
    }
}

/// Deletes a socket nobody listens on any more; refuses to touch a live socket or another file.
async fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(SocketError::Io { path: path.to_owned(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(SocketError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale workload API socket");
            std::fs::remove_file(path).map_err(|source| SocketError::Io { path: path.to_owned(), source })
        }
        Err(source) => Err(SocketError::Io { path: path.to_owned(), source }),
    }
}

/// Accepts connections until `stop` turns true, attesting each peer as it arrives (while the
/// caller is blocked in its handshake), and hands them to the server through the receiver.
/// Connections whose peer cannot be attested are dropped.
pub fn accept_loop(listener: UnixListener, mut stop: watch::Receiver<bool>) -> mpsc::Receiver<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => match Peer::of(&stream) {
                    Ok(peer) => {
                        if tx.send(Ok(PeerStream::new(stream, peer))).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "workload API: no peer credentials; connection dropped"),
                },
                Err(e) => {
                    // E.g. out of file descriptors: wait instead of spinning on the error.
                    tracing::warn!(error = %e, "workload API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_replaces_stale_sockets_and_refuses_live_ones_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let first = BoundSocket::bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(matches!(BoundSocket::bind(&path).await, Err(SocketError::InUse(_))));

        // A listener that went away without cleaning up leaves a stale socket file behind.
        let (listener, _, _) = first.into_parts();
        drop(listener);
        assert!(path.exists());
        let second = BoundSocket::bind(&path).await.unwrap();
        let (_listener, _, identity) = second.into_parts();
        BoundSocket::remove_file(&path, (identity.0, identity.1.wrapping_add(1)));
        assert!(path.exists(), "another file's identity removes nothing");
        BoundSocket::remove_file(&path, identity);
        assert!(!path.exists());

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(BoundSocket::bind(&file).await, Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
