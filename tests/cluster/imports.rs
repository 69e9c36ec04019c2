//! An import in a cluster runs on the node that took its request, and is seen as running
//! through every node while it does: read through any node, its job is `running`, and the same
//! job sent again through any other node is refused (409 `import_running`, naming the node),
//! rather than started a second time beside the first.

use std::io::Read;
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

    let (feed, chunks) = mpsc::channel();
    feed.send(deposits(0..600)).unwrap();
    let (base, key) = (hosts[runner].base.clone(), operator.api_key.clone());
    let importing = std::thread::spawn(move || {
        let client = Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let answer = client
            .post(format!("{base}/v1/operators/streamed/imports?job=streamed-1"))
            .bearer_auth(key)
            .header("content-type", "application/x-ndjson")
            .body(reqwest::blocking::Body::new(Fed { chunks, chunk: Vec::new(), at: 0 }))
            .send()
            .unwrap();
        (answer.status(), answer.json::<Value>().unwrap_or(Value::Null))
    });
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
}
