//! The standard transfer logic plus one rule written with `account-info` (WIT 0.3.0): a sender
//! makes at most [`MAX_PER_MINUTE`] transfers in any 60 seconds. The host only counts; the
//! rule is this guest's, so a new rule is a new guest, not a host change.

use transferd_guest::logic::Rejection;
use transferd_guest::rules::ValidTransfer;
use transferd_guest::spending::{self, Account, AccountRule};

/// Transfers one sender may make in 60 seconds.
pub const MAX_PER_MINUTE: u32 = 3;

/// The standard account rules, then the velocity rule.
pub const RULES: &[AccountRule] = &[spending::within_limits, at_most_per_minute];

/// Refuses the transfer that would be the sender's `MAX_PER_MINUTE + 1`th within a minute.
pub fn at_most_per_minute(account: &Account, transfer: &ValidTransfer) -> Result<(), Rejection> {
    if account.today.last_minute_count >= MAX_PER_MINUTE {
        return Err(Rejection::Forbidden(format!(
            "account {} may make at most {MAX_PER_MINUTE} transfers a minute",
            transfer.sender_id
        )));
    }
    Ok(())
}

#[cfg(target_arch = "wasm32")]
mod component {
    use transferd_guest::component::{Guest, HostImports, handle_ruled, types};
    use transferd_guest::rules::STANDARD;

    struct Velocity;

    impl Guest for Velocity {
        fn initiate_transfer(
            ctx: types::RequestContext,
            request: types::TransferRequest,
        ) -> Result<types::Accepted, types::Rejection> {
            handle_ruled(&STANDARD, super::RULES, &mut HostImports, ctx, request)
        }
    }

    transferd_guest::component::export_transfer_logic!(Velocity with_types_in transferd_guest::component);
}
