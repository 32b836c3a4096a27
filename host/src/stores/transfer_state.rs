//! Where a transfer stands, in the ledger's words: its kind, its status and why it was
//! rejected. Each is an enum whose names are written once, in `as_str`; the ledger's TEXT
//! columns read and write them through it (a name this version does not know is an error, not
//! a panic), and the API serializes the same names.

use serde::Serialize;
use utoipa::ToSchema;

/// What moved the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Between two users.
    Transfer,
    /// From the system account to a user, by an admin.
    Deposit,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Not moved yet: accepted and on its way to the ledger, or, for a two-phase transfer,
    /// reserved in the ledger until it is posted, voided or expires.
    Pending,
    /// Settled: the money moved.
    Completed,
    /// Settled as refused: nothing moved (`reason` says why).
    Rejected,
    /// A two-phase transfer whose posted amount moved (the rest, if any, was released).
    Posted,
    /// A two-phase transfer released by its sender or an admin: nothing moved.
    Voided,
    /// A two-phase transfer released because it was neither posted nor voided in time.
    Expired,
}

/// Why a transfer was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InsufficientFunds,
    ReceiverNotFound,
    /// The message breaks a rule no guest may break (ids, amount); a defect upstream.
    InvalidMessage,
    /// The receiver's balance would leave the range of a 64-bit integer.
    BalanceOverflow,
    /// Settlement could not apply the message and set it aside (`settlement::quarantine`);
    /// answered for a quarantined transfer, never written to the ledger.
    Unprocessable,
    /// Another transfer of its atomic batch was rejected, so none of them applied.
    BatchFailed,
}

impl TransferKind {
    pub const ALL: [TransferKind; 2] = [TransferKind::Transfer, TransferKind::Deposit];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Transfer => "transfer",
            TransferKind::Deposit => "deposit",
        }
    }
}

impl TransferStatus {
    pub const ALL: [TransferStatus; 6] = [
        TransferStatus::Pending,
        TransferStatus::Completed,
        TransferStatus::Rejected,
        TransferStatus::Posted,
        TransferStatus::Voided,
        TransferStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Pending => "pending",
            TransferStatus::Completed => "completed",
            TransferStatus::Rejected => "rejected",
            TransferStatus::Posted => "posted",
            TransferStatus::Voided => "voided",
            TransferStatus::Expired => "expired",
        }
    }
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::InsufficientFunds,
        Reason::ReceiverNotFound,
        Reason::InvalidMessage,
        Reason::BalanceOverflow,
        Reason::Unprocessable,
        Reason::BatchFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::ReceiverNotFound => "receiver_not_found",
            Reason::InvalidMessage => "invalid_message",
            Reason::BalanceOverflow => "balance_overflow",
            Reason::Unprocessable => "unprocessable",
            Reason::BatchFailed => "batch_failed",
        }
    }
}

/// A name the ledger holds that this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} is not one this version knows")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// The TEXT column mapping of an enum above: read and written as its `as_str` name, looked
/// up among its `ALL` when read.
macro_rules! stored_as_text {
    ($type:ty, $what:literal) => {
        impl TryFrom<&str> for $type {
            type Error = UnknownName;

            fn try_from(name: &str) -> Result<Self, UnknownName> {
                <$type>::ALL
                    .into_iter()
                    .find(|known| known.as_str() == name)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        name: name.to_string(),
                    })
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $type {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $type {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $type {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $type {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let name = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok(<$type>::try_from(name)?)
            }
        }
    };
}

stored_as_text!(TransferKind, "kind");
stored_as_text!(TransferStatus, "status");
stored_as_text!(Reason, "reason");

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name reads back as its value, and the API serializes the same name.
    fn round_trips<T>(all: &[T], name: fn(T) -> &'static str)
    where
        T: Copy + PartialEq + std::fmt::Debug + Serialize + for<'a> TryFrom<&'a str>,
    {
        for value in all.iter().copied() {
            assert_eq!(T::try_from(name(value)).ok(), Some(value));
            assert_eq!(serde_json::to_value(value).ok(), Some(name(value).into()));
        }
    }

    #[test]
    fn names_read_back_and_serialize_as_the_ledger_stores_them() {
        round_trips(&TransferKind::ALL, TransferKind::as_str);
        round_trips(&TransferStatus::ALL, TransferStatus::as_str);
        round_trips(&Reason::ALL, Reason::as_str);
    }

    #[test]
    fn an_unknown_name_is_an_error() {
        assert_eq!(
            TransferStatus::try_from("settled"),
            Err(UnknownName {
                what: "status",
                name: "settled".into()
            })
        );
        assert!(TransferKind::try_from("Transfer").is_err());
        assert!(Reason::try_from("").is_err());
    }
}
