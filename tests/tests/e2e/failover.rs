//! Agent failover: two servers on one PostgreSQL database (a fresh database per test), one
//! agent given both addresses, or one DNS name with a record for each. When the server it
//! uses is killed (SIGKILL), the agent is on the other within a second or two, its open
//! Workload API stream never errors, and a new entry created on the surviving server
//! reaches that stream.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::time::Instant;

use tests::dns::DnsServer;
use tests::fetch::SvidStream;
use tests::{AgentProc, TestDb, free_port, uid_selector, wait_for};

const NODE: &str = "spiffe://example.org/node/failover";
const BEFORE: &str = "spiffe://example.org/failover/before";
const AFTER: &str = "spiffe://example.org/failover/after";

/// The name the DNS test's agent is given; it has one A record per server.
const NAME: &str = "servers.tessera.test";
/// The DNS test's servers: one port, two loopback addresses.
const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The longest failover accepted: the agent dials at once, one second per dead address at
/// most (agent/src/server_client.rs), plus room for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(2);

/// The agent log lines saying it connected to `address`.
fn connected_to(log: &str, address: &str) -> bool {
    log.lines()
        .any(|l| l.contains("connected to server") && l.contains(address))
}

#[test]
fn an_agent_whose_server_dies_moves_to_the_other_within_a_second() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let [mut a, b] = db.servers(dir.path(), ["a", "b"], &[]);
    // Both CAs in the bundle before the agent takes it, so either server is trusted.
    a.wait_bundle_cas(2, Duration::from_secs(20));

    // Server A first, then B.
    let mut agent = AgentProc::new(&dir.path().join("agent"), &a)
        .with_args(&["--server-address", &b.address()]);
    agent.restart(Some(&a.token(NODE)));
    a.wait_attested(NODE, Duration::from_secs(30));
    a.create_entry_under(NODE, BEFORE, &[&uid_selector()], &[]);

    let mut watch = SvidStream::open(&agent.socket_path);
    watch.wait_id(BEFORE, Duration::from_secs(30));
    assert!(
        connected_to(&agent.log_text(), &a.address()),
        "the agent did not start on A:\n{}",
        agent.log_tail()
    );

    let offset = agent.log_len();
    let killed = Instant::now();
    a.kill();
    // The first sync stream opened after the kill is on B.
    let synced = wait_for(Duration::from_secs(10), || {
        agent
            .log_since(offset)
            .contains("sync stream open")
            .then(Instant::now)
    })
    .unwrap_or_else(|| panic!("no sync on B within 10 s:\n{}", agent.log_tail()));
    let failover = synced - killed;
    println!(
        "failover: {} ms from kill -9 of A to the agent's first sync on B",
        failover.as_millis()
    );
    let since = agent.log_since(offset);
    assert!(
        connected_to(&since, &b.address()),
        "the agent did not say it connected to B:\n{since}"
    );

    // Synced through B: an entry created there reaches the open stream.
    let created = Instant::now();
    b.create_entry_under(NODE, AFTER, &[&uid_selector()], &[]);
    let arrived = watch.wait_id(AFTER, Duration::from_secs(5));
    println!(
        "entry created on B reached the open stream in {} ms",
        (arrived - created).as_millis()
    );
    // The stream never errored (wait_id fails on an error); nothing failed since either.
    watch.assert_no_error();
    assert!(
        failover < FAILOVER_BOUND,
        "failover took {failover:?}:\n{since}"
    );
}

/// How many TCP connections of this machine are established to `to` (`/proc/net/tcp`).
fn established_to(to: SocketAddrV4) -> usize {
    // Addresses as the kernel prints them: the IPv4 address as a native-endian u32, the
    // port big-endian, in hex; state 01 is ESTABLISHED.
    let remote = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(to.ip().octets()),
        to.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .expect("read /proc/net/tcp")
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(2) == Some(&remote.as_str()) && f.get(3) == Some(&"01")
        })
        .count()
}

/// Which of `servers` the agent has a connection to, once it has one to exactly one.
fn agent_on(servers: [SocketAddrV4; 2], within: Duration) -> Option<usize> {
    wait_for(within, || match servers.map(established_to) {
        [n, 0] if n > 0 => Some(0),
        [0, n] if n > 0 => Some(1),
        _ => None,
    })
}

#[test]
fn an_agent_given_one_name_with_two_records_moves_to_the_other_within_a_second() {
    const NODE_DNS: &str = "spiffe://example.org/node/failover-dns";
    const DNS_BEFORE: &str = "spiffe://example.org/failover/dns-before";
    const DNS_AFTER: &str = "spiffe://example.org/failover/dns-after";
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    // One port, free on both addresses.
    let port = (0..100)
        .map(|_| free_port())
        .find(|&p| {
            [IP_A, IP_B]
                .iter()
                .all(|&ip| std::net::TcpListener::bind((ip, p)).is_ok())
        })
        .expect("a port free on both loopback addresses");
    let mut servers = [("a", IP_A), ("b", IP_B)]
        .map(|(name, ip)| db.server_with(dir.path(), name, &[], |s| s.with_node_address(ip, port)));
    let addrs = [IP_A, IP_B].map(|ip| SocketAddrV4::new(ip, port));
    // Both CAs in the bundle before the agent takes it, so either server is trusted.
    servers[0].wait_bundle_cas(2, Duration::from_secs(20));

    // The agent is given the name only, and resolves it with the test's DNS server.
    let dns = DnsServer::start_a(&[(NAME, IP_A), (NAME, IP_B)]);
    let address = format!("{NAME}:{port}");
    let mut agent =
        AgentProc::new(&dir.path().join("agent"), &servers[0]).with_resolv_conf(&dns.resolv_conf());
    agent.server_address = address.clone();
    agent.restart(Some(&servers[0].token(NODE_DNS)));
    servers[0].wait_attested(NODE_DNS, Duration::from_secs(30));
    servers[0].create_entry_under(NODE_DNS, DNS_BEFORE, &[&uid_selector()], &[]);
    let mut watch = SvidStream::open(&agent.socket_path);
    watch.wait_id(DNS_BEFORE, Duration::from_secs(30));
    assert!(
        connected_to(&agent.log_text(), &address),
        "the agent did not say it connected to {address}:\n{}",
        agent.log_tail()
    );
    assert!(dns.queries(NAME) > 0, "the agent never asked for {NAME}");
    let on = agent_on(addrs, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the agent is not connected to exactly one of {addrs:?}"));
    let other = 1 - on;

    let queries = dns.queries(NAME);
    let offset = agent.log_len();
    let killed = Instant::now();
    servers[on].kill();
    let synced = wait_for(Duration::from_secs(10), || {
        agent
            .log_since(offset)
            .contains("sync stream open")
            .then(Instant::now)
    })
    .unwrap_or_else(|| panic!("no sync stream within 10 s:\n{}", agent.log_tail()));
    let failover = synced - killed;
    println!(
        "DNS failover: {} ms from kill -9 of the server at {} to the agent's first sync on {}",
        failover.as_millis(),
        addrs[on],
        addrs[other]
    );
    // On the other record's server, found by asking for the name again.
    assert_eq!(
        agent_on(addrs, Duration::from_secs(5)),
        Some(other),
        "the agent is not connected to the surviving server {}:\n{}",
        addrs[other],
        agent.log_since(offset)
    );
    assert!(
        dns.queries(NAME) > queries,
        "the agent did not resolve {NAME} again to reconnect"
    );
    // Served throughout: the CLI fetch answers and an entry created on the survivor reaches
    // the open stream, which never failed.
    let ids = agent
        .fetch_ids()
        .expect("the agent serves SVIDs after the failover");
    assert_eq!(ids, [DNS_BEFORE]);
    let created = Instant::now();
    servers[other].create_entry_under(NODE_DNS, DNS_AFTER, &[&uid_selector()], &[]);
    let arrived = watch.wait_id(DNS_AFTER, Duration::from_secs(5));
    println!(
        "entry created on the survivor reached the open stream in {} ms",
        (arrived - created).as_millis()
    );
    watch.assert_no_error();
    assert!(
        failover < FAILOVER_BOUND,
        "failover took {failover:?}:\n{}",
        agent.log_since(offset)
    );
}
