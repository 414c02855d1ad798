//! A minimal HTTP/1.1 server on 127.0.0.1 that serves artifacts by path, with injectable faults:
//! server errors, transient errors, truncated bodies and wrong content. It is written by hand
//! because the faults (a body cut short of its Content-Length) are below what HTTP libraries let a
//! server do on purpose. It stops when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Always answer with this status.
    Status(u16),
    /// Answer with this status the first `n` times, then serve normally.
    FailFirst(u32, u16),
    /// Announce the full Content-Length but close after this many bytes, every time.
    Truncate(usize),
    /// Truncate the first `n` responses, then serve normally.
    TruncateFirst(u32, usize),
    /// Announce the full Content-Length, send this many bytes, then send nothing more while the
    /// connection stays open (for two minutes).
    Stall(usize),
}

#[derive(Debug, Clone)]
struct Route {
    body: Arc<Vec<u8>>,
    fault: Fault,
    hits: u32,
}

#[derive(Default)]
struct State {
    routes: BTreeMap<String, Route>,
    log: Vec<String>,
}

pub struct Mirror {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mirror {
    pub fn start() -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || serve(c, &s));
                }
            }
        });
        Mirror {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serve `body` at `path` (which starts with `/`).
    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.put_with(path, body, Fault::None);
    }

    pub fn put_with(&self, path: &str, body: Vec<u8>, fault: Fault) {
        self.state.lock().unwrap().routes.insert(
            path.to_string(),
            Route {
                body: Arc::new(body),
                fault,
                hits: 0,
            },
        );
    }

    pub fn set_fault(&self, path: &str, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        let r = s.routes.get_mut(path).expect("route exists");
        r.fault = fault;
        r.hits = 0;
    }

    /// Requests served so far, as `GET /path -> status`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn requests_for(&self, path: &str) -> usize {
        let prefix = format!("GET {path} ");
        self.log().iter().filter(|l| l.starts_with(&prefix)).count()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body, cut, stall) = {
        let mut s = state.lock().unwrap();
        let decision = match s.routes.get_mut(&path) {
            None => (404, Arc::new(b"not found\n".to_vec()), None),
            Some(r) => {
                r.hits += 1;
                match r.fault.clone() {
                    Fault::None => (200, r.body.clone(), None),
                    Fault::Status(code) => (code, Arc::new(b"injected error\n".to_vec()), None),
                    Fault::FailFirst(n, code) if r.hits <= n => (code, Arc::new(b"injected error\n".to_vec()), None),
                    Fault::FailFirst(..) => (200, r.body.clone(), None),
                    Fault::Truncate(at) => (200, r.body.clone(), Some(at)),
                    Fault::TruncateFirst(n, at) if r.hits <= n => (200, r.body.clone(), Some(at)),
                    Fault::TruncateFirst(..) => (200, r.body.clone(), None),
                    Fault::Stall(at) => (200, r.body.clone(), Some(at)),
                }
            }
        };
        s.log.push(format!("GET {path} -> {}", decision.0));
        let stall = matches!(s.routes.get(&path).map(|r| &r.fault), Some(Fault::Stall(_)));
        (decision.0, decision.1, decision.2, stall)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let n = cut.unwrap_or(body.len()).min(body.len());
    let _ = conn.write_all(&body[..n]);
    let _ = conn.flush();
    if stall {
        // Keep the connection open, silent; a client with no read timeout waits all along.
        std::thread::sleep(std::time::Duration::from_secs(120));
    }
}
