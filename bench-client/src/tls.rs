//! `wss://` for the generator (`--tls-ca`): rustls with ring, driven by monoio-rustls,
//! the client side of the stack the server runs, so a TLS run measures the servers and
//! not two crypto libraries.
//!
//! Every connection's byte stream is a [`Stream`], the TCP socket or TLS over it; the
//! readers and writers of `conn.rs` see only that. A plaintext run pays one predictable
//! branch per read and write for it, never an allocation: the TLS state and its
//! futures are boxed, so the plain variant stays as small as the socket.
//!
//! Session resumption is off: every connection of a connect storm is a full handshake
//! (ECDHE and the certificate's signature), as for clients meeting the server for the
//! first time, and each server is charged the same work whatever cache it keeps.

use std::io;
use std::path::Path;
use std::sync::Arc;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio_rustls::{ClientTlsStream, TlsConnector};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// A connection's byte stream: the TCP socket, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's connection and its two buffers are large, and a plain
    /// connection should not carry them.
    Tls(Box<ClientTlsStream<TcpStream>>),
}

// SAFETY: the reader and the writer of a connection are two tasks of one thread: the
// TCP stream is `Split`, and monoio-rustls declares its stream `Split` over a `Split`
// socket (rustls's state is only touched between awaits, never across one).
unsafe impl Split for Stream {}

impl AsyncReadRent for Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            // Boxed so a plain connection's read future stays the socket's size.
            Self::Tls(s) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.readv(buf).await,
            Self::Tls(s) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.write(buf).await,
            Self::Tls(s) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.writev(buf).await,
            Self::Tls(s) => Box::pin(s.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush().await,
            Self::Tls(s) => Box::pin(s.flush()).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.shutdown().await,
            Self::Tls(s) => Box::pin(s.shutdown()).await,
        }
    }
}

/// The client side of every TLS connection of a run: which certificates it trusts and
/// which name it asks for (SNI, and the name the certificate must carry).
pub struct Connector {
    tls: TlsConnector,
    name: ServerName<'static>,
}

impl Connector {
    /// A connector trusting the certificates of the PEM file `ca` (the server's own
    /// self-signed certificate will do) for the server name `name`. ALPN offers
    /// `http/1.1`, as a browser opening `wss://` does.
    pub fn from_ca(ca: &Path, name: &str) -> io::Result<Self> {
        let bad = |reason: String| io::Error::other(format!("{}: {reason}", ca.display()));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| io::Error::other(format!("TLS server name {name}: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Self {
            tls: TlsConnector::from(config),
            name,
        })
    }

    /// Runs the client side of the handshake over a connected socket.
    pub async fn connect(&self, stream: TcpStream) -> io::Result<Stream> {
        let tls = self
            .tls
            .connect(self.name.clone(), stream)
            .await
            .map_err(io::Error::from)?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}
