//! TLS on both listeners (`tls_cert` + `tls_key`): `wss://` and HTTPS on the WebSocket
//! port, TLS on the TCP-protocol port.
//!
//! rustls does the protocol (ring as its crypto provider) and monoio-rustls drives it
//! over the accepted socket, on io_uring and epoll alike. Everything after the
//! handshake sees a [`Socket`], plain or encrypted, through the same read and write
//! traits, so sessions, HTTP and the writer do not know which one they have: the only
//! place that does is [`Tls::accept`], called once per connection by the session.
//!
//! The certificate is held by a resolver every handshake asks, so [`Tls::reload`]
//! (SIGHUP in the `stellar` binary) swaps it for new handshakes while established
//! connections keep theirs; a file that does not load leaves the old certificate in
//! place.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio_rustls::{ServerTlsStream, TlsAcceptor};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::outbound::Proto;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`tls_cert` and `tls_key` go together: set both or neither")]
    Incomplete,
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the certificate and key are not usable together: {0}")]
    Mismatch(rustls::Error),
}

/// A connection's byte stream: the accepted TCP socket, or TLS over it.
pub enum Socket {
    Plain(TcpStream),
    /// Boxed: the TLS state (rustls's connection and two 16 KiB buffers) is large, and
    /// a plain connection should not pay for it. The fd is the TCP socket's.
    Tls(Box<ServerTlsStream<TcpStream>>, RawFd),
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Plain(s) => s.as_raw_fd(),
            Self::Tls(_, fd) => *fd,
        }
    }
}

// SAFETY: both variants may be split into a read half and a write half used by two
// tasks of one thread: `TcpStream` is `Split`, and monoio-rustls declares its stream
// `Split` over a `Split` socket (rustls's state is touched between awaits only).
unsafe impl Split for Socket {}

impl AsyncReadRent for Socket {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            // Boxed so a plain connection's read future stays small.
            Self::Tls(s, _) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.readv(buf).await,
            Self::Tls(s, _) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for Socket {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.write(buf).await,
            Self::Tls(s, _) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.writev(buf).await,
            // monoio-rustls writes only the first iovec of a vectored write, which made
            // each large frame of a batch its own TLS record and its own send (2.6x the
            // CPU per 1 KiB broadcast message, results/bench/tls.md). The batch is
            // copied into one buffer instead: rustls copies it into records anyway.
            Self::Tls(s, _) => {
                let gathered = gather(&buf);
                let (result, _) = Box::pin(s.write(gathered)).await;
                (result, buf)
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush().await,
            Self::Tls(s, _) => Box::pin(s.flush()).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.shutdown().await,
            Self::Tls(s, _) => Box::pin(s.shutdown()).await,
        }
    }
}

/// The bytes `buf`'s iovecs describe, end to end.
fn gather<T: IoVecBuf>(buf: &T) -> Vec<u8> {
    // SAFETY: `IoVecBuf` promises that `read_iovec_ptr` points to `read_iovec_len` valid
    // iovecs for as long as `buf` is neither moved nor mutated; it is borrowed here.
    let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
    let mut out = Vec::with_capacity(iovecs.iter().map(|iov| iov.iov_len).sum());
    for iov in iovecs {
        // SAFETY: each iovec describes `iov_len` initialized bytes owned by `buf` (the
        // same promise), which outlives this borrow.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(iov.iov_base.cast::<u8>().cast_const(), iov.iov_len)
        });
    }
    out
}

/// The server's TLS setup: one rustls configuration per listener (ALPN `http/1.1` on
/// the WebSocket port, none on the TCP port), both asking one reloadable certificate.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    ws: TlsAcceptor,
    tcp: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The TLS setup of `tls_cert` and `tls_key`: `None` when neither is set.
    pub fn from_paths(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert.to_owned(), key.to_owned()),
            _ => return Err(TlsError::Incomplete),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = Arc::new(Current(RwLock::new(load(&provider, &cert, &key)?)));
        let acceptor = |alpn: &[&[u8]]| -> Result<TlsAcceptor, TlsError> {
            let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Mismatch)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(config))
        };
        Ok(Some(Self {
            ws: acceptor(&[b"http/1.1"])?,
            tcp: acceptor(&[])?,
            cert,
            key,
            current,
        }))
    }

    /// Loads the certificate and key files again; new handshakes use them, established
    /// connections keep theirs. On an error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let fresh = load(&provider, &self.cert, &self.key)?;
        if let Ok(mut current) = self.current.0.write() {
            *current = fresh;
        }
        Ok(())
    }

    /// Runs the server side of the handshake on `stream` within `timeout`. `None` when
    /// the client is not speaking TLS (a plaintext request on a TLS port), fails the
    /// handshake, or stalls past `timeout`: the socket is then closed.
    pub async fn accept(
        &self,
        proto: Proto,
        stream: TcpStream,
        timeout: Duration,
    ) -> Option<Socket> {
        let acceptor = match proto {
            Proto::Ws => &self.ws,
            Proto::Tcp => &self.tcp,
        };
        let fd = stream.as_raw_fd();
        match monoio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(Socket::Tls(Box::new(tls), fd)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }
}

/// The certificate every handshake is offered.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|key| Arc::clone(&key))
    }
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
fn load(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_error(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(TlsError::Mismatch)?;
    Ok(Arc::new(certified))
}

/// The connection's stream: `stream` itself when TLS is off, else TLS over it once the
/// handshake is done (`None`: it failed or stalled, and the socket is closed).
pub async fn secure(
    tls: Option<&Tls>,
    proto: Proto,
    stream: TcpStream,
    timeout: Duration,
) -> Option<Socket> {
    match tls {
        None => Some(Socket::Plain(stream)),
        Some(tls) => tls.accept(proto, stream, timeout).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_copies_every_iovec_in_order() {
        let parts: Vec<Vec<u8>> = vec![
            b"head".to_vec(),
            Vec::new(),
            vec![7; 3000],
            b"tail".to_vec(),
        ];
        let vec_buf = monoio::buf::VecBuf::from(parts.clone());
        assert_eq!(gather(&vec_buf), parts.concat());
    }
}
