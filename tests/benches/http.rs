//! HTTP benchmark: `POST /transfers` under wrk at 1, 16, 64 and 256 connections, with
//! authentication and a fresh `Idempotency-Key` on every request, against a transferd that
//! settles as it goes, on a private Tansu with SQLite storage (durable, as in production).
//! Then POST → settled latency at half the 64-connection rate, and `GET /transfers/{id}`.
//!
//! The figure to drive down is CPU time per accepted transfer, summed over transferd, the
//! broker, Redis and PostgreSQL from /proc before and after each run: unlike requests/s it
//! barely moves with a shared machine's noise. Beside it, the work each transfer costs, counted
//! rather than timed (the same on a slow machine as on a fast one): PostgreSQL transactions
//! that wrote and WAL bytes, Redis commands by name, and context switches (round trips) by
//! process. Run with `./scripts/bench.sh http`;
//! `TRANSFERD_BENCH_SECONDS` sets each run's length (10); `TRANSFERD_BENCH_BROKER=memory` runs
//! the broker on memory storage, to see what its storage costs; `TRANSFERD_BENCH_POST_ONLY=1`
//! stops after the POST runs (`scripts/bench.sh ab` alternates two builds that way).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::sync::Mutex;
use transferd_e2e::{
    BrokerStorage, Host, HostOptions, Namespace, auth, child_pids, free_port, process_figures,
    spawn_tansu,
};

/// Funded users; each request's sender is one of them, at random.
const USERS: i64 = 200;
/// The POST runs' connection counts; `TRANSFERD_BENCH_CONNECTIONS` ("64" or "16,64") runs
/// fewer, to compare two settings quickly. The GET run and POST → settled need a 64.
fn connection_counts() -> Vec<u32> {
    std::env::var("TRANSFERD_BENCH_CONNECTIONS")
        .ok()
        .map(|text| {
            text.split(',')
                .filter_map(|count| count.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|counts| !counts.is_empty())
        .unwrap_or_else(|| vec![1, 16, 64, 256])
}

fn seconds() -> u64 {
    std::env::var("TRANSFERD_BENCH_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10)
}

/// Every process whose command name is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// The processes a transfer costs CPU in, by role.
struct Processes {
    transferd: u32,
    broker: u32,
}

impl Processes {
    /// The processes of each role, now.
    fn roles(&self) -> [(&'static str, Vec<u32>); 4] {
        [
            ("transferd", self.transferd_pids()),
            ("broker", vec![self.broker]),
            ("redis", pids_named("redis-server")),
            ("postgres", pids_named("postgres")),
        ]
    }

    /// serve and its settlement worker process (the one running now).
    fn transferd_pids(&self) -> Vec<u32> {
        [vec![self.transferd], child_pids(self.transferd)].concat()
    }

    /// CPU ticks by role, now.
    fn ticks(&self) -> BTreeMap<&'static str, u64> {
        self.roles()
            .into_iter()
            .map(|(role, pids)| {
                let ticks = pids
                    .iter()
                    .filter_map(|pid| process_figures(*pid))
                    .map(|(ticks, _)| ticks)
                    .sum();
                (role, ticks)
            })
            .collect()
    }

    /// Context switches by role, now (a round trip to another process costs at least one on
    /// each side). PostgreSQL's backends that exited during a run are not counted.
    fn switches(&self) -> BTreeMap<&'static str, u64> {
        self.roles()
            .into_iter()
            .map(|(role, pids)| (role, pids.into_iter().map(context_switches).sum()))
            .collect()
    }

    /// Starts the peak RSS of serve and its worker process over from their RSS now (Linux's
    /// `clear_refs` 5), so that the peak read after a run is that run's, not start-up's:
    /// compiling the guest when serve starts can peak above anything a load reaches.
    fn reset_transferd_peaks(&self) {
        for pid in self.transferd_pids() {
            if let Err(error) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
                eprintln!("cannot reset the peak RSS of process {pid}: {error}");
            }
        }
    }

    /// Peak RSS of serve and of its worker process (the one running now) since the last
    /// [`Processes::reset_transferd_peaks`], in MiB.
    fn transferd_peak_mib(&self) -> (f64, f64) {
        let peak = |pid: u32| process_figures(pid).map_or(0.0, |(_, kib)| kib as f64 / 1024.0);
        let worker: f64 = child_pids(self.transferd).into_iter().map(peak).sum();
        (peak(self.transferd), worker)
    }
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Work the stores did, counted: PostgreSQL's next transaction id (write transactions take
/// one each, read-only ones none) and WAL position, Redis's calls per command, and context
/// switches per process role. Cluster-wide, so nothing else may run during a benchmark.
#[derive(Default)]
struct Counts {
    next_xid: i64,
    wal_bytes: i64,
    redis_calls: BTreeMap<String, u64>,
    switches: BTreeMap<&'static str, u64>,
}

impl Counts {
    async fn now(ledger: &sqlx::PgPool, processes: &Processes) -> anyhow::Result<Counts> {
        let (next_xid, wal_bytes): (i64, i64) = sqlx::query_as(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
        )
        .fetch_one(ledger)
        .await?;
        let client = redis::Client::open("redis://127.0.0.1:6379")?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut redis)
            .await?;
        Ok(Counts {
            next_xid,
            wal_bytes,
            redis_calls: redis_calls(&info),
            switches: processes.switches(),
        })
    }
}

/// `calls` per command from Redis's `INFO commandstats` (`cmdstat_evalsha:calls=3,usec=…`).
/// Redis 7 counts the commands a script runs as well as the script's own call. A subcommand
/// (`cmdstat_script|load`) is named with a space: the name goes into a markdown table.
fn redis_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?;
            Some((name.replace('|', " "), calls.parse().ok()?))
        })
        .collect()
}

/// Voluntary and involuntary context switches of every thread of `pid`.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|line| {
                    let rest = line
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))?;
                    rest.trim().parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// What wrk's `done` hook printed.
struct Wrk {
    requests: u64,
    socket_errors: u64,
    non_2xx: u64,
    duration_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

impl Wrk {
    fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.non_2xx)
    }
}

fn run_wrk(script: &Path, connections: u32, url: &str, args: &[&str]) -> anyhow::Result<Wrk> {
    let threads = connections.min(2).to_string();
    let output = Command::new("wrk")
        .args(["-t", &threads, "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", seconds()), "--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .arg("--")
        .args(args)
        .output()
        .context("running wrk (scripts/bench.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(line) = text.lines().find_map(|line| line.strip_prefix("RESULT ")) else {
        bail!(
            "wrk printed no result: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    let [
        requests,
        socket_errors,
        non_2xx,
        duration_us,
        p50,
        p99,
        p999,
        _max,
    ] = numbers[..]
    else {
        bail!("unexpected wrk result: {line}");
    };
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Wrk {
        requests,
        socket_errors,
        non_2xx,
        duration_s: duration_us as f64 / 1e6,
        p50_ms: ms(p50),
        p99_ms: ms(p99),
        p999_ms: ms(p999),
    })
}

/// One row of the report: the load's figures and the CPU it cost.
fn row(label: &str, connections: u32, run: &Wrk, cpu: &BTreeMap<&str, f64>, rss_mib: (f64, f64)) {
    let ok = run.ok().max(1) as f64;
    let per = |role: &str| cpu.get(role).copied().unwrap_or(0.0) * 1e6 / ok;
    let total: f64 = cpu.values().sum::<f64>() * 1e6 / ok;
    println!(
        "| {label} | {connections} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        run.ok() as f64 / run.duration_s,
        run.p50_ms,
        run.p99_ms,
        run.p999_ms,
        run.non_2xx + run.socket_errors,
        total,
        per("transferd"),
        per("broker"),
        per("redis"),
        per("postgres"),
        rss_mib.0,
        rss_mib.1,
    );
}

/// What one run cost: CPU seconds by role, and the counted work.
struct Cost {
    cpu: BTreeMap<&'static str, f64>,
    counted: Counts,
}

/// Runs wrk and reports what the run cost.
async fn measured(
    ledger: &sqlx::PgPool,
    processes: &Processes,
    script: &Path,
    connections: u32,
    url: &str,
    args: &[&str],
) -> anyhow::Result<(Wrk, Cost)> {
    let tick = ticks_per_second();
    let counted_before = Counts::now(ledger, processes).await?;
    let before = processes.ticks();
    processes.reset_transferd_peaks();
    let run = run_wrk(script, connections, url, args)?;
    let after = processes.ticks();
    let counted_after = Counts::now(ledger, processes).await?;
    let cpu = after
        .iter()
        .map(|(role, ticks)| {
            let spent = ticks.saturating_sub(before.get(role).copied().unwrap_or(0));
            (*role, spent as f64 / tick)
        })
        .collect();
    let counted = Counts {
        next_xid: counted_after.next_xid - counted_before.next_xid,
        wal_bytes: counted_after.wal_bytes - counted_before.wal_bytes,
        redis_calls: counted_after
            .redis_calls
            .iter()
            .map(|(name, calls)| {
                let earlier = counted_before.redis_calls.get(name).copied().unwrap_or(0);
                (name.clone(), calls.saturating_sub(earlier))
            })
            .filter(|(_, calls)| *calls > 0)
            .collect(),
        switches: counted_after
            .switches
            .iter()
            .map(|(role, count)| {
                let earlier = counted_before.switches.get(role).copied().unwrap_or(0);
                (*role, count.saturating_sub(earlier))
            })
            .collect(),
    };
    Ok((run, Cost { cpu, counted }))
}

/// One row of the counted-work table: per accepted request.
fn counted_row(label: &str, connections: u32, run: &Wrk, counted: &Counts) -> String {
    let ok = run.ok().max(1) as f64;
    let per = |count: f64| count / ok;
    let redis: Vec<String> = counted
        .redis_calls
        .iter()
        .map(|(name, calls)| format!("{name} {:.2}", per(*calls as f64)))
        .collect();
    let switches = |role: &str| per(counted.switches.get(role).copied().unwrap_or(0) as f64);
    format!(
        "| {label} | {connections} | {:.2} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        per(counted.next_xid as f64),
        per(counted.wal_bytes as f64),
        redis.join(", "),
        switches("transferd"),
        switches("broker"),
        switches("redis"),
        switches("postgres"),
    )
}

/// Posts transfers at `rate_per_s` for the run's length (open loop) and returns the accepted
/// ones with their senders.
async fn post_at_rate(host: &Arc<Host>, rate_per_s: f64) -> anyhow::Result<Vec<(String, i64)>> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_per_s));
    let end = Instant::now() + Duration::from_secs(seconds());
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent: i64 = 0;
    while Instant::now() < end {
        ticker.tick().await;
        sent += 1;
        let sender = sent % USERS + 1;
        let host = Arc::clone(host);
        let accepted = Arc::clone(&accepted);
        tasks.spawn(async move {
            let body = json!({"sender_id": sender, "receiver_id": sender % USERS + 1,
                "amount": "0.01", "currency": "USD"});
            if let Ok(reply) = host.transfer(body).await
                && reply.status == 200
                && let Some(id) = reply.body["transaction_id"].as_str()
            {
                accepted.lock().await.push((id.to_string(), sender));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let accepted = std::mem::take(&mut *accepted.lock().await);
    Ok(accepted)
}

/// POST → settled latency of `ids` from the ledger: `created_at` is when transferd received the
/// request, `settled_at` when the settling transaction ran. Waits up to 60 s for them all.
async fn settle_latency(namespace: &Namespace, ids: &[uuid::Uuid]) -> anyhow::Result<(f64, f64)> {
    let ledger = namespace.ledger().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let settled: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transfers WHERE transaction_id = ANY($1)")
                .bind(ids)
                .fetch_one(&ledger)
                .await?;
        if settled as usize == ids.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{settled} of {} transfers settled after 60 s", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (p50, p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT extract(epoch FROM settled_at - created_at) * 1000 AS ms
               FROM transfers WHERE transaction_id = ANY($1)) AS latencies",
    )
    .bind(ids)
    .fetch_one(&ledger)
    .await?;
    Ok((p50, p99))
}

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/wrk")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let namespace = Namespace::new().await?;
    let broker_dir = std::env::temp_dir().join(format!("transferd-bench-broker-{}", namespace.id));
    std::fs::create_dir_all(&broker_dir)?;
    let broker_port = free_port();
    // TRANSFERD_BENCH_BROKER=memory measures without the broker's storage cost.
    let (storage, storage_name) = match std::env::var("TRANSFERD_BENCH_BROKER").as_deref() {
        Ok("memory") => (BrokerStorage::Memory, "memory"),
        _ => (BrokerStorage::Sqlite, "SQLite"),
    };
    let broker = spawn_tansu(broker_port, broker_port, storage, &broker_dir)?;
    // Tansu creates its schema on first start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut options = HostOptions::new(&namespace);
    options.kafka_brokers = format!("127.0.0.1:{broker_port}");
    // As the service runs by default, not as the tests run it.
    options.topic_partitions = None;
    // TRANSFERD_BENCH_ENV="NAME=value,NAME=value" runs transferd with other settings, to compare.
    let extra = std::env::var("TRANSFERD_BENCH_ENV").unwrap_or_default();
    for setting in extra.split(',').filter(|setting| !setting.is_empty()) {
        let (name, value) = setting
            .split_once('=')
            .with_context(|| format!("TRANSFERD_BENCH_ENV: {setting:?} is not NAME=value"))?;
        options
            .extra_env
            .push((name.to_string(), value.to_string()));
    }
    let host = Arc::new(Host::start_with(&namespace, options).await?);
    for user in 1..=USERS {
        host.deposit(user, "USD", "1000000").await?;
    }
    let work = tempdir(&namespace.id)?;
    let tokens = work.join("tokens");
    let lines: Vec<String> = (1..=USERS).map(auth::user_token).collect();
    std::fs::write(&tokens, lines.join("\n") + "\n")?;
    let processes = Processes {
        transferd: host.pid(),
        broker: broker.id(),
    };
    let tokens_arg = tokens.to_string_lossy().into_owned();
    let url = host.base_url.clone();

    println!(
        "\nEach run {} s; {USERS} funded users; auth and idempotency keys on; {storage_name} broker; settlement in serve's worker process (its CPU counts as transferd's); peak RSS is each run's own{}.\n",
        seconds(),
        if extra.is_empty() {
            String::new()
        } else {
            format!("; {extra}")
        }
    );
    println!(
        "| request | connections | ok/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/ok all | transferd | broker | redis | postgres | serve peak RSS MiB | worker peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let post_script = bench_dir().join("post.lua");
    let ledger = namespace.ledger().await?;
    let mut counted_rows = Vec::new();
    let mut rate_at_64 = 0.0;
    for connections in connection_counts() {
        let prefix = format!("{}-{connections}", namespace.id);
        let (run, cost) = measured(
            &ledger,
            &processes,
            &post_script,
            connections,
            &url,
            &[&tokens_arg, &prefix],
        )
        .await?;
        if connections == 64 {
            rate_at_64 = run.ok() as f64 / run.duration_s;
        }
        row(
            "POST /transfers",
            connections,
            &run,
            &cost.cpu,
            processes.transferd_peak_mib(),
        );
        counted_rows.push(counted_row(
            "POST /transfers",
            connections,
            &run,
            &cost.counted,
        ));
    }

    if post_only() {
        print_counted(&counted_rows);
        drop(host);
        drop(broker);
        let _ = std::fs::remove_dir_all(&broker_dir);
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    let rate = (rate_at_64 / 2.0).max(10.0);
    let accepted = post_at_rate(&host, rate).await?;
    let ids: Vec<uuid::Uuid> = accepted
        .iter()
        .filter_map(|(id, _)| uuid::Uuid::parse_str(id).ok())
        .collect();
    let (p50, p99) = settle_latency(&namespace, &ids).await?;

    let transfers = work.join("transfers");
    let lines: Vec<String> = accepted
        .iter()
        .map(|(id, sender)| format!("{id} {}", auth::user_token(*sender)))
        .collect();
    std::fs::write(&transfers, lines.join("\n") + "\n")?;
    let (run, cost) = measured(
        &ledger,
        &processes,
        &bench_dir().join("get.lua"),
        64,
        &url,
        &[&transfers.to_string_lossy()],
    )
    .await?;
    row(
        "GET /transfers/{id}",
        64,
        &run,
        &cost.cpu,
        processes.transferd_peak_mib(),
    );
    counted_rows.push(counted_row("GET /transfers/{id}", 64, &run, &cost.counted));
    print_counted(&counted_rows);
    println!(
        "\nPOST → settled at {rate:.0} transfers/s (half the 64-connection rate), {} transfers: p50 {p50:.1} ms, p99 {p99:.1} ms",
        ids.len()
    );
    // The host stops before the broker it talks to (dropped in that order on every path).
    drop(host);
    drop(broker);
    let _ = std::fs::remove_dir_all(&broker_dir);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// True when only the POST runs are wanted (`TRANSFERD_BENCH_POST_ONLY=1`).
fn post_only() -> bool {
    std::env::var("TRANSFERD_BENCH_POST_ONLY").is_ok_and(|value| value == "1")
}

/// The table of the work each request cost, counted.
fn print_counted(rows: &[String]) {
    println!(
        "\nWork per accepted request, counted (PostgreSQL and Redis counts are the whole server's: nothing else may run):\n"
    );
    println!(
        "| request | connections | PostgreSQL write transactions | WAL bytes | Redis calls by command (Redis 7 counts a script's own commands too) | context switches: transferd | broker | redis | postgres |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for line in rows {
        println!("{line}");
    }
}

fn tempdir(name: &str) -> anyhow::Result<PathBuf> {
    let directory = std::env::temp_dir().join(format!("transferd-bench-http-{name}"));
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}
