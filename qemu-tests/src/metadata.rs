//! Emulated cloud metadata services for the guests. A real HTTP/1.x server listens on
//! 127.0.0.1; QEMU's user network forwards the guest's `169.254.169.254:80` to it
//! (see [`MetadataServer::user_net`]), which is how EC2, OpenStack and GCE present user data.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cernvm_launch::qemu::UserNet;

/// Which cloud's metadata layout to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// `/2016-04-19/user-data` and the `/latest/` aliases.
    Ec2,
    /// `/openstack/2013-10-17/user_data` (+ `meta_data.json`) and the EC2-compatible paths.
    OpenStack,
    /// `/computeMetadata/v1/instance/...`, only with the `X-Google-Metadata-Request: True`
    /// header (what GCE demands).
    Gce,
}

impl Cloud {
    /// The body for `path` (with `headers` as lower-case `name: value` lines), or the HTTP
    /// status to answer.
    fn respond(self, path: &str, headers: &[String], user_data: &[u8]) -> Result<Vec<u8>, u16> {
        match self {
            Cloud::Ec2 => match path {
                "/2016-04-19/user-data" | "/latest/user-data" => Ok(user_data.to_vec()),
                "/2016-04-19/meta-data/ami-id" | "/latest/meta-data/ami-id" => {
                    Ok(b"ami-ucernvm-test".to_vec())
                }
                "/latest/meta-data/instance-id" => Ok(b"i-ucernvm-test".to_vec()),
                _ => Err(404),
            },
            Cloud::OpenStack => match path {
                "/openstack/2013-10-17/user_data" | "/latest/user-data" => Ok(user_data.to_vec()),
                "/openstack/2013-10-17/meta_data.json" => {
                    Ok(br#"{"uuid": "ucernvm-test", "name": "cernvm"}"#.to_vec())
                }
                "/latest/meta-data/ami-id" => Ok(b"ami-ucernvm-test".to_vec()),
                _ => Err(404),
            },
            Cloud::Gce => {
                if !headers
                    .iter()
                    .any(|h| h == "x-google-metadata-request: true")
                {
                    return Err(403);
                }
                match path {
                    "/computeMetadata/v1/instance/attributes/user-data" => Ok(user_data.to_vec()),
                    "/computeMetadata/v1/instance/id" => Ok(b"4242424242".to_vec()),
                    _ => Err(404),
                }
            }
        }
    }
}

/// A metadata server on 127.0.0.1 (random port), stopped when dropped.
pub struct MetadataServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl MetadataServer {
    /// Serves `user_data` the way `cloud` does.
    pub fn start(cloud: Cloud, user_data: Vec<u8>) -> io::Result<MetadataServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, stopped) = (Arc::clone(&requests), Arc::clone(&stop));
        let user_data = Arc::new(user_data);
        thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (log, ud) = (Arc::clone(&log), Arc::clone(&user_data));
                        thread::spawn(move || {
                            if let Err(e) = serve(stream, cloud, &ud, &log) {
                                log::debug!("metadata server: {e}");
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        log::warn!("metadata server: accept failed: {e}");
                        return;
                    }
                }
            }
        });
        Ok(MetadataServer {
            port,
            requests,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET <path>` lines seen so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// QEMU user networking that makes this server the guest's `http://169.254.169.254/`.
    /// The guest then lives in 169.254.0.0/16 and reaches the host's loopback at 169.254.2.2.
    pub fn user_net(&self) -> UserNet {
        UserNet {
            net: Some("169.254.0.0/16".into()),
            guestfwd: vec![format!(
                "tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:{}",
                self.port
            )],
            hostfwd: Vec::new(),
        }
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    cloud: Cloud,
    user_data: &[u8],
    log: &Mutex<Vec<String>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        headers.push(line.trim().to_ascii_lowercase());
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if let Ok(mut l) = log.lock() {
        l.push(format!("{method} {path}"));
    }
    let result = if method == "GET" {
        cloud.respond(path, &headers, user_data)
    } else {
        Err(405)
    };
    let mut out = stream;
    match result {
        Ok(body) => {
            write!(
                out,
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(&body)?;
        }
        Err(status) => write!(
            out,
            "HTTP/1.0 {status} Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, path: &str, header: Option<&str>) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 169.254.169.254\r\n{extra}\r\n"
        )
        .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&resp[..split]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, resp[split + 4..].to_vec())
    }

    #[test]
    fn ec2_and_openstack_layouts() {
        let ec2 = MetadataServer::start(Cloud::Ec2, b"[ucernvm-begin]\n".to_vec()).unwrap();
        assert_eq!(
            get(ec2.port(), "/2016-04-19/user-data", None),
            (200, b"[ucernvm-begin]\n".to_vec())
        );
        assert_eq!(
            get(ec2.port(), "/openstack/2013-10-17/user_data", None).0,
            404
        );
        assert_eq!(
            ec2.requests(),
            vec![
                "GET /2016-04-19/user-data",
                "GET /openstack/2013-10-17/user_data"
            ]
        );
        let os = MetadataServer::start(Cloud::OpenStack, b"x".to_vec()).unwrap();
        assert_eq!(
            get(os.port(), "/openstack/2013-10-17/user_data", None),
            (200, b"x".to_vec())
        );
        let net = os.user_net();
        assert_eq!(net.net.as_deref(), Some("169.254.0.0/16"));
        assert!(net.guestfwd[0].ends_with(&format!("127.0.0.1:{}", os.port())));
    }

    #[test]
    fn gce_demands_its_header() {
        let gce = MetadataServer::start(Cloud::Gce, b"ud".to_vec()).unwrap();
        let path = "/computeMetadata/v1/instance/attributes/user-data";
        assert_eq!(get(gce.port(), path, None).0, 403);
        assert_eq!(
            get(gce.port(), path, Some("X-Google-Metadata-Request: True")),
            (200, b"ud".to_vec())
        );
    }
}
