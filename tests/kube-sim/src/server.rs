//! The HTTP server: one thread per connection, watches streamed as chunked JSON lines.

use serde_json::json;

use crate::*;

pub(crate) fn serve(conn: TcpStream, state: &Arc<Mutex<State>>, stop: &AtomicBool) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = conn;
    while let Some(req) = read_request(&mut reader) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (latency, fail) = {
            let mut s = state.lock().unwrap();
            s.requests += 1;
            (
                s.faults.latency,
                s.faults.error_every > 0 && s.requests % s.faults.error_every == 0,
            )
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if fail && !req.query.contains_key("watch") {
            let body = status(500, "InternalError", "injected fault").to_string();
            state
                .lock()
                .unwrap()
                .log
                .push(format!("{} {} -> 500", req.method, req.path));
            if respond(&mut w, 500, body.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if req.query.get("watch").is_some_and(|v| v == "1" || v == "true") {
            watch(&mut w, &req, state, stop);
            return;
        }
        let (code, body) = {
            let mut s = state.lock().unwrap();
            let r = route(&mut s, &req);
            s.log.push(format!("{} {} -> {}", req.method, req.path, r.0));
            r
        };
        if respond(&mut w, code, body.to_string().as_bytes()).is_err() {
            return;
        }
    }
}

pub(crate) fn watch(w: &mut TcpStream, req: &Request, state: &Arc<Mutex<State>>, stop: &AtomicBool) {
    let kind = if req.path.ends_with("/nodes") { "Node" } else { "Pod" };
    let field = req.query.get("fieldSelector").cloned().unwrap_or_default();
    let label = req.query.get("labelSelector").cloned().unwrap_or_default();
    let since: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let drop_after = {
        let mut s = state.lock().unwrap();
        let watcher = Watcher { kind, label, field, tx };
        // From a resourceVersion: the events after it first (in order), then every new one.
        if since > 0 {
            let first = s.events.partition_point(|(rv, ..)| *rv <= since);
            for (_, k, ty, o) in &s.events[first..] {
                if watcher.wants(k, o) {
                    let _ = watcher.tx.send(json!({"type": ty, "object": o}));
                }
            }
        }
        s.watchers.push(watcher);
        s.faults.drop_watch_after
    };
    if start_chunked(w).is_err() {
        return;
    }
    let started = Instant::now();
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    loop {
        if stop.load(Ordering::SeqCst)
            || started.elapsed() > timeout
            || drop_after.is_some_and(|d| started.elapsed() > d)
        {
            let _ = chunk(w, b"");
            return;
        }
        let ev = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut line = ev.to_string().into_bytes();
        line.push(b'\n');
        if chunk(w, &line).is_err() {
            return;
        }
    }
}
