//! The operator's librdkafka properties (security, SASL, tuning), from a file and from
//! `TRANSFERD_KAFKA_{CLIENT,PRODUCER,CONSUMER}_<NAME>` variables, refusing those transferd sets
//! itself for correctness. Values may be secrets (`sasl.password`): none is ever printed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

/// Variables that set a property of every client, of the producer, of the consumers.
pub const CLIENT_PREFIX: &str = "TRANSFERD_KAFKA_CLIENT_";
pub const PRODUCER_PREFIX: &str = "TRANSFERD_KAFKA_PRODUCER_";
pub const CONSUMER_PREFIX: &str = "TRANSFERD_KAFKA_CONSUMER_";

/// Largest properties file read: far above any real one, so a wrong path (a log file) is
/// refused rather than read whole.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The properties transferd sets itself, each with why an operator may not: the guarantees
/// of the transfer log rest on them (`stores::kafka` sets them), or a setting of transferd's
/// own already says them. librdkafka's aliases are listed beside the names.
const REFUSED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set it with TRANSFERD_KAFKA_BROKERS"),
    (
        "metadata.broker.list",
        "set it with TRANSFERD_KAFKA_BROKERS",
    ),
    (
        "acks",
        "a transfer is accepted only once every in-sync replica has it (acks=all)",
    ),
    (
        "request.required.acks",
        "a transfer is accepted only once every in-sync replica has it (acks=all)",
    ),
    (
        "enable.idempotence",
        "set it with TRANSFERD_KAFKA_IDEMPOTENCE",
    ),
    (
        "transactional.id",
        "transferd's producer is not transactional; settlement applies each transfer once by its id",
    ),
    (
        "message.timeout.ms",
        "set it with TRANSFERD_KAFKA_TIMEOUT_MS: a delivery report must be final before the request gives up",
    ),
    (
        "delivery.timeout.ms",
        "set it with TRANSFERD_KAFKA_TIMEOUT_MS: a delivery report must be final before the request gives up",
    ),
    ("linger.ms", "set it with TRANSFERD_KAFKA_LINGER_MS"),
    (
        "queue.buffering.max.ms",
        "set it with TRANSFERD_KAFKA_LINGER_MS",
    ),
    (
        "isolation.level",
        "settlement reads only committed messages (read_committed)",
    ),
    (
        "enable.auto.commit",
        "settlement keeps its positions in the ledger and commits nothing to the broker",
    ),
    (
        "enable.auto.offset.store",
        "settlement keeps its positions in the ledger and commits nothing to the broker",
    ),
    (
        "group.id",
        "settlement assigns itself its partitions; the name follows TRANSFERD_TOPIC_PREFIX",
    ),
    (
        "auto.offset.reset",
        "a position past the log's end means the broker lost its log, which is read from its start (earliest)",
    ),
    (
        "fetch.wait.max.ms",
        "set it with TRANSFERD_SETTLEMENT_FETCH_WAIT_MS",
    ),
];

/// Which client a property set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaRole {
    Producer,
    Consumer,
    Admin,
}

#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    #[error("{origin} sets the Kafka property {property}, which transferd sets itself: {why}")]
    Refused {
        origin: String,
        property: String,
        why: &'static str,
    },
    #[error("{origin} is not a property: it must name one after the prefix")]
    NoName { origin: String },
    #[error("{origin} is not valid UTF-8")]
    NotUnicode { origin: String },
    #[error("line {line} of the Kafka properties file {file} is not `name=value`")]
    BadLine { file: String, line: usize },
    #[error("cannot read the Kafka properties file {file}: {reason}")]
    Unreadable { file: String, reason: String },
}

/// The operator's properties by where they apply; later sets win over earlier ones.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties {
    file: BTreeMap<String, String>,
    client: BTreeMap<String, String>,
    producer: BTreeMap<String, String>,
    consumer: BTreeMap<String, String>,
}

/// Names only: the values may be passwords.
impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaProperties")
            .field("file", &self.file.keys())
            .field("client", &self.client.keys())
            .field("producer", &self.producer.keys())
            .field("consumer", &self.consumer.keys())
            .finish()
    }
}

impl KafkaProperties {
    /// The properties of the file (when given) and of the variables in `environment`, each
    /// checked against the properties transferd sets itself.
    pub fn read(
        environment: impl IntoIterator<Item = (OsString, OsString)>,
        file: Option<&Path>,
    ) -> Result<KafkaProperties, PropertiesError> {
        let mut properties = KafkaProperties::default();
        if let Some(file) = file {
            properties.file = read_file(file)?;
        }
        for (name, value) in environment {
            let Some(name) = name.to_str() else {
                continue;
            };
            let (set, rest) = if let Some(rest) = name.strip_prefix(CLIENT_PREFIX) {
                (&mut properties.client, rest)
            } else if let Some(rest) = name.strip_prefix(PRODUCER_PREFIX) {
                (&mut properties.producer, rest)
            } else if let Some(rest) = name.strip_prefix(CONSUMER_PREFIX) {
                (&mut properties.consumer, rest)
            } else {
                continue;
            };
            let origin = name.to_string();
            if rest.is_empty() {
                return Err(PropertiesError::NoName { origin });
            }
            let property = rest.to_ascii_lowercase().replace('_', ".");
            check(&property, &origin)?;
            let value = value
                .into_string()
                .map_err(|_| PropertiesError::NotUnicode { origin })?;
            set.insert(property, value);
        }
        Ok(properties)
    }

    /// The properties of one kind of client, in the order they apply: the file's, then every
    /// client's, then the kind's own.
    pub fn for_role(&self, role: KafkaRole) -> Vec<(&str, &str)> {
        let own = match role {
            KafkaRole::Producer => Some(&self.producer),
            KafkaRole::Consumer => Some(&self.consumer),
            KafkaRole::Admin => None,
        };
        [Some(&self.file), Some(&self.client), own]
            .into_iter()
            .flatten()
            .flat_map(|set| set.iter())
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }
}

/// Refuses a property transferd sets itself; `origin` says where it was given.
fn check(property: &str, origin: &str) -> Result<(), PropertiesError> {
    match REFUSED.iter().find(|(name, _)| *name == property) {
        Some((_, why)) => Err(PropertiesError::Refused {
            origin: origin.to_string(),
            property: property.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, PropertiesError> {
    let file = path.display().to_string();
    let unreadable = |reason: String| PropertiesError::Unreadable {
        file: file.clone(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|error| unreadable(error.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "it is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|error| unreadable(error.to_string()))?;
    parse(&text, &file)
}

/// `name=value` lines; blank lines and lines starting with `#` are skipped, and spaces around
/// the name and the value are not part of them.
pub fn parse(text: &str, file: &str) -> Result<BTreeMap<String, String>, PropertiesError> {
    let mut properties = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad_line = || PropertiesError::BadLine {
            file: file.to_string(),
            line: index + 1,
        };
        let (name, value) = line.split_once('=').ok_or_else(bad_line)?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad_line());
        }
        check(name, &format!("line {} of {file}", index + 1))?;
        properties.insert(name.to_string(), value.trim().to_string());
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect()
    }

    #[test]
    fn variables_name_properties_and_the_kind_of_client() {
        let properties = KafkaProperties::read(
            environment(&[
                ("TRANSFERD_KAFKA_CLIENT_SECURITY_PROTOCOL", "SASL_SSL"),
                ("TRANSFERD_KAFKA_PRODUCER_COMPRESSION_TYPE", "zstd"),
                ("TRANSFERD_KAFKA_CONSUMER_FETCH_MIN_BYTES", "1"),
                // transferd's own settings are not properties.
                ("TRANSFERD_KAFKA_BROKERS", "broker:9092"),
                ("TRANSFERD_KAFKA_LINGER_MS", "5"),
                ("PATH", "/bin"),
            ]),
            None,
        )
        .expect("valid properties");
        assert_eq!(
            properties.for_role(KafkaRole::Producer),
            [
                ("security.protocol", "SASL_SSL"),
                ("compression.type", "zstd")
            ]
        );
        assert_eq!(
            properties.for_role(KafkaRole::Consumer),
            [("security.protocol", "SASL_SSL"), ("fetch.min.bytes", "1")]
        );
        assert_eq!(
            properties.for_role(KafkaRole::Admin),
            [("security.protocol", "SASL_SSL")]
        );
    }

    #[test]
    fn a_property_transferd_relies_on_is_refused_by_name_with_why() {
        for (name, property) in [
            ("TRANSFERD_KAFKA_PRODUCER_ACKS", "acks"),
            (
                "TRANSFERD_KAFKA_CLIENT_ENABLE_IDEMPOTENCE",
                "enable.idempotence",
            ),
            (
                "TRANSFERD_KAFKA_PRODUCER_TRANSACTIONAL_ID",
                "transactional.id",
            ),
            (
                "TRANSFERD_KAFKA_CONSUMER_ISOLATION_LEVEL",
                "isolation.level",
            ),
            (
                "TRANSFERD_KAFKA_CONSUMER_ENABLE_AUTO_COMMIT",
                "enable.auto.commit",
            ),
        ] {
            let error =
                KafkaProperties::read(environment(&[(name, "x")]), None).expect_err("refused");
            let message = error.to_string();
            assert!(
                message.starts_with(&format!(
                    "{name} sets the Kafka property {property}, which transferd sets itself: "
                )),
                "{message}"
            );
        }
        let error = parse("acks=1\n", "kafka.properties").expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("line 1 of kafka.properties sets the Kafka property acks"),
            "{error}"
        );
    }

    #[test]
    fn the_file_takes_comments_and_blank_lines_and_names_a_bad_line() {
        let text = "# the cluster\n\nsecurity.protocol = SSL\n  ssl.ca.location=/etc/ca.pem\n\
                    sasl.password=a=b\n";
        let parsed = parse(text, "f").expect("valid");
        assert_eq!(parsed["security.protocol"], "SSL");
        assert_eq!(parsed["ssl.ca.location"], "/etc/ca.pem");
        assert_eq!(parsed["sasl.password"], "a=b", "only the first = splits");
        for (bad, line) in [("# ok\nnot a property\n", 2), ("=value\n", 1), ("a b=c", 1)] {
            let error = parse(bad, "f").expect_err("a bad line");
            assert_eq!(
                error.to_string(),
                format!("line {line} of the Kafka properties file f is not `name=value`")
            );
        }
    }

    #[test]
    fn the_environment_wins_over_the_file_and_no_value_is_printed() {
        let file =
            std::env::temp_dir().join(format!("transferd-kafka-properties-{}", std::process::id()));
        std::fs::write(&file, "sasl.username=from-file\nsasl.password=hunter2\n")
            .expect("writing the file");
        let read = KafkaProperties::read(
            environment(&[("TRANSFERD_KAFKA_CLIENT_SASL_USERNAME", "from-env")]),
            Some(&file),
        );
        std::fs::remove_file(&file).expect("removing the file");
        let properties = read.expect("valid");
        let admin = properties.for_role(KafkaRole::Admin);
        let last = |name: &str| {
            admin
                .iter()
                .rev()
                .find(|(key, _)| *key == name)
                .map(|p| p.1)
        };
        assert_eq!(last("sasl.username"), Some("from-env"));
        assert_eq!(last("sasl.password"), Some("hunter2"));
        assert!(!format!("{properties:?}").contains("hunter2"));
        let missing = KafkaProperties::read(Vec::new(), Some(Path::new("/nonexistent/k.props")));
        assert!(matches!(missing, Err(PropertiesError::Unreadable { .. })));
    }
}
