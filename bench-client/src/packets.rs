//! How many TCP data segments the server sent to the generator's sockets over the
//! window, from each socket's `TCP_INFO` (`tcpi_data_segs_in`). On loopback a packet
//! costs several µs of CPU on each side, so deliveries per packet, how many frames a
//! server puts in each write, is much of what its CPU per delivery is
//! (`results/bench/window-segments.md`).

use std::os::fd::RawFd;

/// Data segments received so far by each socket of `fds`; 0 for one that cannot be
/// read (closed since).
pub fn data_segments_in(fds: &[RawFd]) -> Vec<u32> {
    fds.iter()
        .map(|&fd| tcp_info(fd).map_or(0, |i| i.tcpi_data_segs_in))
        .collect()
}

/// Segments received between two readings of the same sockets (each counter is a
/// wrapping u32).
pub fn received_between(before: &[u32], after: &[u32]) -> u64 {
    before
        .iter()
        .zip(after)
        .map(|(a, b)| u64::from(b.wrapping_sub(*a)))
        .sum()
}

fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that the kernel fills with at
    // most `len` bytes of `struct tcp_info`; an invalid or non-TCP fd makes the call
    // fail (checked) and leaves the buffer unread.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // SAFETY: the call succeeded, and the buffer was zeroed before it, so any tail the
    // kernel did not write (an older kernel's shorter struct) is zero, a valid u8/u32/u64.
    (rc == 0).then(|| unsafe { info.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// Three writes a few milliseconds apart arrive as three data segments, and the
    /// count taken before and after says three; a closed descriptor reads as zero.
    #[test]
    fn counts_the_data_segments_a_socket_received() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut sender = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        sender.set_nodelay(true).expect("nodelay");
        let (mut receiver, _) = listener.accept().expect("accept");
        let fds = [receiver.as_raw_fd()];
        let before = data_segments_in(&fds);
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            sender.write_all(b"frame").expect("write");
            receiver.read_exact(&mut buf[..5]).expect("read");
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = data_segments_in(&fds);
        assert_eq!(received_between(&before, &after), 3);
        assert_eq!(data_segments_in(&[-1]), vec![0]);
        assert_eq!(received_between(&[u32::MAX], &[1]), 2, "wraps");
    }
}
