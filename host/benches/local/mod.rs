//! What the benchmarks that talk to PostgreSQL share: the local services' settings.

use transferd::config::Services;

/// The local services, with `database` as the ledger and up to `connections` to it.
pub fn services(database: &str, connections: u32) -> Services {
    Services {
        database_url: format!("postgres://postgres@127.0.0.1:5432/{database}"),
        redis_url: "redis://127.0.0.1:6379".into(),
        redis_prefix: String::new(),
        kafka_brokers: "127.0.0.1:9092".into(),
        topic_prefix: String::new(),
        topic_partitions: 1,
        kafka_timeout_ms: 5_000,
        kafka_linger_ms: 1,
        database_timeout_ms: 60_000,
        database_connections: connections,
        redis_timeout_ms: 1_000,
        drain_timeout_ms: 10_000,
        redis_ca_file: None,
        redis_client_cert_file: None,
        redis_client_key_file: None,
        kafka_properties_file: None,
        // The local broker (Tansu) takes neither an idempotent producer nor a replication
        // factor of -1 (docs/operations.md).
        kafka_idempotence: false,
        create_topics: true,
        topic_replication_factor: 1,
        topic_min_insync_replicas: None,
    }
}
