//! One load-generator connection: TCP connect from a chosen loopback source address,
//! the WebSocket handshake (or the TCP protocol's CONNECT), and framing of what the
//! scenarios send and receive, over a plain or TLS [`Stream`]. Built on the project's
//! own sans-IO codecs (and [`crate::socketio`] for socket.io's envelope).

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use stellar_protocol::EventName;
use stellar_protocol::envelope;
use stellar_protocol::event::reserved;
use stellar_protocol::tcp::{self, FrameType, TcpDecoder};
use stellar_protocol::ws::frame::{encode_client, encode_client_into};
use stellar_protocol::ws::{
    DecoderConfig, Decompressor, DeflateParams, Message, MessageDecoder, OpCode, Role,
};

use crate::socketio;
use crate::tls::Stream;

/// Connections per loopback source address: below the ~28 k ephemeral ports one
/// (source, destination) pair can use.
pub const CONNS_PER_SOURCE: usize = 20_000;

/// Which wire the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Ws,
    Tcp,
    /// socket.io 4 (engine.io v4 over WebSocket): for socket.io servers, which do not
    /// read Stellar's envelope. Broadcast, fanout, echo, ack, connect and idle.
    Socketio,
}

/// A message received, reduced to what scenarios look at, borrowed from the reader
/// until its next call.
pub enum Inbound<'a> {
    /// A JSON event: name and raw data (WebSocket envelope or TCP JSON frame).
    Event {
        event: &'a [u8],
        data: &'a [u8],
    },
    Binary(&'a [u8]),
    Closed(Option<u16>),
}

/// Where the message last decoded lies: in the read buffer (a whole frame, read in
/// place) or in the reader's scratch copy (one the decoder had to assemble).
enum Found {
    Event {
        event: Range<usize>,
        data: Range<usize>,
    },
    /// An event whose name is not in the message (socket.io's CONNECT and ACK).
    Named {
        event: &'static [u8],
        data: Range<usize>,
    },
    Binary(Range<usize>),
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
    half: OwnedReadHalf<Stream>,
    /// The connection's writing half, for the answers the reader owes the server
    /// (socket.io's pongs).
    side: Rc<WriteSide>,
    proto: Proto,
    buf: BytesMut,
    decoder: Decoder,
    /// When the last read completed.
    read_at: Instant,
    /// The last read filled the room it was given: the next asks for [`BUSY_SPARE`].
    busy: bool,
    /// Bytes at the front of `buf` that hold the message last returned, dropped at the
    /// next call.
    taken: usize,
    /// A copy of the last message the decoder assembled (fragmented, or TCP), when it
    /// did not lie whole in `buf`.
    scratch: Vec<u8>,
    /// Whether the last message lies in `scratch` instead of `buf`.
    in_scratch: bool,
}

enum Decoder {
    /// With the inflater of a connection that agreed on permessage-deflate.
    Ws(MessageDecoder, Option<Box<Decompressor>>),
    Tcp(TcpDecoder),
}

/// The writing half.
pub struct Writer {
    side: Rc<WriteSide>,
    proto: Proto,
    mask: u32,
    /// The JSON of the message being framed, reused from message to message.
    json: BytesMut,
}

/// A connection's writing half, shared by its [`Writer`] and its [`Reader`]. Whoever
/// writes takes the half out for the write and puts it back, so two frames never
/// interleave on the wire; the reader never waits for it (it must keep reading), it
/// leaves its pongs owed and the writer sends them after its own write.
struct WriteSide {
    half: RefCell<Option<OwnedWriteHalf<Stream>>>,
    /// The writer's task, waiting while the reader holds the half.
    waiter: RefCell<Option<Waker>>,
    /// PONG texts owed while the writer held the half.
    owed: RefCell<Vec<Bytes>>,
}

/// The mask of the frames the reader writes: masks need only be unpredictable to
/// proxies, and a pong carries nothing to hide.
const READER_MASK: [u8; 4] = [0x5a, 0x3c, 0xa5, 0xc3];

impl WriteSide {
    fn new(half: OwnedWriteHalf<Stream>) -> Rc<Self> {
        Rc::new(Self {
            half: RefCell::new(Some(half)),
            waiter: RefCell::default(),
            owed: RefCell::default(),
        })
    }

    /// The half, once the reader has put it back.
    async fn take(&self) -> OwnedWriteHalf<Stream> {
        std::future::poll_fn(|cx| match self.half.borrow_mut().take() {
            Some(half) => Poll::Ready(half),
            None => {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn put(&self, half: OwnedWriteHalf<Stream>) {
        *self.half.borrow_mut() = Some(half);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Writes `frame` now if the half is free, else leaves it for the writer.
    async fn answer(&self, frame: Bytes) {
        let half = self.half.borrow_mut().take();
        match half {
            Some(mut half) => {
                let _ = half.write_all(frame).await;
                self.put(half);
            }
            None => self.owed.borrow_mut().push(frame),
        }
    }
}

/// Completes the opening over a connected (and, for TLS, handshaken) stream: WebSocket
/// handshake (and socket.io's CONNECT) or nothing for TCP. The server's first message
/// (`welcome` / CONNECT / socket.io's CONNECT answer) is left for the caller to read.
pub async fn open(
    stream: Stream,
    proto: Proto,
    host: &str,
    offer_deflate: bool,
) -> std::io::Result<(Reader, Writer)> {
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(4096);
    let mut deflate = false;
    if proto != Proto::Tcp {
        let path = if proto == Proto::Socketio {
            socketio::PATH
        } else {
            "/"
        };
        let offer = if offer_deflate {
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        let (res, _) = stream.write_all(request.into_bytes()).await;
        res?;
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    return Err(std::io::Error::other("handshake refused"));
                }
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                deflate =
                    offer_deflate && head.contains("sec-websocket-extensions: permessage-deflate");
                let _ = buf.split_to(end + 4);
                break;
            }
            if read_append(&mut stream, &mut buf, READ_SPARE).await? == 0 {
                return Err(std::io::Error::other("closed during handshake"));
            }
        }
    }
    if proto == Proto::Socketio {
        // The server's OPEN packet need not be awaited: socket.io reads a CONNECT sent
        // right after the upgrade.
        let (res, _) = stream
            .write_all(encode_client(OpCode::Text, socketio::CONNECT, READER_MASK))
            .await;
        res?;
    }
    let decoder = match proto {
        Proto::Ws | Proto::Socketio => Decoder::Ws(
            MessageDecoder::new(DecoderConfig {
                role: Role::Client,
                max_message_size: 64 << 20,
                deflate,
            }),
            // The server's messages: each compressed with the server's window; a
            // context-free inflater reads both kinds of server.
            deflate.then(|| {
                Box::new(Decompressor::new(
                    &DeflateParams {
                        client_no_context_takeover: false,
                        ..DeflateParams::default()
                    },
                    64 << 20,
                ))
            }),
        ),
        Proto::Tcp => Decoder::Tcp(TcpDecoder::new(64 << 20)),
    };
    let (half, write) = stream.into_split();
    let side = WriteSide::new(write);
    Ok((
        Reader {
            half,
            side: Rc::clone(&side),
            proto,
            buf,
            decoder,
            read_at: Instant::now(),
            busy: false,
            taken: 0,
            scratch: Vec::new(),
            in_scratch: false,
        },
        Writer {
            side,
            proto,
            mask: 0x9e37_79b9,
            json: BytesMut::new(),
        },
    ))
}

/// Spare room asked for before a read by a connection whose last read did not fill its
/// buffer. With 10 000 connections receiving a message at a time, 16 KiB each spread
/// every read over a different 16 KiB of memory; a read that fills its room asks for
/// [`BUSY_SPARE`] next, so at capacity a read still takes many frames at once.
const READ_SPARE: usize = 2048;
/// Spare room asked for after a read that filled its buffer.
const BUSY_SPARE: usize = 16 * 1024;

async fn read_append(
    stream: &mut impl AsyncReadRent,
    buf: &mut BytesMut,
    spare: usize,
) -> std::io::Result<usize> {
    buf.reserve(spare);
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

    /// The next message; `Closed` at end of stream. A whole frame is read where it lies
    /// in the read buffer (no copy, no refcount): the generator must stay cheaper per
    /// delivery than the servers it measures.
    pub async fn next(&mut self) -> Inbound<'_> {
        let found = loop {
            self.buf.advance(std::mem::take(&mut self.taken));
            match self.decode() {
                Some(Step::Got(found)) => break found,
                Some(Step::Skip) => continue,
                Some(Step::Answer(frame)) => self.side.answer(frame).await,
                None => {
                    let spare = if self.busy { BUSY_SPARE } else { READ_SPARE };
                    match read_append(&mut self.half, &mut self.buf, spare).await {
                        Ok(n) if n > 0 => {
                            self.read_at = Instant::now();
                            self.busy = n >= spare;
                        }
                        _ => break Found::Closed(None),
                    }
                }
            }
        };
        let src: &[u8] = if self.in_scratch {
            &self.scratch
        } else {
            &self.buf
        };
        match found {
            Found::Event { event, data } => Inbound::Event {
                event: &src[event],
                data: &src[data],
            },
            Found::Named { event, data } => Inbound::Event {
                event,
                data: &src[data],
            },
            Found::Binary(range) => Inbound::Binary(&src[range]),
            Found::Closed(code) => Inbound::Closed(code),
        }
    }

    /// Decodes the next message from `buf`; `None` when more bytes are needed.
    fn decode(&mut self) -> Option<Step> {
        self.in_scratch = false;
        let proto = self.proto;
        let decoded = match &mut self.decoder {
            Decoder::Ws(d, inflater) => match d.decode_in_place(&mut self.buf) {
                Ok(Some(frame)) if frame.compressed => {
                    self.taken = frame.len;
                    let Some(inflater) = inflater else {
                        return Some(Step::Got(Found::Closed(None)));
                    };
                    let Ok(plain) = inflater.inflate(&self.buf[frame.payload]) else {
                        return Some(Step::Got(Found::Closed(None)));
                    };
                    self.in_scratch = true;
                    self.scratch.clear();
                    self.scratch.extend_from_slice(&plain);
                    return Some(match frame.opcode {
                        OpCode::Text => found_event(&self.scratch, 0..plain.len(), proto),
                        _ => Step::Got(Found::Binary(0..plain.len())),
                    });
                }
                Ok(Some(frame)) => {
                    self.taken = frame.len;
                    return Some(match frame.opcode {
                        OpCode::Text => found_event(&self.buf, frame.payload, proto),
                        _ => Step::Got(Found::Binary(frame.payload)),
                    });
                }
                Ok(None) => match d.decode(&mut self.buf) {
                    Ok(Some(m)) if m.is_compressed() => match inflater {
                        Some(inflater) => inflater
                            .inflate_message(m)
                            .map(|m| Some(Assembled::Ws(m)))
                            .map_err(drop),
                        None => Err(()),
                    },
                    other => other.map(|m| m.map(Assembled::Ws)).map_err(drop),
                },
                Err(_) => Err(()),
            },
            Decoder::Tcp(d) => d
                .decode(&mut self.buf)
                .map(|f| f.map(Assembled::Tcp))
                .map_err(drop),
        };
        let assembled = match decoded {
            Ok(Some(assembled)) => assembled,
            Ok(None) => return None,
            Err(_) => return Some(Step::Got(Found::Closed(None))),
        };
        self.in_scratch = true;
        self.scratch.clear();
        Some(match assembled {
            Assembled::Ws(Message::Text(t)) => {
                self.scratch.extend_from_slice(t.as_bytes());
                found_event(&self.scratch, 0..t.len(), proto)
            }
            Assembled::Ws(Message::Binary(b)) => {
                self.scratch.extend_from_slice(&b);
                Step::Got(Found::Binary(0..b.len()))
            }
            Assembled::Ws(Message::Close(c)) => Step::Got(Found::Closed(c.map(|c| c.code.0))),
            Assembled::Ws(_) => Step::Skip,
            Assembled::Tcp(f) => match f.kind {
                FrameType::Json | FrameType::Connect | FrameType::AckRes | FrameType::Error => {
                    let event = f.event();
                    let event = event.as_deref().unwrap_or("");
                    self.scratch.extend_from_slice(event.as_bytes());
                    self.scratch.extend_from_slice(&f.payload);
                    let split = event.len();
                    Step::Got(Found::Event {
                        event: 0..split,
                        data: split..self.scratch.len(),
                    })
                }
                FrameType::Binary => {
                    self.scratch.extend_from_slice(&f.payload);
                    Step::Got(Found::Binary(0..f.payload.len()))
                }
                FrameType::Disconnect => Step::Got(Found::Closed(Some(1000))),
                _ => Step::Skip,
            },
        })
    }
}

/// A message the decoder assembled (owned), before it is copied to the scratch buffer.
enum Assembled {
    Ws(Message),
    Tcp(stellar_protocol::tcp::TcpFrame),
}

enum Step {
    Got(Found),
    Skip,
    /// A frame the server is owed (socket.io's PONG), to write before reading on.
    Answer(Bytes),
}

/// The event in the text at `text` of `src`, or a skip if it is not one.
fn found_event(src: &[u8], text: Range<usize>, proto: Proto) -> Step {
    if proto == Proto::Socketio {
        return found_socketio(src, text);
    }
    match parse_event(&src[text.clone()]) {
        Some((event, data)) => Step::Got(Found::Event {
            event: text.start + event.start..text.start + event.end,
            data: text.start + data.start..text.start + data.end,
        }),
        None => Step::Skip,
    }
}

/// What a socket.io text says, as ranges of `src`.
fn found_socketio(src: &[u8], text: Range<usize>) -> Step {
    let shift = |r: Range<usize>| text.start + r.start..text.start + r.end;
    match socketio::parse(&src[text.clone()]) {
        socketio::Packet::Event { event, data } => Step::Got(Found::Event {
            event: shift(event),
            data: shift(data),
        }),
        socketio::Packet::Named { event, data } => Step::Got(Found::Named {
            event,
            data: shift(data),
        }),
        socketio::Packet::Ping { payload } => {
            let mut pong = BytesMut::new();
            socketio::pong_into(&mut pong, &src[shift(payload)]);
            Step::Answer(encode_client(OpCode::Text, &pong, READER_MASK))
        }
        socketio::Packet::Closed => Step::Got(Found::Closed(None)),
        socketio::Packet::Other => Step::Skip,
    }
}

/// `event` and raw `data` of an envelope, found by scanning, not parsing (slices of the
/// frame, no copy): the generator must stay cheaper than the server it measures. The
/// usual layout, `{"event":"…","data":…`, is read from the front; any other is searched.
fn parse_event(text: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
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
    let event = start..start + len;
    let after = start + len + 1;
    let data = if text
        .get(after..)
        .and_then(|rest| rest.strip_prefix(b","))
        .is_some_and(|rest| rest.starts_with(DATA))
    {
        after + 1 + DATA.len()..text.len()
    } else {
        match memchr::memmem::find(text, DATA) {
            Some(at) => at + DATA.len()..text.len(),
            None => text.len()..text.len(),
        }
    };
    Some((event, data))
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
        event: &EventName<'_>,
        data: &str,
        room: Option<&str>,
    ) -> std::io::Result<()> {
        let mut frame = BytesMut::new();
        self.event_into(&mut frame, event, data, room);
        self.send_raw(frame.freeze()).await
    }

    /// Appends the wire form of [`Writer::send_event`] to `out`, to send later (several
    /// in one write).
    pub fn event_into(
        &mut self,
        out: &mut BytesMut,
        event: &EventName<'_>,
        data: &str,
        room: Option<&str>,
    ) {
        self.json.clear();
        match (self.proto, room) {
            (Proto::Ws, _) => {
                envelope::encode_event_into(&mut self.json, event, data, room);
                let mask = self.next_mask();
                encode_client_into(out, OpCode::Text, &self.json, mask);
            }
            (Proto::Socketio, _) => {
                socketio::event_into(&mut self.json, event, data, room);
                let mask = self.next_mask();
                encode_client_into(out, OpCode::Text, &self.json, mask);
            }
            (Proto::Tcp, Some(room)) => {
                self.json.put_slice(b"{\"room\":");
                envelope::write_json_string(&mut self.json, room);
                self.json.put_slice(b",\"data\":");
                self.json.put_slice(data.as_bytes());
                self.json.put_u8(b'}');
                tcp::frame::encode_into(out, FrameType::Json, event, &self.json);
            }
            (Proto::Tcp, None) => {
                tcp::frame::encode_into(out, FrameType::Json, event, data.as_bytes())
            }
        }
    }

    /// Appends the wire form of a request to ack handler `name` to `out`.
    pub fn request_into(
        &mut self,
        out: &mut BytesMut,
        name: &EventName<'_>,
        data: &str,
        correlation: &str,
    ) {
        self.json.clear();
        match self.proto {
            Proto::Ws => {
                self.json.put_slice(b"{\"event\":");
                envelope::write_json_string(&mut self.json, name);
                self.json.put_slice(b",\"data\":");
                self.json.put_slice(data.as_bytes());
                self.json.put_slice(b",\"_ackName\":");
                envelope::write_json_string(&mut self.json, name);
                self.json.put_slice(b",\"_correlationId\":");
                envelope::write_json_string(&mut self.json, correlation);
                self.json.put_u8(b'}');
                let mask = self.next_mask();
                encode_client_into(out, OpCode::Text, &self.json, mask);
            }
            Proto::Tcp => {
                tcp::json::write_ack_payload(&mut self.json, correlation, data);
                tcp::frame::encode_into(out, FrameType::AckReq, name, &self.json);
            }
            Proto::Socketio => {
                socketio::request_into(&mut self.json, name, data, correlation);
                let mask = self.next_mask();
                encode_client_into(out, OpCode::Text, &self.json, mask);
            }
        }
    }

    /// Joins a room (the answer is read by the caller).
    pub async fn join(&mut self, room: &str) -> std::io::Result<()> {
        match self.proto {
            Proto::Ws | Proto::Socketio => {
                self.send_event(
                    &reserved::JOIN_ROOM,
                    &serde_json::Value::from(room).to_string(),
                    None,
                )
                .await
            }
            Proto::Tcp => {
                self.send_raw(stellar_protocol::tcp::frame::encode(
                    FrameType::Join,
                    &reserved::JOIN_ROOM,
                    room.as_bytes(),
                ))
                .await
            }
        }
    }

    /// Appends the wire form of a binary event to a room to `out`.
    pub fn binary_into(
        &mut self,
        out: &mut BytesMut,
        event: &EventName<'_>,
        room: &str,
        payload: &[u8],
    ) {
        let msg = stellar_protocol::binary::encode(event, Some(room), payload);
        let mask = self.next_mask();
        encode_client_into(out, OpCode::Binary, &msg, mask);
    }

    /// Writes `frame`, then any pongs the reader left owed meanwhile.
    pub async fn send_raw(&mut self, frame: Bytes) -> std::io::Result<()> {
        let mut half = self.side.take().await;
        let (mut res, _) = half.write_all(frame).await;
        loop {
            let owed = self.side.owed.borrow_mut().pop();
            match owed {
                Some(pong) if res.is_ok() => res = half.write_all(pong).await.0,
                _ => break,
            }
        }
        self.side.put(half);
        res.map(|_| ())
    }

    /// Sends a close (WebSocket 1000 or TCP DISCONNECT).
    pub async fn close(&mut self) {
        let frame = match self.proto {
            Proto::Ws | Proto::Socketio => {
                let mask = self.next_mask();
                encode_client(OpCode::Close, &1000u16.to_be_bytes(), mask)
            }
            Proto::Tcp => stellar_protocol::tcp::frame::encode_control(FrameType::Disconnect),
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use bytes::BytesMut;
    use stellar_protocol::ws::FrameHeader;
    use stellar_protocol::ws::frame::encode_server;

    use super::*;

    fn unfinished(opcode: OpCode, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut buf = BytesMut::new();
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: payload.len() as u64,
        }
        .encode_into(&mut buf);
        buf.extend_from_slice(payload);
        buf.to_vec()
    }

    /// What a reader makes of `wire`, sent by a real peer socket in `cut`-sized writes.
    fn read_all(wire: Vec<u8>, cut: usize) -> Vec<String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && s.read(&mut byte).expect("read") == 1 {
                request.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                .expect("write");
            for chunk in wire.chunks(cut) {
                s.write_all(chunk).expect("write");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // Hold the socket open until the reader has seen everything and hung up:
            // closing with its request unread would reset the connection.
            let _ = s.read_to_end(&mut request);
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        let got = rt.block_on(async move {
            let stream = connect_from(source_for(0, 0), addr).expect("connect");
            let (mut reader, _writer) = open(Stream::Plain(stream), Proto::Ws, "x", false)
                .await
                .expect("open");
            let mut got = Vec::new();
            loop {
                let seen = match reader.next().await {
                    Inbound::Event { event, data } => format!(
                        "event {} {}",
                        String::from_utf8_lossy(event),
                        String::from_utf8_lossy(data)
                    ),
                    Inbound::Binary(b) => format!("binary {}", String::from_utf8_lossy(b)),
                    Inbound::Closed(code) => {
                        got.push(format!("closed {code:?}"));
                        break;
                    }
                };
                got.push(seen);
            }
            got
        });
        peer.join().expect("peer");
        got
    }

    #[test]
    fn whole_fragmented_and_control_frames_read_in_order() {
        let mut wire = Vec::new();
        wire.extend(encode_server(OpCode::Text, br#"{"event":"a","data":1}"#));
        wire.extend(unfinished(OpCode::Text, br#"{"event":"b","#, false));
        wire.extend(encode_server(OpCode::Ping, b"p"));
        wire.extend(unfinished(OpCode::Continuation, br#""data":[2]}"#, true));
        wire.extend(encode_server(OpCode::Binary, b"bin"));
        wire.extend(encode_server(OpCode::Text, br#"not an envelope"#));
        wire.extend(encode_server(OpCode::Text, br#"{"data":3,"event":"c"}"#));
        wire.extend(encode_server(OpCode::Close, &1001u16.to_be_bytes()));
        let expected = [
            "event a 1}",
            "event b [2]}",
            "binary bin",
            "event c 3,\"event\":\"c\"}",
            "closed Some(1001)",
        ];
        // All at once (every whole frame read in place), and a few bytes at a time
        // (frames split across reads, assembled by the decoder).
        for cut in [usize::MAX, 3] {
            assert_eq!(
                read_all(wire.clone(), cut.min(wire.len())),
                expected,
                "cut {cut}"
            );
        }
    }

    /// The next text message a client sent, as a socket.io peer reads it.
    fn client_text(s: &mut std::net::TcpStream, buf: &mut BytesMut) -> String {
        let mut decoder = MessageDecoder::new(DecoderConfig::default());
        loop {
            if let Ok(Some(Message::Text(t))) = decoder.decode(buf) {
                return t.as_str().to_owned();
            }
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).expect("read");
            assert!(n > 0, "client hung up");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn socketio_connects_and_answers_pings_with_pongs() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && s.read(&mut byte).expect("read") == 1 {
                request.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                .expect("write");
            let mut buf = BytesMut::new();
            let connect = client_text(&mut s, &mut buf);
            for text in [
                &br#"0{"sid":"e","pingInterval":25000}"#[..],
                br#"40{"sid":"s"}"#,
                b"2",
            ] {
                s.write_all(&encode_server(OpCode::Text, text))
                    .expect("write");
            }
            let pong = client_text(&mut s, &mut buf);
            s.write_all(&encode_server(OpCode::Text, br#"42["done",{"p":1}]"#))
                .expect("write");
            let _ = s.read_to_end(&mut request);
            (
                String::from_utf8_lossy(&request).into_owned(),
                connect,
                pong,
            )
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        let got = rt.block_on(async move {
            let stream = connect_from(source_for(0, 0), addr).expect("connect");
            let (mut reader, _writer) = open(Stream::Plain(stream), Proto::Socketio, "x", false)
                .await
                .expect("open");
            let mut got = Vec::new();
            for _ in 0..2 {
                if let Inbound::Event { event, data } = reader.next().await {
                    got.push(format!(
                        "{} {}",
                        String::from_utf8_lossy(event),
                        String::from_utf8_lossy(data)
                    ));
                }
            }
            got
        });
        let (request, connect, pong) = peer.join().expect("peer");
        assert!(request.starts_with("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1"));
        assert_eq!(connect, "40");
        assert_eq!(pong, "3");
        assert_eq!(got, [r#"connect {"sid":"s"}"#, r#"done {"p":1}"#]);
    }

    #[test]
    fn stamps_read_in_any_key_order() {
        assert_eq!(
            stamp(br#"{"p":1,"s":22,"t":333,"x":"yy"}"#),
            Some((1, 22, 333))
        );
        assert_eq!(
            stamp(br#"{"x":"yy","t":333,"p":1,"s":22}"#),
            Some((1, 22, 333))
        );
        assert_eq!(stamp(br#"{"p":1,"s":22}"#), None);
        assert_eq!(stamp(br#"{"p":1,"s":99999999999999999999999,"t":3}"#), None);
    }
}
