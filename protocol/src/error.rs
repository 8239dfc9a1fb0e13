//! One error enum per layer. Each variant is one violated rule and knows its answer at
//! the edge: a WebSocket close code (RFC 6455 §7.4.1), an HTTP status, or the `code` of
//! an `error` event / TCP ERROR frame. "Need more bytes" is never an error: decoders
//! answer `Ok(None)` for it.

use thiserror::Error;

use crate::ws::CloseCode;

/// Every `code` an `error` event, an ack error or a TCP ERROR frame can carry from the
/// server itself (SPEC §3.5); handler-defined codes (`AckError`) are the handler's own.
/// The wire spelling is [`ErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The message is not valid JSON (or not UTF-8), or not an object.
    BadJson,
    /// The envelope lacks `event`, or a routing field has the wrong type.
    InvalidEnvelope,
    /// An event or handler name breaks the rule of SPEC §3.2.
    InvalidEvent,
    /// A binary message whose header is cut short.
    InvalidBinary,
    /// A room name that is empty or not text.
    InvalidRoom,
    /// A room event or `say` from a client that is not in the room.
    NotMember,
    /// `authorize_join` (or the token's room grant) refused a join.
    Forbidden,
    /// The client is in `max_rooms_per_client` rooms already.
    TooManyRooms,
    /// The server holds `max_rooms` rooms already.
    MaxRooms,
    /// No `on_ack` handler has that name.
    UnknownAction,
    /// A client sent an event only the server may send.
    ReservedEvent,
    /// Authentication is required first, or failed.
    Unauthorized,
    /// A rate limit refused the message (the hook kept the client).
    RateLimited,
    /// The `file` verb found no such file under `public_dir`.
    NotFound,
    /// The file is larger than `max_file_bytes`.
    FileTooLarge,
    /// A TCP frame type that only servers send.
    UnexpectedFrame,
    /// A TCP frame larger than `max_payload`.
    PayloadTooLarge,
    /// A TCP frame type byte that is none of the eleven.
    UnknownType,
    /// A TCP frame whose lengths disagree.
    MalformedFrame,
    /// `max_connections` reached (TCP ERROR before closing).
    ServerFull,
    /// `max_connections_per_ip` reached (TCP ERROR before closing).
    TooManyConnections,
    /// A TCP client closed for what would be a WebSocket 1002.
    ProtocolError,
    /// A TCP client closed for what would be a WebSocket 1008.
    PolicyViolation,
    /// A TCP client closed for any other reason.
    Closed,
}

impl ErrorCode {
    /// The code as it goes on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::InvalidEnvelope => "invalid_envelope",
            Self::InvalidEvent => "invalid_event",
            Self::InvalidBinary => "invalid_binary",
            Self::InvalidRoom => "invalid_room",
            Self::NotMember => "not_member",
            Self::Forbidden => "forbidden",
            Self::TooManyRooms => "too_many_rooms",
            Self::MaxRooms => "max_rooms",
            Self::UnknownAction => "unknown_action",
            Self::ReservedEvent => "reserved_event",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::FileTooLarge => "file_too_large",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnknownType => "unknown_type",
            Self::MalformedFrame => "malformed_frame",
            Self::ServerFull => "server_full",
            Self::TooManyConnections => "too_many_connections",
            Self::ProtocolError => "protocol_error",
            Self::PolicyViolation => "policy_violation",
            Self::Closed => "closed",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket framing violation (RFC 6455 §5). The connection must be failed with
/// [`ProtocolError::close_code`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// RSV1-3 set while no extension that defines them was negotiated (§5.2); with
    /// permessage-deflate, RSV1 anywhere but on a data message's first frame, or RSV2-3.
    #[error("reserved bits {0:#05b} set without a negotiated extension")]
    ReservedBits(u8),
    /// Opcodes 0x3-0x7 and 0xB-0xF are reserved (§5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    /// Every client-to-server frame must be masked (§5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server must never mask (§5.1); seen only by the client-side decoder.
    #[error("server frame is masked")]
    MaskedFrame,
    /// Control frames cannot be fragmented (§5.5).
    #[error("control frame with FIN clear")]
    FragmentedControlFrame,
    /// Control frames carry at most 125 bytes (§5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    /// A continuation frame arrived with no fragmented message open (§5.4).
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A text/binary frame arrived while a fragmented message was still open (§5.4).
    #[error("new data frame while a fragmented message is still open")]
    ExpectedContinuation,
    /// The most significant bit of a 64-bit payload length must be 0 (§5.2).
    #[error("64-bit payload length has its most significant bit set")]
    InvalidLength,
    /// The message (all fragments together) exceeds the configured `max_payload`. The
    /// check runs on each header, before any of the payload is buffered.
    #[error("message of at least {size} bytes exceeds max_payload of {max} bytes")]
    MessageTooBig { size: u64, max: usize },
    /// A compressed message (RFC 7692) inflates to more than `max_payload` bytes. The
    /// inflater stops at the first byte past the limit, so a small bomb never makes the
    /// server allocate its whole output.
    #[error("compressed message inflates past max_payload of {max} bytes")]
    InflatedTooBig { max: usize },
    /// A compressed message's payload is not valid DEFLATE data (RFC 7692 §7.2.2).
    #[error("invalid compressed data")]
    InvalidCompressedData,
    /// A text message is not valid UTF-8; detected at the first bad byte (§8.1).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame body of exactly one byte cannot hold a status code (§5.5.1).
    #[error("close frame body of 1 byte")]
    CloseBodyTooShort,
    /// The close code is not one an endpoint may send (§7.4).
    #[error("close code {0} may not be sent on the wire")]
    InvalidCloseCode(u16),
    /// The close reason is not valid UTF-8 (§5.5.1).
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl ProtocolError {
    /// The close code this violation is answered with (SPEC §3.5).
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::MessageTooBig { .. } | Self::InflatedTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 | Self::InvalidCloseReason | Self::InvalidCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Why an HTTP request is not a valid WebSocket opening handshake (RFC 6455 §4.2.1).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes are not an HTTP/1.x request.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The request head exceeds the configured size cap before its blank line.
    #[error("request head exceeds {max} bytes")]
    HeadTooLarge { max: usize },
    /// More header lines than the configured cap.
    #[error("more than {max} header lines")]
    TooManyHeaders { max: usize },
    /// The opening handshake must be an HTTP/1.1 (or later) request (§4.1).
    #[error("HTTP version must be 1.1 or later")]
    HttpVersion,
    /// The opening handshake must be a GET (§4.1).
    #[error("method must be GET, got {0}")]
    Method(String),
    /// `Upgrade: websocket` is missing (§4.2.1 item 3).
    #[error("missing `Upgrade: websocket` header")]
    MissingUpgrade,
    /// `Connection` does not contain the `Upgrade` token (§4.2.1 item 4).
    #[error("missing `Connection: Upgrade` header")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` is absent or not 13 (§4.2.1 item 6); answered 426 with
    /// `Sec-WebSocket-Version: 13` so the client can retry.
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is absent or not the base64 of 16 bytes (§4.2.1 item 5).
    #[error("missing or invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// The caller's origin policy refused the `Origin` header (§4.2.2, §10.2).
    #[error("origin not allowed")]
    OriginNotAllowed,
}

impl HandshakeError {
    /// The HTTP status the server answers this rejection with.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::OriginNotAllowed => 403,
            Self::UnsupportedVersion | Self::MissingUpgrade => 426,
            _ => 400,
        }
    }
}

/// Why a JSON envelope (SPEC §3.1) or binary-message header was refused. Answered with
/// an `error` event whose `code` is [`EnvelopeError::code`]; the connection stays open.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The text is not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The JSON is valid but not an object.
    #[error("envelope must be a JSON object")]
    NotAnObject,
    /// `event` is missing or not a string.
    #[error("envelope has no `event` string")]
    MissingEvent,
    /// `event` (or `_ackName`) breaks the name rule of SPEC §3.2.
    #[error(transparent)]
    InvalidEvent(#[from] crate::event::InvalidEvent),
    /// A routing field (`room`, `_ackName`, `_correlationId`) is present but not a string.
    #[error("`{0}` must be a string")]
    FieldNotString(&'static str),
    /// A binary message shorter than its 4-byte header length, or whose declared header
    /// length runs past the end of the message.
    #[error("binary message header length {declared} exceeds message of {len} bytes")]
    BinaryHeaderTruncated { declared: u64, len: usize },
}

impl EnvelopeError {
    /// The `code` field of the `error` event sent back to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidJson(_) | Self::NotAnObject => ErrorCode::BadJson,
            Self::MissingEvent | Self::FieldNotString(_) => ErrorCode::InvalidEnvelope,
            Self::InvalidEvent(_) => ErrorCode::InvalidEvent,
            Self::BinaryHeaderTruncated { .. } => ErrorCode::InvalidBinary,
        }
    }
}

/// A violation of the TCP frame format (SPEC §3.2). Answered with an ERROR frame whose
/// payload `code` is [`TcpError::code`], then the connection is closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TcpError {
    /// The declared total length is below the 7-byte header.
    #[error("frame length {0} is shorter than the 7-byte header")]
    FrameTooShort(u32),
    /// The declared length exceeds `max_payload`; refused before any of it is buffered.
    #[error("frame of {len} bytes exceeds max_payload of {max} bytes")]
    FrameTooBig { len: u32, max: usize },
    /// The type byte is none of the 11 frame types.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The event length runs past the end of the frame.
    #[error("event length {event_len} exceeds frame body of {body_len} bytes")]
    EventOverrun { event_len: u16, body_len: u32 },
    /// The event name breaks the rule: 1-256 bytes of `[A-Za-z0-9\-./:_]`.
    #[error("invalid event name")]
    InvalidEventName,
}

impl TcpError {
    /// The `code` field of the ERROR frame sent before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooBig { .. } => ErrorCode::PayloadTooLarge,
            Self::UnknownType(_) => ErrorCode::UnknownType,
            Self::InvalidEventName => ErrorCode::InvalidEvent,
            Self::FrameTooShort(_) | Self::EventOverrun { .. } => ErrorCode::MalformedFrame,
        }
    }
}
