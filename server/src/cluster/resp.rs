//! The little of RESP3 the workers' links speak: commands out, and frames in, split into
//! replies (to PUBLISH and HELLO) and pushes (subscription messages and confirmations).
//! Everything Redis may send is framed correctly (every type, nested), so a frame the
//! links do not use is skipped whole rather than misread.

/// One frame from Redis.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A reply to a command; `error` for `-` and `!`.
    Reply { error: bool },
    /// A push (`>`): its first items as bytes (bulk and simple strings, numbers as text);
    /// nested items are skipped.
    Push(Vec<&'a [u8]>),
}

/// The frame must be read whole first, or Redis sent something that is not RESP.
#[derive(Debug, PartialEq, Eq)]
pub enum Partial {
    Incomplete,
    Invalid,
}

/// Parses the frame at the start of `buf`: the frame and its length in bytes.
pub fn parse(buf: &[u8]) -> Result<(Frame<'_>, usize), Partial> {
    let (kind, line, body) = header(buf, 0)?;
    match kind {
        b'>' => {
            let count = number(line)?;
            let mut items = Vec::with_capacity(count.min(4));
            let mut at = body;
            for _ in 0..count {
                let end = skip(buf, at)?;
                let (kind, line, start) = header(buf, at)?;
                match kind {
                    b'$' | b'=' => items.push(&buf[start..end - 2]),
                    b'+' | b':' | b',' | b'(' => items.push(line),
                    _ => {}
                }
                at = end;
            }
            Ok((Frame::Push(items), at))
        }
        _ => Ok((
            Frame::Reply {
                error: matches!(kind, b'-' | b'!'),
            },
            skip(buf, 0)?,
        )),
    }
}

/// The type byte, the rest of the first line, and where the line ends, of the frame at
/// `at`.
fn header(buf: &[u8], at: usize) -> Result<(u8, &[u8], usize), Partial> {
    let rest = buf.get(at..).ok_or(Partial::Incomplete)?;
    let Some(newline) = rest.iter().position(|b| *b == b'\n') else {
        return Err(Partial::Incomplete);
    };
    let line = rest[..newline]
        .strip_suffix(b"\r")
        .ok_or(Partial::Invalid)?;
    let (&kind, line) = line.split_first().ok_or(Partial::Invalid)?;
    Ok((kind, line, at + newline + 1))
}

fn number(text: &[u8]) -> Result<usize, Partial> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(Partial::Invalid)
}

/// Aggregates nested deeper than this are refused (Redis's own replies nest 3 deep).
const MAX_DEPTH: usize = 16;

/// Where the frame at `at` ends.
fn skip(buf: &[u8], at: usize) -> Result<usize, Partial> {
    skip_nested(buf, at, 0)
}

fn skip_nested(buf: &[u8], at: usize, depth: usize) -> Result<usize, Partial> {
    if depth > MAX_DEPTH {
        return Err(Partial::Invalid);
    }
    let (kind, line, body) = header(buf, at)?;
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(body),
        b'$' | b'!' | b'=' => {
            if line == b"-1" {
                return Ok(body); // RESP2's null
            }
            let end = body
                .checked_add(number(line)?)
                .and_then(|e| e.checked_add(2))
                .ok_or(Partial::Invalid)?;
            match buf.get(end - 2..end) {
                Some(b"\r\n") => Ok(end),
                Some(_) => Err(Partial::Invalid),
                None => Err(Partial::Incomplete),
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if line == b"-1" {
                return Ok(body);
            }
            let mut count = number(line)?;
            if matches!(kind, b'%' | b'|') {
                count *= 2;
            }
            let mut at = body;
            for _ in 0..count {
                at = skip_nested(buf, at, depth + 1)?;
            }
            // An attribute comes before the frame it describes: both are one.
            if kind == b'|' {
                skip_nested(buf, at, depth + 1)
            } else {
                Ok(at)
            }
        }
        _ => Err(Partial::Invalid),
    }
}

/// Appends the command `args` to `out` (an array of bulk strings).
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut number = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(number.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(number.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"s:room:a", b"\0|\r\n"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$8\r\ns:room:a\r\n$4\r\n\0|\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn replies_and_pushes_are_framed_whole() {
        assert_eq!(parse(b":1\r\n"), Ok((Frame::Reply { error: false }, 4)));
        assert_eq!(
            parse(b"-ERR no\r\n:1"),
            Ok((Frame::Reply { error: true }, 9))
        );
        let push = b">3\r\n$7\r\nmessage\r\n$3\r\ns:a\r\n$5\r\n\r\n|\0x\r\n:2\r\n";
        assert_eq!(
            parse(push),
            Ok((
                Frame::Push(vec![b"message", b"s:a", b"\r\n|\0x"]),
                push.len() - 4
            ))
        );
        let confirmation = b">3\r\n$9\r\nsubscribe\r\n$3\r\ns:a\r\n:1\r\n";
        assert_eq!(
            parse(confirmation),
            Ok((
                Frame::Push(vec![b"subscribe", b"s:a", b"1"]),
                confirmation.len()
            ))
        );
        // HELLO's answer: a map with nested aggregates, one reply.
        let hello = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nmodules\r\n*0\r\n";
        assert_eq!(
            parse(hello),
            Ok((Frame::Reply { error: false }, hello.len()))
        );
    }

    #[test]
    fn a_frame_cut_anywhere_is_incomplete_and_garbage_is_invalid() {
        let push = b">3\r\n$7\r\nmessage\r\n$3\r\ns:a\r\n$5\r\nhello\r\n";
        for cut in 0..push.len() {
            assert_eq!(
                parse(&push[..cut]),
                Err(Partial::Incomplete),
                "cut at {cut}"
            );
        }
        assert_eq!(parse(b"?what\r\n"), Err(Partial::Invalid));
        assert_eq!(parse(b"$3\r\nabcd\r\n"), Err(Partial::Invalid));
        assert_eq!(parse(b":1\n"), Err(Partial::Invalid));
        assert_eq!(parse(b"*x\r\n"), Err(Partial::Invalid));
        assert_eq!(parse(&b"*1\r\n".repeat(40)), Err(Partial::Invalid));
    }
}
