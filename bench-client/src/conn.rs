//! One load-generator connection: TCP connect from a chosen loopback source address,
//! the WebSocket handshake (or the TCP protocol's CONNECT), and framing of what the
//! scenarios send and receive. Built on the project's own sans-IO codecs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use stellar_protocol::tcp::{FrameType, TcpDecoder};
use stellar_protocol::ws::frame::encode_client;
use stellar_protocol::ws::{DecoderConfig, Message, MessageDecoder, OpCode, Role};

/// Connections per loopback source address: below the ~28 k ephemeral ports one
/// (source, destination) pair can use.
pub const CONNS_PER_SOURCE: usize = 20_000;

/// Which wire the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Ws,
    Tcp,
}

/// A message received, reduced to what scenarios look at.
pub enum Inbound {
    /// A JSON event: name and raw data (WebSocket envelope or TCP JSON frame).
    Event {
        event: Bytes,
        data: Bytes,
    },
    Binary(Bytes),
    Closed(Option<u16>),
}

/// Source address for connection number `index`: 127.0.0.(1 + offset), then the next
/// address every [`CONNS_PER_SOURCE`] connections. Runs back to back use different
/// offsets so one run's TIME_WAIT ports do not slow the next one's connects.
pub fn source_for(index: usize, offset: u32) -> IpAddr {
    let n = (index / CONNS_PER_SOURCE) as u32 + 1 + offset;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
}

/// Connects from `source` (blocking connect on loopback is microseconds) and hands the
/// socket to the event loop.
pub fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Err(e) = bind_and_connect(fd, source, server) {
        let _ = nix::unistd::close(fd);
        return Err(e);
    }
    // SAFETY: `fd` was created above, is connected, and nothing else owns it; the std
    // stream takes sole ownership.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
    std.set_nodelay(true)?;
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

/// Binds `fd` to `source` and connects it. The source port is left to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`): a port picked at `bind` must be free for every
/// destination, a search through the whole bind table that made each of 19 000
/// connections slower than the last; at `connect` only the 4-tuple must be unique.
fn bind_and_connect(fd: RawFd, source: IpAddr, server: SocketAddr) -> std::io::Result<()> {
    use nix::sys::socket::{self, SockaddrStorage, sockopt};
    socket::setsockopt(fd, sockopt::ReuseAddr, &true)?;
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value is a live c_int whose size is
    // passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket::bind(fd, &SockaddrStorage::from(SocketAddr::new(source, 0)))?;
    socket::connect(fd, &SockaddrStorage::from(server))?;
    Ok(())
}

/// The reading half with its decoder.
pub struct Reader {
    half: OwnedReadHalf<TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
    /// When the last read completed.
    read_at: Instant,
}

enum Decoder {
    Ws(MessageDecoder),
    Tcp(TcpDecoder),
}

/// The writing half.
pub struct Writer {
    half: OwnedWriteHalf<TcpStream>,
    proto: Proto,
    mask: u32,
}

/// Connects and completes the opening: WebSocket handshake or nothing for TCP. The
/// server's first message (`welcome` / CONNECT) is left for the caller to read.
pub async fn open(
    stream: TcpStream,
    proto: Proto,
    host: &str,
) -> std::io::Result<(Reader, Writer)> {
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(4096);
    if proto == Proto::Ws {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let (res, _) = stream.write_all(request.into_bytes()).await;
        res?;
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    return Err(std::io::Error::other("handshake refused"));
                }
                let _ = buf.split_to(end + 4);
                break;
            }
            if read_append(&mut stream, &mut buf).await? == 0 {
                return Err(std::io::Error::other("closed during handshake"));
            }
        }
    }
    let decoder = match proto {
        Proto::Ws => Decoder::Ws(MessageDecoder::new(DecoderConfig {
            role: Role::Client,
            max_message_size: 64 << 20,
        })),
        Proto::Tcp => Decoder::Tcp(TcpDecoder::new(64 << 20)),
    };
    let (half, write) = stream.into_split();
    Ok((
        Reader {
            half,
            buf,
            decoder,
            read_at: Instant::now(),
        },
        Writer {
            half: write,
            proto,
            mask: 0x9e37_79b9,
        },
    ))
}

async fn read_append(
    stream: &mut impl AsyncReadRent,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    buf.reserve(16 * 1024);
    let start = buf.len();
    let (res, slice) = stream.read(std::mem::take(buf).slice_mut(start..)).await;
    *buf = slice.into_inner();
    res
}

impl Reader {
    /// When the read that brought the latest message completed: its arrival time, read
    /// once per read instead of once per message.
    pub fn read_at(&self) -> Instant {
        self.read_at
    }

    /// The next message; `Closed` at end of stream.
    pub async fn next(&mut self) -> Inbound {
        loop {
            match self.decode() {
                Step::Got(inbound) => return inbound,
                Step::Skip => continue,
                Step::NeedMore => match read_append(&mut self.half, &mut self.buf).await {
                    Ok(n) if n > 0 => self.read_at = Instant::now(),
                    _ => return Inbound::Closed(None),
                },
            }
        }
    }

    fn decode(&mut self) -> Step {
        match &mut self.decoder {
            Decoder::Ws(d) => match d.decode(&mut self.buf) {
                Ok(Some(Message::Text(t))) => parse_event(&t).map_or(Step::Skip, Step::Got),
                Ok(Some(Message::Binary(b))) => Step::Got(Inbound::Binary(b)),
                Ok(Some(Message::Close(c))) => Step::Got(Inbound::Closed(c.map(|c| c.code.0))),
                Ok(Some(_)) => Step::Skip,
                Ok(None) => Step::NeedMore,
                Err(_) => Step::Got(Inbound::Closed(None)),
            },
            Decoder::Tcp(d) => match d.decode(&mut self.buf) {
                Ok(Some(f)) => match f.kind {
                    FrameType::Json | FrameType::Connect | FrameType::AckRes | FrameType::Error => {
                        Step::Got(Inbound::Event {
                            event: Bytes::from(f.event),
                            data: f.payload,
                        })
                    }
                    FrameType::Binary => Step::Got(Inbound::Binary(f.payload)),
                    FrameType::Disconnect => Step::Got(Inbound::Closed(Some(1000))),
                    _ => Step::Skip,
                },
                Ok(None) => Step::NeedMore,
                Err(_) => Step::Got(Inbound::Closed(None)),
            },
        }
    }
}

enum Step {
    Got(Inbound),
    Skip,
    NeedMore,
}

/// `event` and raw `data` of an envelope, found by scanning, not parsing (slices of the
/// frame, no copy): the generator must stay cheaper than the server it measures. The
/// usual layout, `{"event":"…","data":…`, is read from the front; any other is searched.
fn parse_event(text: &Bytes) -> Option<Inbound> {
    const EVENT: &[u8] = b"\"event\":\"";
    const DATA: &[u8] = b"\"data\":";
    let start = if text
        .strip_prefix(b"{")
        .is_some_and(|r| r.starts_with(EVENT))
    {
        1 + EVENT.len()
    } else {
        memchr::memmem::find(text, EVENT)? + EVENT.len()
    };
    let len = memchr::memchr(b'"', &text[start..]).unwrap_or(text.len() - start);
    let event = text.slice(start..start + len);
    let after = start + len + 1;
    let data = if text
        .get(after..)
        .and_then(|rest| rest.strip_prefix(b","))
        .is_some_and(|rest| rest.starts_with(DATA))
    {
        text.slice(after + 1 + DATA.len()..)
    } else {
        match memchr::memmem::find(text, DATA) {
            Some(at) => text.slice(at + DATA.len()..),
            None => Bytes::new(),
        }
    };
    Some(Inbound::Event { event, data })
}

impl Writer {
    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need only be unpredictable to proxies, not cryptographic.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        self.mask.to_ne_bytes()
    }

    /// Sends a JSON event: a text frame, or a TCP JSON frame (`room` wraps the data as
    /// `{"room","data"}`).
    pub async fn send_event(
        &mut self,
        event: &str,
        data: &str,
        room: Option<&str>,
    ) -> std::io::Result<()> {
        let frame = self.event(event, data, room);
        self.send_raw(frame).await
    }

    /// The wire form of [`Writer::send_event`], to send later (several in one write).
    pub fn event(&mut self, event: &str, data: &str, room: Option<&str>) -> Bytes {
        match self.proto {
            Proto::Ws => {
                let json = stellar_protocol::envelope::encode_event(event, data, room);
                let mask = self.next_mask();
                encode_client(OpCode::Text, &json, mask)
            }
            Proto::Tcp => match room {
                Some(r) => {
                    let payload = format!(
                        "{{\"room\":{},\"data\":{data}}}",
                        serde_json::Value::from(r)
                    );
                    stellar_protocol::tcp::frame::encode(FrameType::Json, event, payload.as_bytes())
                }
                None => {
                    stellar_protocol::tcp::frame::encode(FrameType::Json, event, data.as_bytes())
                }
            },
        }
    }

    /// The wire form of a request to ack handler `name`.
    pub fn request(&mut self, name: &str, data: &str, correlation: &str) -> Bytes {
        match self.proto {
            Proto::Ws => {
                let json = format!(
                    "{{\"event\":\"{name}\",\"data\":{data},\"_ackName\":\"{name}\",\"_correlationId\":\"{correlation}\"}}"
                );
                let mask = self.next_mask();
                encode_client(OpCode::Text, json.as_bytes(), mask)
            }
            Proto::Tcp => {
                let payload = format!("{{\"data\":{data},\"_correlationId\":\"{correlation}\"}}");
                stellar_protocol::tcp::frame::encode(FrameType::AckReq, name, payload.as_bytes())
            }
        }
    }

    /// Joins a room (the answer is read by the caller).
    pub async fn join(&mut self, room: &str) -> std::io::Result<()> {
        match self.proto {
            Proto::Ws => {
                self.send_event(
                    "join-room",
                    &serde_json::Value::from(room).to_string(),
                    None,
                )
                .await
            }
            Proto::Tcp => {
                self.send_raw(stellar_protocol::tcp::frame::encode(
                    FrameType::Join,
                    "join-room",
                    room.as_bytes(),
                ))
                .await
            }
        }
    }

    /// The wire form of a binary event to a room.
    pub fn binary(&mut self, event: &str, room: &str, payload: &[u8]) -> Bytes {
        let msg = stellar_protocol::binary::encode(event, Some(room), payload);
        let mask = self.next_mask();
        encode_client(OpCode::Binary, &msg, mask)
    }

    pub async fn send_raw(&mut self, frame: Bytes) -> std::io::Result<()> {
        let (res, _) = self.half.write_all(frame).await;
        res.map(|_| ())
    }

    /// Sends a close (WebSocket 1000 or TCP DISCONNECT).
    pub async fn close(&mut self) {
        let frame = match self.proto {
            Proto::Ws => {
                let mask = self.next_mask();
                encode_client(OpCode::Close, &1000u16.to_be_bytes(), mask)
            }
            Proto::Tcp => stellar_protocol::tcp::frame::encode(FrameType::Disconnect, "", &[]),
        };
        let _ = self.send_raw(frame).await;
    }
}

/// `(publisher, seq, time)` of a relayed event's `data`. The publisher writes
/// `{"p":…,"s":…,"t":…,"x":…}`; servers that relay the data as sent, or re-serialize it
/// with sorted or insertion-ordered keys, keep that order, so it is read in one pass
/// from the front. Any other layout is searched key by key.
pub fn stamp(data: &[u8]) -> Option<(u64, u64, u64)> {
    stamp_in_order(data).or_else(|| {
        Some((
            field_u64(data, b"\"p\":")?,
            field_u64(data, b"\"s\":")?,
            field_u64(data, b"\"t\":")?,
        ))
    })
}

fn stamp_in_order(data: &[u8]) -> Option<(u64, u64, u64)> {
    let rest = data.strip_prefix(b"{\"p\":")?;
    let (p, rest) = leading_u64(rest)?;
    let rest = rest.strip_prefix(b",\"s\":")?;
    let (s, rest) = leading_u64(rest)?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t, _) = leading_u64(rest)?;
    Some((p, s, t))
}

/// The unsigned integer `key` (e.g. `"t":`) introduces, anywhere in `data`.
fn field_u64(data: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(data, key)? + key.len();
    leading_u64(&data[at..]).map(|(n, _)| n)
}

/// The decimal digits at the front of `s` and what follows them; `None` if there are
/// none or they overflow.
fn leading_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &s[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, &s[digits..]))
}
