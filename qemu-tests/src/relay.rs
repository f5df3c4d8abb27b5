//! A TCP relay on 127.0.0.1 in front of the repository's HTTP server that counts the bytes
//! sent to the guest: what a boot downloaded (its working set), as opposed to the repository.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Forwards connections to `127.0.0.1:<target>`; runs until the process ends.
pub struct CountingRelay {
    port: u16,
    to_client: Arc<AtomicU64>,
}

impl CountingRelay {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`.
    pub fn start(target: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let to_client = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&to_client);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || relay(client, target, &counter));
            }
        });
        Ok(CountingRelay { port, to_client })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes sent towards clients so far.
    pub fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
}

fn relay(client: TcpStream, target: u16, counter: &AtomicU64) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = s_read.read(&mut buf) {
        if n == 0 || c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = c_write.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_both_ways_and_counts_what_the_client_receives() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut req = [0u8; 5];
            s.read_exact(&mut req).unwrap();
            s.write_all(&[b'x'; 1000]).unwrap();
            s.write_all(&req).unwrap();
        });
        let relay = CountingRelay::start(target).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 1005);
        assert_eq!(&got[1000..], b"hello");
        assert_eq!(relay.bytes_to_client(), 1005);
    }
}
