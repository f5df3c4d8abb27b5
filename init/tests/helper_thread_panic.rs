//! PID 1's panic policy: a helper thread's panic is logged and reported to the phase that
//! waits for it, and the boot goes on; only a panic of the boot's own thread gets the rescue
//! shell. (Its own test binary: it installs a process-wide panic hook.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ucernvm_init::http::port_probe;
use ucernvm_init::network::time::TimeSync;
use ucernvm_init::panics;

#[test]
fn a_panicking_helper_thread_leaves_the_boot_running() {
    let rescues = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&rescues);
    // This thread plays the boot's main thread; the callback stands for the rescue shell.
    panics::install_boot_hook(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });

    // The time query thread panics: the cvmfs phase, which waits for it, sees a failed query.
    let sync = TimeSync::spawn(|| panic!("simulated fault in the time query"));
    assert!(!sync.finish(), "a panicked query did not set the clock");
    assert_eq!(
        rescues.load(Ordering::SeqCst),
        0,
        "no rescue shell for a helper thread"
    );

    // The boot goes on: the next helper threads (port probes) work and report.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    let closed: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(port_probe(&[closed, open], Duration::from_secs(5)), 0b10);

    // A panic of the boot's own thread is the one that gets the rescue shell.
    let r = std::panic::catch_unwind(|| panic!("simulated fault in a phase"));
    assert!(r.is_err());
    assert_eq!(rescues.load(Ordering::SeqCst), 1);
}
