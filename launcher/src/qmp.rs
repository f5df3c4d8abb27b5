//! A minimal QMP (QEMU Machine Protocol) client over a Unix socket: enough to negotiate
//! capabilities and run simple commands such as `system_powerdown`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Errors talking to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {cause}")]
    Connect { path: String, cause: io::Error },
    #[error("QMP I/O error: {0}")]
    Io(io::Error),
    #[error("QMP connection closed by QEMU")]
    Closed,
    #[error("QEMU sent invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("unexpected QMP greeting: {0}")]
    Greeting(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

// The cause is part of the message, so these are not `#[from]` (which would also make it the
// `source()` and print it twice in a chain).
impl From<io::Error> for QmpError {
    fn from(e: io::Error) -> Self {
        QmpError::Io(e)
    }
}

impl From<serde_json::Error> for QmpError {
    fn from(e: serde_json::Error) -> Self {
        QmpError::Json(e)
    }
}

/// A QMP session in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.display().to_string(),
            cause: source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs `command` and returns its `return` value; asynchronous events are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut text = request.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        loop {
            let msg = self.read_message()?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            // Anything else is an event ({"event": ...}); keep reading.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: sends the greeting, then answers each request line with the next
    /// canned reply lines. Returns the requests it received.
    fn serve(listener: UnixListener, replies: Vec<Vec<&'static str>>) -> Vec<String> {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .unwrap();
        let mut requests = Vec::new();
        for reply in replies {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            requests.push(line.trim().to_string());
            for r in reply {
                writer.write_all(r.as_bytes()).unwrap();
                writer.write_all(b"\n").unwrap();
            }
        }
        requests
    }

    #[test]
    fn negotiates_and_runs_commands() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            serve(
                listener,
                vec![
                    vec![r#"{"return": {}}"#],
                    vec![
                        r#"{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                        r#"{"return": {}}"#,
                    ],
                    vec![
                        r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#,
                    ],
                ],
            )
        });
        let mut qmp = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.execute("system_powerdown", None).unwrap(), json!({}));
        let err = qmp.execute("nope", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command nope failed: CommandNotFound: The command nope has not been found"
        );
        drop(qmp);
        let requests = server.join().unwrap();
        assert_eq!(
            requests,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"system_powerdown"}"#,
                r#"{"execute":"nope"}"#
            ]
        );
    }

    #[test]
    fn connect_errors_are_readable() {
        let err = Qmp::connect(Path::new("/nonexistent/qmp.sock"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .starts_with("cannot connect to QMP socket /nonexistent/qmp.sock"));
    }
}
