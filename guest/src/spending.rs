//! Spending limits as rules: what `account-info` (WIT 0.3.0) tells of the sender, and the
//! standard guest's checks on it, written apart so another guest can add its own.

use crate::logic::Rejection;
use crate::money::format_minor;
use crate::rules::ValidTransfer;

/// The WIT `account-info.account-limits`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountLimits {
    pub single_max_minor: Option<i64>,
    pub daily_max_minor: Option<i64>,
    pub overdraft_minor: i64,
}

/// The WIT `account-info.recent-outgoing`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentOutgoing {
    pub outgoing_minor: i64,
    pub outgoing_count: u32,
    pub last_minute_count: u32,
}

/// The WIT `account-info.account`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub available: Option<i64>,
    pub limits: AccountLimits,
    pub metadata: Vec<(String, String)>,
    pub today: RecentOutgoing,
}

/// A rule over the sender's account, checked after the balance and before publishing.
pub type AccountRule = fn(&Account, &ValidTransfer) -> Result<(), Rejection>;

/// The standard guest's account rules.
pub const STANDARD_RULES: &[AccountRule] = &[within_limits];

/// The transfer fits the sender's single-transfer and daily limits; exactly at a limit fits.
pub fn within_limits(account: &Account, transfer: &ValidTransfer) -> Result<(), Rejection> {
    let limits = &account.limits;
    if let Some(single_max) = limits.single_max_minor
        && transfer.amount_minor > single_max
    {
        return Err(Rejection::Forbidden(format!(
            "account {} may send at most {} in one transfer",
            transfer.sender_id,
            money(single_max, transfer)
        )));
    }
    if let Some(daily_max) = limits.daily_max_minor
        && account
            .today
            .outgoing_minor
            .saturating_add(transfer.amount_minor)
            > daily_max
    {
        return Err(Rejection::Forbidden(format!(
            "account {} may send at most {} a day and has sent {} today",
            transfer.sender_id,
            money(daily_max, transfer),
            money(account.today.outgoing_minor, transfer)
        )));
    }
    Ok(())
}

/// `minor` of the transfer's currency as decimal text with its code ("100.00 USD").
pub fn money(minor: i64, transfer: &ValidTransfer) -> String {
    format!(
        "{} {}",
        format_minor(minor, transfer.exponent),
        transfer.currency
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(amount_minor: i64) -> ValidTransfer {
        ValidTransfer {
            sender_id: 1,
            receiver_id: 2,
            amount_minor,
            exponent: 2,
            currency: "USD".into(),
            description: None,
            metadata: None,
            pending_for_s: None,
        }
    }

    fn limited(single: Option<i64>, daily: Option<i64>, sent_today: i64) -> Account {
        Account {
            available: Some(1_000_000),
            limits: AccountLimits {
                single_max_minor: single,
                daily_max_minor: daily,
                overdraft_minor: 0,
            },
            metadata: vec![],
            today: RecentOutgoing {
                outgoing_minor: sent_today,
                outgoing_count: 1,
                last_minute_count: 1,
            },
        }
    }

    #[test]
    fn no_limits_no_refusal() {
        assert_eq!(
            within_limits(&limited(None, None, i64::MAX), &transfer(i64::MAX)),
            Ok(())
        );
    }

    #[test]
    fn exactly_at_a_limit_fits_one_minor_unit_over_does_not() {
        assert_eq!(
            within_limits(&limited(Some(100), None, 0), &transfer(100)),
            Ok(())
        );
        assert_eq!(
            within_limits(&limited(Some(100), None, 0), &transfer(101)),
            Err(Rejection::Forbidden(
                "account 1 may send at most 1.00 USD in one transfer".into()
            ))
        );
        assert_eq!(
            within_limits(&limited(None, Some(500), 400), &transfer(100)),
            Ok(())
        );
        assert_eq!(
            within_limits(&limited(None, Some(500), 401), &transfer(100)),
            Err(Rejection::Forbidden(
                "account 1 may send at most 5.00 USD a day and has sent 4.01 USD today".into()
            ))
        );
    }
}
