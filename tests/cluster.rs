//! Several hosts on NATS JetStream (`serve --cluster`): three `nats-server -js` processes as a
//! cluster (R3 streams), three hosts, loopback only, load over two operators with duplicates
//! and retries, and a node killed (with a nats-server), stopped or paused mid-load.
//!
//! Needs Debian's `nats-server` (2.9.10): `apt-get install -y nats-server` (`.ci/run` does).
//!
//! Here: the harness (the NATS servers, the nodes, the load, the ledger checks) and the three
//! scenarios. What the scenarios check beside the load is in `cluster/`: [`configuration`]
//! (what is created once travels to every node), [`views`] (every node's own view of the
//! ledger) and [`imports`].

use crate::common;

mod configuration;
mod imports;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use common::{ADMIN_TOKEN, Host, Operator, Rng, metric};
use configuration::{
    affiliates_travel_through_the_log, an_unknown_operator_is_looked_up_about_once_a_second,
    configuration_travels_through_the_cluster, the_console_shows_a_new_operator_on_any_node,
};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use views::{
    an_export_imported_through_one_node_is_in_every_view, money_moves_through_the_log, views_apply_the_ledger_of,
    views_follow_the_close,
};

const OPERATORS: [&str; 2] = ["busy", "calm"];
const LEASE_MS: &str = "1500";

/// Three nats-server processes clustered on loopback, each with its own store; killed on drop.
struct Nats {
    servers: Vec<Option<Child>>,
    ports: Vec<u16>,
}

fn nats_server() -> PathBuf {
    for candidate in ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|out| out.status.success()) {
            return PathBuf::from(candidate);
        }
    }
    panic!("nats-server is not installed: the cluster tests need it. Install it with `apt-get install -y nats-server`");
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let binary = nats_server();
        // Six distinct ports: each held until all are chosen (a port let go may come back from
        // the next bind, and a server whose client and route ports collide does not start).
        let held: Vec<TcpListener> = (0..6).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
        let mut chosen = held.iter().map(|listener| listener.local_addr().unwrap().port());
        let ports: Vec<u16> = chosen.by_ref().take(3).collect();
        let routes: Vec<u16> = chosen.collect();
        drop(held);
        let route_list =
            routes.iter().map(|port| format!("\"nats-route://127.0.0.1:{port}\"")).collect::<Vec<_>>().join(", ");
        let mut servers = Vec::new();
        for i in 0..3 {
            let config = dir.join(format!("nats{i}.conf"));
            let store = dir.join(format!("nats{i}"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", max_file_store: 256MB, max_memory_store: 64MB }}\n\
                     cluster {{ name: c1, listen: 127.0.0.1:{}, routes: [{route_list}] }}\n",
                    ports[i],
                    store.display(),
                    routes[i]
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join(format!("nats{i}.log"))).unwrap();
            let child = Command::new(&binary)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting nats-server");
            servers.push(Some(child));
        }
        let started = Instant::now();
        for (i, port) in ports.iter().enumerate() {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "nats-server n{i} did not listen on {port}: {}",
                    std::fs::read_to_string(dir.join(format!("nats{i}.log"))).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Nats { servers, ports }
    }

    /// The servers still running.
    fn urls(&self) -> String {
        self.ports
            .iter()
            .zip(&self.servers)
            .filter(|(_, server)| server.is_some())
            .map(|(port, _)| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs the server named `name` (`n0`, `n1` or `n2`).
    fn kill(&mut self, name: &str) {
        let index: usize = name.trim_start_matches('n').parse().expect("a server's name");
        let mut server = self.servers[index].take().expect("the server runs");
        server.kill().expect("SIGKILL to nats-server");
        server.wait().expect("nats-server reaped");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for server in self.servers.iter_mut().flatten() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// A host of the cluster, with its name.
fn node(dir: &Path, nats: &Nats, name: &str) -> Host {
    let data = dir.join(name);
    Host::start_with(
        &data,
        &["--cluster", &nats.urls(), "--node", name, "--lease-ms", LEASE_MS, "--evaluation-threads", "1"],
    )
}

/// The operators on a host (in a cluster, on one node of it): the multi-event plugin and the
/// affiliate `aff1`; with their credentials.
fn set_up(host: &Host) -> Vec<Operator> {
    OPERATORS.iter().map(|id| host.multi_event_with_aff1(id)).collect()
}

/// An operator as the admin acts for it, on any node.
fn as_admin(id: &str) -> Operator {
    Operator {
        id: id.into(),
        api_key: ADMIN_TOKEN.into(),
        postback_token: String::new(),
        webhook_secret: String::new(),
    }
}

/// What the senders saw.
#[derive(Default)]
struct Seen {
    /// Per operator, the events acknowledged, in each sender's order.
    acknowledged: HashMap<String, Vec<Value>>,
    server_errors: Vec<String>,
    pending: usize,
}

/// How long a sender tries one event before the test fails. A bound against hanging, not a
/// speed check (the failover time is measured in BENCHMARKS.md): on a CI machine shared with a
/// browser and the other suites, JetStream's elections after a server's SIGKILL can take tens of
/// seconds.
const ACKNOWLEDGE_WITHIN: Duration = Duration::from_secs(120);

/// Sends `event` to a random node until one acknowledges it (200), as a retrying client does:
/// a refused connection, a 5xx or a 202 is sent again, to another node.
fn deliver(
    client: &Client,
    nodes: &[String],
    operator: &str,
    event: &Value,
    rng: &mut Rng,
    seen: &Mutex<Seen>,
) -> Value {
    let started = Instant::now();
    for attempt in 0..1200u32 {
        assert!(started.elapsed() < ACKNOWLEDGE_WITHIN, "event {event} not acknowledged within {ACKNOWLEDGE_WITHIN:?}");
        let node = &nodes[rng.below(0..nodes.len() as u64) as usize];
        let sent =
            client.post(format!("{node}/v1/operators/{operator}/events")).bearer_auth(ADMIN_TOKEN).json(event).send();
        if let Ok(response) = sent {
            let status = response.status();
            let body: Value = response.json().unwrap_or(Value::Null);
            match status {
                StatusCode::OK => return body,
                StatusCode::ACCEPTED => seen.lock().unwrap().pending += 1,
                status if status.is_server_error() => {
                    seen.lock().unwrap().server_errors.push(format!("{status} {body}"))
                }
                status => panic!("{event} got {status}: {body}"),
            }
        }
        std::thread::sleep(Duration::from_millis(20 * u64::from(attempt.min(10))));
    }
    panic!("event {event} was never acknowledged");
}

/// Four senders, each with its own customers (ids starting with `prefix`), one event at a time
/// (per-customer order), over both operators (three in four to `busy`); one event in ten sent
/// again to another node. `during` runs once `trigger_after` events are acknowledged.
fn load(nodes: Vec<String>, prefix: &str, customers: u64, trigger_after: usize, during: impl FnOnce()) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4u64)
        .map(|sender| {
            let (nodes, seen, acknowledged, prefix) = (nodes.clone(), seen.clone(), acknowledged.clone(), prefix.to_owned());
            std::thread::spawn(move || {
                let client = Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                let mut rng = Rng::new(sender * 7919 + 1);
                for customer in 0..customers {
                    let operator = if rng.chance(75) { OPERATORS[0] } else { OPERATORS[1] };
                    let id = format!("{prefix}s{sender}-c{customer}");
                    let mut events =
                        vec![json!({"id": format!("{id}-d"), "type": "deposit", "customer": id, "amount": "50", "affiliate": "aff1"})];
                    for trade in 0..rng.below(0..4) {
                        let lots = ["0.5", "4", "6", "12"][rng.below(0..4) as usize];
                        events.push(json!({"id": format!("{id}-t{trade}"), "type": "trade", "customer": id, "attributes": {"lots": lots}}));
                    }
                    for event in events {
                        let answer = deliver(&client, &nodes, operator, &event, &mut rng, &seen);
                        assert!(["accepted", "duplicate"].contains(&answer["status"].as_str().unwrap_or("")), "{answer}");
                        if rng.chance(10) {
                            let again = deliver(&client, &nodes, operator, &event, &mut rng, &seen);
                            assert_eq!(again["status"], "duplicate", "{again}");
                        }
                        seen.lock().unwrap().acknowledged.entry(operator.to_owned()).or_default().push(event);
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acknowledged.load(Ordering::Relaxed) < trigger_after {
        assert!(started.elapsed() < Duration::from_secs(60), "the load did not reach {trigger_after} events");
        std::thread::sleep(Duration::from_millis(10));
    }
    during();
    for sender in senders {
        // The sender's own panic, so that what failed is what the test reports.
        if let Err(panic) = sender.join() {
            std::panic::resume_unwind(panic);
        }
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}

/// Runs `work` on a small runtime with a NATS client.
fn with_nats<T>(nats: &Nats, work: impl AsyncFnOnce(async_nats::Client) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let urls: Vec<String> = nats.urls().split(',').map(str::to_owned).collect();
        let client = async_nats::connect(&urls[..]).await.expect("connect to NATS");
        work(client).await
    })
}

/// How long the tests wait for an operator to have the owner they expect. A bound against
/// hanging: a lease moves within seconds on an idle machine (BENCHMARKS.md measures it), but
/// JetStream's elections on a loaded CI machine can take tens of seconds.
const OWNER_WITHIN: Duration = Duration::from_secs(60);

/// The node that holds the operator's lease, waiting up to [`OWNER_WITHIN`] for one.
fn owner(nats: &Nats, operator: &str) -> String {
    with_nats(nats, async |client| {
        let kv = async_nats::jetstream::new(client).get_key_value("ch_owners").await.expect("the leases' bucket");
        let started = Instant::now();
        loop {
            if let Ok(Some(value)) = kv.get(operator).await
                && let Ok(holder) = serde_json::from_slice::<Value>(&value)
            {
                return holder["node"].as_str().unwrap().to_owned();
            }
            assert!(started.elapsed() < OWNER_WITHIN, "no owner for {operator} within {OWNER_WITHIN:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Every entry on the operator's ledger subject, in order.
fn ledger(nats: &Nats, operator: &str) -> Vec<Value> {
    with_nats(nats, async |client| {
        let stream = async_nats::jetstream::new(client).get_stream("CH_LEDGER").await.expect("the ledger stream");
        let subject = format!("ch.ledger.{operator}");
        let last = stream.get_last_raw_message_by_subject(&subject).await.expect("a ledger entry").sequence;
        // Tried a few times: after a server's SIGKILL, JetStream may answer late while it elects.
        let mut tries = 0;
        let consumer = loop {
            match stream.create_consumer(OrderedConfig { filter_subject: subject.clone(), ..Default::default() }).await
            {
                Ok(consumer) => break consumer,
                Err(error) if tries < 5 => {
                    tries += 1;
                    println!("reading the ledger: {error}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => panic!("reading the ledger of {operator}: {error}"),
            }
        };
        let mut messages = consumer.messages().await.unwrap();
        let mut entries = Vec::new();
        // Bounds against hanging, not speed checks (as OWNER_WITHIN).
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(15), messages.next()).await else { break };
            let message = message.unwrap();
            let sequence = message.info().unwrap().stream_sequence;
            entries.push(serde_json::from_slice(&message.payload).unwrap());
            if sequence >= last {
                return entries;
            }
        }
        panic!("read {} ledger entries of {operator}, not up to {last}", entries.len());
    })
}

/// Per event id, the outcomes the ledger committed it with ("accepted", "duplicate", ...), in
/// ledger order; and the ids accepted, in order.
fn committed(entries: &[Value]) -> (HashMap<String, Vec<String>>, Vec<String>) {
    let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
    let mut order = Vec::new();
    for entry in entries.iter().filter(|entry| entry["kind"] == "committed") {
        // A command's answer (a close's settlements) is not an event a sender sent.
        for request in entry["requests"].as_array().unwrap().iter().filter(|request| request["command"].is_null()) {
            for outcome in request["answer"]["outcomes"].as_array().into_iter().flatten() {
                let id = outcome["record"]["event"]["id"].as_str().unwrap().to_owned();
                let disposition = outcome["disposition"].as_str().unwrap().to_owned();
                if disposition == "accepted" {
                    order.push(id.clone());
                }
                outcomes.entry(id).or_default().push(disposition);
            }
        }
    }
    (outcomes, order)
}

/// Commissions as (event, affiliate, rule, amount).
type Paid = Vec<(String, String, String, String)>;

/// The commissions of an operator as (event, affiliate, rule, amount), sorted: what two ledgers
/// must agree on (commission ids are each ledger's own).
fn paid(host: &Host, operator: &str) -> Paid {
    let mut paid: Vec<_> = host
        .commissions(&as_admin(operator), "")
        .iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap_or_default().to_owned();
            (field("event_id"), field("affiliate"), field("rule"), field("amount"))
        })
        .collect();
    paid.sort();
    paid
}

/// What a single host pays for the same acknowledged events, each sent once in the order the
/// senders had them acknowledged, then `busy`'s month `closed` closed if named.
fn single_node_run(dir: &Path, seen: &Seen, closed: Option<&str>) -> BTreeMap<String, Paid> {
    let host = Host::start(&dir.join("single"));
    // The embedded default is not a cluster, and says how to join one.
    let answer = host.client.get(host.url("/v1/cluster")).bearer_auth(ADMIN_TOKEN).send().unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let body: Value = answer.json().unwrap();
    assert_eq!(body["error"], "not_a_cluster", "{body}");
    assert!(body["message"].as_str().unwrap().contains("--cluster"), "{body}");
    set_up(&host);
    let mut paid_by = BTreeMap::new();
    for operator in OPERATORS {
        let mut sent = HashSet::new();
        for event in seen.acknowledged.get(operator).into_iter().flatten() {
            if sent.insert(event["id"].as_str().unwrap().to_owned()) {
                let (status, body) = host.post_events(&as_admin(operator), event);
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
        if let Some(period) = closed.filter(|_| operator == OPERATORS[0]) {
            let (status, body) = host.close(&as_admin(operator), period);
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        paid_by.insert(operator.to_owned(), paid(&host, operator));
    }
    paid_by
}

/// Every acknowledged event is in the ledger, accepted exactly once; per customer, the ledger
/// accepted them in the order they were sent; the owner's view pays what a single host pays.
fn check_ledger(dir: &Path, nats: &Nats, hosts: &HashMap<String, Host>, seen: &Seen, single: &BTreeMap<String, Paid>) {
    for operator in OPERATORS {
        let (outcomes, order) = committed(&ledger(nats, operator));
        let sent: Vec<&Value> = seen.acknowledged.get(operator).into_iter().flatten().collect();
        let sent_ids: HashSet<&str> = sent.iter().map(|event| event["id"].as_str().unwrap()).collect();
        for id in &sent_ids {
            let accepted = outcomes.get(*id).map_or(0, |all| all.iter().filter(|d| *d == "accepted").count());
            assert_eq!(
                accepted,
                1,
                "{operator}: event {id} is accepted {accepted} times in the ledger: {:?}",
                outcomes.get(*id)
            );
        }
        assert!(
            order.iter().all(|id| sent_ids.contains(id.as_str())),
            "{operator}: the ledger accepted an event never acknowledged"
        );
        let mut per_customer: HashMap<&str, Vec<&str>> = HashMap::new();
        for id in &order {
            per_customer.entry(id.rsplit_once('-').unwrap().0).or_default().push(id);
        }
        let mut sent_per_customer: HashMap<&str, Vec<&str>> = HashMap::new();
        for event in &sent {
            let id = event["id"].as_str().unwrap();
            if !sent_per_customer.get(event["customer"].as_str().unwrap()).is_some_and(|ids| ids.contains(&id)) {
                sent_per_customer.entry(event["customer"].as_str().unwrap()).or_default().push(id);
            }
        }
        assert_eq!(per_customer, sent_per_customer, "{operator}: per-customer order");
        // The owner answers reads once its view caught up at its takeover; a lease that moved
        // just now may still be catching up, so the comparison is given 30 s to hold.
        let started = Instant::now();
        loop {
            let owner = owner(nats, operator);
            let owners_view = paid(&hosts[&owner], operator);
            if owners_view == single[operator] {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let log = hosts[&owner].log();
                let trouble: Vec<&str> =
                    log.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect();
                let trouble = &trouble[trouble.len().saturating_sub(40)..];
                assert_eq!(
                    owners_view, single[operator],
                    "{operator}: {owner}'s commissions (the owner's view) against a single host's; its log's \
                     last warnings: {trouble:#?}"
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // Every live node's view applies the whole ledger, each request checked against the
        // owner's answer (`view_divergences`).
        views_apply_the_ledger_of(operator, dir, nats, hosts);
    }
}

/// What `host`'s view applied of the operator's ledger paid what the owner paid: each view
/// checks each request it applies against the owner's answer in the entry.
fn assert_no_divergence(name: &str, host: &Host, operator: &str) {
    let diverged = format!("commission_host_view_divergences_total{{operator=\"{operator}\"}}");
    let metrics = host.metrics();
    assert_eq!(metric(&metrics, &diverged).unwrap_or(0.0), 0.0, "{name}'s view paid otherwise: {metrics}");
}

#[test]
fn killing_the_owner_of_a_busy_operator_and_a_nats_server_mid_load_loses_nothing_acknowledged_and_pays_nothing_twice() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut nats, mut hosts) = cluster(dir.path());
    let nodes: Vec<String> = hosts.values().map(|host| host.base.clone()).collect();
    let victim = owner(&nats, "busy");
    let host = hosts.remove(&victim).unwrap();
    // The test of a nats-server SIGKILLed mid-load runs here too (one cluster, not two,
    // for CI's time): the leader of the events stream, the server that orders every request.
    let leader = with_nats(&nats, async |client| {
        let mut events = async_nats::jetstream::new(client).get_stream("CH_EVENTS").await.expect("the events stream");
        events.info().await.expect("its info").cluster.as_ref().and_then(|cluster| cluster.leader.clone())
    })
    .expect("the events stream has a leader");
    let mut killed_at = None;
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load(nodes, "", 12, 60, || {
            killed_at = Some(Instant::now());
            nats.kill(&leader);
            host.kill();
        })
    }));
    let seen = loaded.unwrap_or_else(|panic| {
        // What the surviving nodes said, to tell why the load did not go through.
        for (name, host) in &hosts {
            let log = host.log();
            let lines: Vec<&str> = log.lines().filter(|line| !line.contains("DEBUG")).collect();
            eprintln!("--- {name}'s log, last lines:\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
        }
        let said = panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
        eprintln!("--- the load failed: {}", said.unwrap_or("see the sender's panic above"));
        std::panic::resume_unwind(panic)
    });
    println!(
        "killed nats-server {leader} (the events stream's leader) and {victim} (owner of busy) mid-load; \
         {} events acknowledged, {} 202s, {} 5xx, in {:?} after the kills",
        seen.acknowledged.values().map(Vec::len).sum::<usize>(),
        seen.pending,
        seen.server_errors.len(),
        killed_at.unwrap().elapsed()
    );
    let new_owner = owner(&nats, "busy");
    assert_ne!(new_owner, victim, "another node owns the operator");
    let single = single_node_run(dir.path(), &seen, None);
    check_ledger(dir.path(), &nats, &hosts, &seen, &single);
}

/// The scenarios run one at a time: each is a cluster of six processes, on loopback.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Three NATS servers and three hosts named a, b and c, with the operators set up on each;
/// returns once each operator is owned by its preferred node.
///
/// The first node set up is one that `busy` does not prefer: it takes both operators (no other
/// node has them yet), and `busy` must then be handed over to its preferred node.
fn cluster(dir: &Path) -> (Nats, HashMap<String, Host>) {
    let nats = Nats::start(dir);
    let mut names = vec!["a", "b", "c"];
    let preferred = preferred_node("busy", &names);
    names.sort_by_key(|name| *name == preferred);
    let mut hosts = HashMap::from([(names[0].to_string(), node(dir, &nats, names[0]))]);
    let operators = set_up(&hosts[names[0]]);
    for operator in OPERATORS {
        assert_eq!(owner(&nats, operator), names[0], "the only node with {operator} set up owns it");
    }
    // The others are given nothing: they set the operators up from the cluster.
    for name in &names[1..] {
        hosts.insert(name.to_string(), node(dir, &nats, name));
    }
    configuration_travels_through_the_cluster(&hosts, &operators, &names);
    for operator in OPERATORS {
        wait_for_owner(&nats, operator, preferred_node(operator, &names));
    }
    // What a platform team reads of it, from any node: the live nodes, and each operator on
    // its preferred node.
    let status = cluster_status(&hosts[names[1]]);
    assert_eq!(status["node"], names[1], "{status}");
    let live: Vec<&str> =
        status["nodes"].as_array().unwrap().iter().map(|node| node["node"].as_str().unwrap()).collect();
    assert_eq!(live, ["a", "b", "c"], "{status}");
    for operator in OPERATORS {
        let placement = status["operators"].as_array().unwrap().iter().find(|p| p["operator"] == operator);
        let placement = placement.unwrap_or_else(|| panic!("{operator} missing: {status}"));
        assert_eq!(placement["owner"], preferred_node(operator, &names), "{status}");
        assert_eq!(placement["preferred"], placement["owner"], "{status}");
    }
    affiliates_travel_through_the_log(&nats, &hosts, names[0]);
    the_console_shows_a_new_operator_on_any_node(&hosts, &names);
    an_unknown_operator_is_looked_up_about_once_a_second(&hosts[names[1]]);
    (nats, hosts)
}

/// Waits (60 s at most: each node compiles each plugin version) until `check` holds on `host`;
/// past that, fails with the end of its log.
fn eventually(what: &str, host: &Host, mut check: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if started.elapsed() > Duration::from_secs(60) => {
                let log: Vec<char> = host.log().chars().collect();
                let tail: String = log[log.len().saturating_sub(6000)..].iter().collect();
                panic!("{what}: {last}\nthe node's log ends:\n{tail}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `GET path` on `host` with `key`, answered from its own view (as [`own_view`]): the status
/// and JSON. The node checks the key against what it holds, as it does for an event it takes.
fn get_with(client: &Client, host: &Host, key: &str, path: &str) -> (StatusCode, Value) {
    let answer = client
        .get(format!("{}{path}", host.base))
        .bearer_auth(key)
        .header("commission-host-forwarded-by", "the test: this node's own view")
        .send()
        .unwrap();
    (answer.status(), answer.json().unwrap_or(Value::Null))
}

/// `GET path` as the admin, answered from `host`'s own view (marked as forwarded already, so
/// the node does not forward it to the operator's owner).
fn own_view(client: &Client, host: &Host, path: &str) -> reqwest::blocking::Response {
    client
        .get(format!("{}{path}", host.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("commission-host-forwarded-by", "the test: this node's own view")
        .send()
        .unwrap()
}

/// `GET /v1/cluster` as the admin: 200 and its JSON.
fn cluster_status(host: &Host) -> Value {
    let answer = host.client.get(host.url("/v1/cluster")).bearer_auth(ADMIN_TOKEN).send().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    answer.json().unwrap()
}

/// The node an operator prefers among `nodes`: the highest by rendezvous hashing, the first 8
/// bytes of sha256(`operator` NUL `node`), as the host's module docs say.
fn preferred_node<'a>(operator: &str, nodes: &[&'a str]) -> &'a str {
    use sha2::{Digest, Sha256};
    let rank = |node: &&str| {
        let digest = Sha256::digest(format!("{operator}\0{node}").as_bytes());
        u64::from_be_bytes(digest[..8].try_into().unwrap())
    };
    nodes.iter().copied().max_by_key(rank).expect("a node")
}

/// Waits ([`OWNER_WITHIN`] at most) until `node` holds the operator's lease.
fn wait_for_owner(nats: &Nats, operator: &str, node: &str) {
    let started = Instant::now();
    loop {
        let holder = owner(nats, operator);
        if holder == node {
            return;
        }
        assert!(
            started.elapsed() < OWNER_WITHIN,
            "{operator} is still owned by {holder}, not by its preferred node {node}, after {OWNER_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(host: &Host, signal: i32) {
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(host.pid() as i32, signal) }, 0, "signal {signal} to the host");
}

#[test]
fn a_host_stopped_with_sigterm_hands_its_operators_over_with_no_5xx_to_retrying_clients() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (nats, mut hosts) = cluster(dir.path());
    let nodes: Vec<String> = hosts.values().map(|host| host.base.clone()).collect();
    let victim = owner(&nats, "busy");
    let host = hosts.remove(&victim).unwrap();
    let seen = load(nodes, "", 10, 40, || signal(&host, libc::SIGTERM));
    assert!(seen.server_errors.is_empty(), "5xx seen by clients: {:?}", seen.server_errors);
    assert!(host.wait_exit(), "the host exits 0 after SIGTERM");
    let new_owner = owner(&nats, "busy");
    assert_ne!(new_owner, victim, "another node owns the operator");
    let single = single_node_run(dir.path(), &seen, None);
    check_ledger(dir.path(), &nats, &hosts, &seen, &single);

    // A node on an empty data directory, given nothing, once the others have left, sets the
    // operators up from the cluster, takes them, and rebuilds its view from the ledger stream:
    // the same commissions.
    let fresh = node(dir.path(), &nats, "d");
    for (_, host) in hosts.drain() {
        signal(&host, libc::SIGTERM);
        assert!(host.wait_exit(), "the host exits 0 after SIGTERM");
    }
    for operator in OPERATORS {
        let started = Instant::now();
        while owner(&nats, operator) != "d" {
            assert!(started.elapsed() < OWNER_WITHIN, "the fresh node did not take {operator} within {OWNER_WITHIN:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(paid(&fresh, operator), single[operator], "{operator}: the rebuilt node's commissions");
    }
}

#[test]
fn an_owner_paused_past_its_lease_writes_nothing_after_the_new_owner_took_over() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (nats, hosts) = cluster(dir.path());
    let nodes: Vec<String> = hosts.values().map(|host| host.base.clone()).collect();
    let victim = owner(&nats, "busy");
    let paused = &hosts[&victim];
    let other = hosts.iter().find(|(name, _)| **name != victim).map(|(_, host)| host).unwrap();
    // Ordered commands through the log, sent to a node that does not own the operator: late
    // events refused, then events of a past month (before the load).
    let client = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let settings = client
        .put(format!("{}/v1/operators/busy/settings", other.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"late_events": "refuse"}))
        .send()
        .unwrap();
    assert_eq!(settings.status(), StatusCode::OK, "{:?}", settings.text());
    let early: Vec<Value> = (0..3)
        .map(|n| json!({"id": format!("early-c{n}-d"), "type": "deposit", "customer": format!("early-c{n}"), "amount": "40", "affiliate": "aff1", "occurred_at": format!("{CLOSED}-1{n}T12:00:00Z")}))
        .collect();
    let mut rng = Rng::new(5);
    for event in &early {
        deliver(&client, &nodes, "busy", event, &mut rng, &Mutex::default());
    }
    let lease = Duration::from_millis(LEASE_MS.parse().unwrap());
    let mut seen = std::thread::scope(|scope| {
        load(nodes.clone(), "", 14, 40, || {
            // Under load, the month is closed through a node that does not own the operator.
            let (status, closed) = other.close(&as_admin("busy"), CLOSED);
            assert_eq!(status, StatusCode::OK, "{closed}");
            assert_eq!(closed["settlements"].as_array().map(Vec::len), Some(1), "{closed}");
            signal(paused, libc::SIGSTOP);
            scope.spawn(move || {
                std::thread::sleep(lease * 3);
                signal(paused, libc::SIGCONT);
            });
        })
    });
    // The paused node's work in hand, if any, meets the fence once it runs again.
    std::thread::sleep(lease * 2);
    let entries = ledger(&nats, "busy");
    let tenures: Vec<(usize, &str)> = entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry["kind"] == "takeover")
        .map(|(place, entry)| (place, entry["node"].as_str().unwrap()))
        .collect();
    let first_of_victim = tenures.iter().position(|(_, node)| *node == victim).expect("the victim's tenure");
    let (taken_over_at, new_owner) = *tenures[first_of_victim..]
        .iter()
        .find(|(_, node)| *node != victim)
        .expect("another node took the operator over while the owner was paused");
    // The new owner's tenure runs to the next takeover (the victim may take the operator back
    // later, as its preferred node, with a takeover entry of its own).
    let tenure_ends =
        tenures.iter().find(|(place, _)| *place > taken_over_at).map_or(entries.len(), |(place, _)| *place);
    let late: Vec<&Value> =
        entries[taken_over_at..tenure_ends].iter().filter(|entry| entry["node"] == victim.as_str()).collect();
    assert!(late.is_empty(), "the paused owner wrote after {new_owner} took over: {late:?}");
    let log = paused.log();
    println!(
        "{victim} paused; {new_owner} took over at entry {taken_over_at} of {}; the paused node's log says: {:?}",
        entries.len(),
        log.lines().filter(|line| line.contains("fenced") || line.contains("lost the lease")).collect::<Vec<_>>()
    );
    seen.acknowledged.get_mut("busy").unwrap().splice(0..0, early);
    let single = single_node_run(dir.path(), &seen, Some(CLOSED));
    check_ledger(dir.path(), &nats, &hosts, &seen, &single);
    views_follow_the_close(dir.path(), &nats, &hosts, &client);
    money_moves_through_the_log(dir.path(), &nats, &hosts, &client);
    an_export_imported_through_one_node_is_in_every_view(dir.path(), &nats, &hosts, &client);
    imports::an_import_is_running_through_every_node_while_it_runs(&nats, &hosts, &client);
}

/// The month the pause scenario closes.
const CLOSED: &str = "2020-01";
