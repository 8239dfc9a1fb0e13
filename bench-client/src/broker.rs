//! The broker between a cluster's nodes (Redis, `--broker`), seen from outside: its
//! `INFO commandstats`, read at the start and the end of the measured window, so a run
//! reports what the messages of the window cost the broker (commands per message, time
//! inside Redis) apart from what connecting, joining and leaving cost it. A separate
//! module because it is the generator's only client of a server other than the one
//! under test; blocking std IO, as the coordinator thread reads it twice per run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

/// Calls and microseconds inside the broker of each command, as `INFO commandstats`
/// counts them since the broker started (or since `CONFIG RESETSTAT`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Commandstats(BTreeMap<String, CommandUse>);

/// One command's count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CommandUse {
    pub calls: u64,
    pub usec: u64,
}

/// The longest answer read (a few hundred bytes per command ever used).
const MAX_ANSWER: usize = 1 << 20;

/// Reads `INFO commandstats` from the Redis at `addr` (`host:port`).
pub fn read(addr: &str) -> std::io::Result<Commandstats> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(body) = bulk_string(&answer)? {
            return Ok(Commandstats::parse(&String::from_utf8_lossy(body)));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || answer.len() + n > MAX_ANSWER {
            return Err(std::io::Error::other("INFO answer cut short or too long"));
        }
        answer.extend_from_slice(&chunk[..n]);
    }
}

/// The body of a RESP bulk string (`$len\r\nbody\r\n`) once all of it is in `answer`;
/// `None` while more bytes are needed.
fn bulk_string(answer: &[u8]) -> std::io::Result<Option<&[u8]>> {
    let Some(end) = memchr::memmem::find(answer, b"\r\n") else {
        return Ok(None);
    };
    let header = answer.get(..end).unwrap_or_default();
    let len: usize = header
        .strip_prefix(b"$")
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "not a bulk string: {}",
                String::from_utf8_lossy(header)
            ))
        })?;
    Ok(answer.get(end + 2..end + 2 + len))
}

impl Commandstats {
    /// Reads the `cmdstat_<name>:calls=N,usec=N,...` lines; others are skipped.
    pub fn parse(text: &str) -> Self {
        let mut stats = BTreeMap::new();
        for line in text.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
            };
            if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
                stats.insert(name.to_owned(), CommandUse { calls, usec });
            }
        }
        Self(stats)
    }

    /// What happened between `self` and the later `after`, by command, without the
    /// generator's own INFO and commands that were not called.
    pub fn until(&self, after: &Self) -> BTreeMap<String, CommandUse> {
        after
            .0
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .filter_map(|(name, a)| {
                let b = self.0.get(name).copied().unwrap_or_default();
                let used = CommandUse {
                    calls: a.calls.saturating_sub(b.calls),
                    usec: a.usec.saturating_sub(b.usec),
                };
                (used.calls > 0).then(|| (name.clone(), used))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# Commandstats\r\n\
cmdstat_publish:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
cmdstat_info:calls=1,usec=20,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n";
    const AFTER: &str = "# Commandstats\r\n\
cmdstat_publish:calls=110,usec=550,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
cmdstat_hset:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
cmdstat_info:calls=2,usec=40,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
cmdstat_config|resetstat:calls=1,usec=60\r\n";

    #[test]
    fn the_window_counts_what_happened_in_it_without_our_info() {
        let used = Commandstats::parse(BEFORE).until(&Commandstats::parse(AFTER));
        let names: Vec<&str> = used.keys().map(String::as_str).collect();
        assert_eq!(names, ["config|resetstat", "hset", "publish"]);
        assert_eq!(
            used["publish"],
            CommandUse {
                calls: 100,
                usec: 500
            }
        );
        assert_eq!(used["hset"], CommandUse { calls: 3, usec: 9 });
    }

    #[test]
    fn bulk_strings_are_read_whole_or_not_at_all() {
        let whole = b"$5\r\nhello\r\n";
        for cut in 0..whole.len() {
            let got = bulk_string(&whole[..cut]).expect("well formed");
            assert_eq!(got, (cut >= 9).then_some(&b"hello"[..]), "cut {cut}");
        }
        assert!(bulk_string(b"-ERR unknown\r\n").is_err());
        assert!(bulk_string(b"$x\r\n").is_err());
    }

    #[test]
    fn lines_that_are_not_command_counts_are_skipped() {
        let stats = Commandstats::parse("# Commandstats\r\ncmdstat_get\r\nfoo:bar\r\n\r\n");
        assert_eq!(stats, Commandstats::default());
    }
}
