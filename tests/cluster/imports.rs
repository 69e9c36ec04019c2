//! An import in a cluster runs on the node that took its request, and is seen as running
//! through every node while it does: read through any node, its job is `running`, and the same
//! job sent again through any other node is refused (409 `import_running`, naming the node),
//! rather than started a second time beside the first, even when both starts arrive at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;

use super::*;

/// A request body the test feeds a chunk at a time, so the import can be seen half-way.
struct Fed {
    chunks: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Fed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.chunks.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk, 0),
                // The test dropped its sender: the file ends.
                Err(_) => return Ok(0),
            }
        }
        let taken = buf.len().min(self.chunk.len() - self.at);
        buf[..taken].copy_from_slice(&self.chunk[self.at..self.at + taken]);
        self.at += taken;
        Ok(taken)
    }
}

/// Starts an import of job `job` through `base` whose body is fed through the returned sender;
/// the thread answers the status and body.
fn fed_import(
    base: &str,
    key: &str,
    job: &str,
    first: Vec<u8>,
) -> (mpsc::Sender<Vec<u8>>, std::thread::JoinHandle<(StatusCode, Value)>) {
    let (feed, chunks) = mpsc::channel();
    feed.send(first).unwrap();
    let (url, key) = (format!("{base}/v1/operators/streamed/imports?job={job}"), key.to_owned());
    let importing = std::thread::spawn(move || {
        let client = Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let answer = client
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/x-ndjson")
            .body(reqwest::blocking::Body::new(Fed { chunks, chunk: Vec::new(), at: 0 }))
            .send()
            .unwrap();
        (answer.status(), answer.json::<Value>().unwrap_or(Value::Null))
    });
    (feed, importing)
}

fn deposits(lines: std::ops::Range<usize>) -> Vec<u8> {
    lines
        .map(|n| {
            let event = json!({"id": format!("s{n}"), "type": "deposit", "customer": format!("s{n}"), "amount": "20", "affiliate": "aff1"});
            format!("{event}\n")
        })
        .collect::<String>()
        .into_bytes()
}

pub(super) fn an_import_is_running_through_every_node_while_it_runs(
    nats: &Nats,
    hosts: &HashMap<String, Host>,
    client: &Client,
) {
    let mut names: Vec<&str> = hosts.keys().map(String::as_str).collect();
    names.sort();
    let operator = hosts[names[0]].multi_event_with_aff1("streamed");
    let owner_name = preferred_node("streamed", &names);
    wait_for_owner(nats, "streamed", owner_name);
    // Run it on a node that does not own the operator, so the owner (which answers its reads)
    // knows of the run only from the job's progress in the log.
    let runner = names.iter().copied().find(|name| *name != owner_name).unwrap();
    let job_url = |host: &Host| format!("{}/v1/operators/streamed/imports/streamed-1", host.base);

    let (feed, importing) = fed_import(&hosts[runner].base, &operator.api_key, "streamed-1", deposits(0..600));
    for name in &names {
        eventually(&format!("the import's first batch, read through {name}"), &hosts[*name], || {
            let answer = client.get(job_url(&hosts[*name])).bearer_auth(&operator.api_key).send();
            let job: Value = answer.map_err(|error| error.to_string())?.json().map_err(|error| error.to_string())?;
            match (&job["state"], job["lines_read"].as_u64()) {
                (state, Some(read)) if state == "running" && read >= 500 => Ok(()),
                _ => Err(job.to_string()),
            }
        });
    }
    // Sent again through the owner, and through the third node (whose view applies the
    // ledger before it looks for the job): refused, naming the node that runs it.
    let third = names.iter().copied().find(|name| *name != owner_name && *name != runner).unwrap();
    for through in [owner_name, third] {
        let again = client
            .post(format!("{}/v1/operators/streamed/imports?job=streamed-1", hosts[through].base))
            .bearer_auth(&operator.api_key)
            .header("content-type", "application/x-ndjson")
            .body(deposits(0..1))
            .send()
            .unwrap();
        assert_eq!(again.status(), StatusCode::CONFLICT, "the running job, sent again through {through}");
        let refusal: Value = again.json().unwrap();
        assert_eq!(refusal["error"], "import_running", "{refusal}");
        assert!(refusal["message"].as_str().unwrap().contains(&format!("node {runner}")), "{refusal}");
    }

    feed.send(deposits(600..1200)).unwrap();
    drop(feed);
    let (status, job) = importing.join().unwrap();
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!((&job["state"], &job["accepted"], &job["lines_read"]), (&json!("done"), &json!(1200), &json!(1200)));
    for name in &names {
        let answer = client.get(job_url(&hosts[*name])).bearer_auth(&operator.api_key).send().unwrap();
        let seen: Value = answer.json().unwrap();
        assert_eq!((&seen["state"], &seen["accepted"]), (&json!("done"), &json!(1200)), "through {name}: {seen}");
    }
    assert_eq!(paid(&hosts[owner_name], "streamed").len(), 1200, "one first-deposit commission per line");

    two_starts_at_once_run_one(hosts, &names, owner_name, &operator.api_key);
}

/// An import request written by hand over its own connection, its body sent in chunks: unlike
/// an HTTP client library's, its answer can be read while the body is still open, as a refusal
/// that comes before the body ends is.
struct RawImport {
    connection: TcpStream,
    answer: std::thread::JoinHandle<(u16, Value)>,
}

impl RawImport {
    fn start(base: &str, key: &str, job: &str, first: &[u8]) -> Self {
        let address = base.trim_start_matches("http://");
        let mut connection = TcpStream::connect(address).unwrap();
        let head = format!(
            "POST /v1/operators/streamed/imports?job={job} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        connection.write_all(head.as_bytes()).unwrap();
        let mut reading = connection.try_clone().unwrap();
        let answer = std::thread::spawn(move || {
            let mut text = String::new();
            // The server closes the connection after its answer (`Connection: close`).
            let _ = reading.read_to_string(&mut text);
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
            (status, serde_json::from_str(body).unwrap_or(Value::Null))
        });
        let mut import = Self { connection, answer };
        import.send(first);
        import
    }

    /// Sends a chunk of the body; a connection the server closed already (it answered) takes
    /// nothing more.
    fn send(&mut self, chunk: &[u8]) {
        let _ = write!(self.connection, "{:x}\r\n", chunk.len())
            .and_then(|()| self.connection.write_all(chunk))
            .and_then(|()| self.connection.write_all(b"\r\n"));
    }

    /// Ends the body, and reads the answer.
    fn finish(mut self) -> (u16, Value) {
        let _ = self.connection.write_all(b"0\r\n\r\n");
        self.answer.join().unwrap()
    }
}

/// The same new job sent through the two nodes that do not own the operator at the same
/// moment: each finds no job in its view, and only the claim the operator's order puts first
/// runs; the other is refused, naming the node that runs it. The file's lines are committed
/// once.
fn two_starts_at_once_run_one(hosts: &HashMap<String, Host>, names: &[&str], owner_name: &str, key: &str) {
    let through: Vec<&str> = names.iter().copied().filter(|name| *name != owner_name).collect();
    let starts: Vec<RawImport> = through
        .iter()
        .map(|name| RawImport::start(&hosts[*name].base, key, "streamed-2", &deposits(2000..2010)))
        .collect();
    // The refused one answers at once; the one running waits for the rest of its file.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        if let Some(done) = starts.iter().position(|start| start.answer.is_finished()) {
            break done;
        }
        assert!(Instant::now() < deadline, "neither start of streamed-2 was refused within 30 s: both are running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut starts = starts;
    let loser = through[refused];
    let (status, refusal) = starts.remove(refused).finish();
    let (winner, mut running) = (through[1 - refused], starts.remove(0));
    assert_eq!(status, 409, "the start through {loser}: {refusal}");
    assert_eq!(refusal["error"], "import_running", "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains(&format!("node {winner}")), "{refusal}");
    running.send(&deposits(2010..2020));
    let (status, job) = running.finish();
    assert_eq!(status, 200, "the start through {winner}: {job}");
    assert_eq!((&job["accepted"], &job["duplicate"], &job["lines_read"]), (&json!(20), &json!(0), &json!(20)), "{job}");
}
