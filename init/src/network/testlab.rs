//! Test support: a private network for one test thread. The calling thread moves into a new
//! network namespace holding `eth0`; its veth peer `s0` lives in a named namespace where a real
//! dnsmasq serves DHCP. Everything vanishes when the lab is dropped and the thread ends.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into a fresh network namespace (only this thread: network
/// namespaces are per thread, and children spawned from it inherit it).
pub fn private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): run tests as root");
    run(&["ip", "link", "set", "lo", "up"]);
}

pub struct Lab {
    pub server_ns: String,
    dnsmasq: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Lab {
    /// `eth0` here (down, no address), `s0` = 10.77.0.1/24 in the server namespace.
    pub fn new() -> Lab {
        private_netns();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let server_ns = format!("ucvm-test-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &server_ns]);
        run(&[
            "ip", "link", "add", "name", "eth0", "type", "veth", "peer", "name", "s0",
        ]);
        run(&["ip", "link", "set", "s0", "netns", &server_ns]);
        let ns = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", server_ns.as_str()];
            v.extend_from_slice(args);
            run(&v);
        };
        ns(&["ip", "link", "set", "lo", "up"]);
        ns(&["ip", "addr", "add", "10.77.0.1/24", "dev", "s0"]);
        ns(&["ip", "link", "set", "s0", "up"]);
        Lab {
            server_ns,
            dnsmasq: None,
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Starts dnsmasq on `s0` with the given extra `--dhcp-option`s.
    pub fn start_dhcp(&mut self, options: &[&str]) {
        let lease_file = self._dir.path().join("leases");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.server_ns,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
        ])
        .args([
            "--interface=s0",
            "--bind-interfaces",
            "--port=0",
            "--no-ping",
        ])
        .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h")
        .arg(format!("--dhcp-leasefile={}", lease_file.display()))
        .arg("--pid-file=")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        for o in options {
            cmd.arg(format!("--dhcp-option={o}"));
        }
        self.dnsmasq = Some(
            cmd.spawn()
                .expect("dnsmasq (apt package dnsmasq-base) must be installed"),
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server_ns])
            .status();
    }
}
