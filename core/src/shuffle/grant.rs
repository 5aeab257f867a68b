//! Capabilities for shuffle data: an executor serves a map output only for a ticket that
//! carries a grant the leading scheduler signed — for one job and stage, until a time — with
//! the cluster's ticket key (HMAC-SHA256). Without the key nobody can make a grant, and a
//! grant for one job's stage opens no other job's or stage's data.
//!
//! The key is created once per cluster by the first leader and kept in the metadata store
//! (`secrets/ticket-key`); executors read it there (with etcd) or get it when they register.

use std::fmt;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{EmberError, Result};

/// Bytes of a ticket key.
pub const TICKET_KEY_BYTES: usize = 32;

/// The cluster's key for signing shuffle grants.
#[derive(Clone)]
pub struct TicketKey {
    bytes: [u8; TICKET_KEY_BYTES],
    key: hmac::Key,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(<redacted>)")
    }
}

/// The ticket key as an executor holds it: learnt when it joins the cluster, replaced when
/// it joins again (a scheduler without etcd makes a new key when it restarts).
#[derive(Debug, Clone, Default)]
pub struct SharedTicketKey(std::sync::Arc<parking_lot::RwLock<Option<TicketKey>>>);

impl SharedTicketKey {
    pub fn set(&self, key: TicketKey) {
        *self.0.write() = Some(key);
    }

    pub fn get(&self) -> Option<TicketKey> {
        self.0.read().clone()
    }
}

/// What a ticket's grant opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub job_id: &'a str,
    pub stage_id: u32,
}

impl TicketKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; TICKET_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| EmberError::Internal("no randomness for a ticket key".into()))?;
        Ok(Self::from_array(bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; TICKET_KEY_BYTES] = bytes.try_into().map_err(|_| {
            EmberError::InvalidMessage(format!(
                "a ticket key has {TICKET_KEY_BYTES} bytes, this one {}",
                bytes.len()
            ))
        })?;
        Ok(Self::from_array(bytes))
    }

    fn from_array(bytes: [u8; TICKET_KEY_BYTES]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            bytes,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// A key for another use (`purpose`), derived from this one: HMAC(key, purpose).
    pub fn derive(&self, purpose: &str) -> [u8; TICKET_KEY_BYTES] {
        let tag = hmac::sign(&self.key, purpose.as_bytes());
        tag.as_ref().try_into().expect("HMAC-SHA256 has 32 bytes")
    }

    /// A grant for `scope` until `expires_ms` (Unix milliseconds): `{expires}.{hex mac}`.
    pub fn grant(&self, scope: Scope<'_>, expires_ms: u64) -> String {
        let tag = hmac::sign(&self.key, &signed_text(scope, expires_ms));
        format!("{expires_ms}.{}", hex::encode(tag.as_ref()))
    }

    /// Whether `grant` opens `scope` at `now_ms`; the error says why not.
    pub fn verify(&self, grant: &str, scope: Scope<'_>, now_ms: u64) -> Result<(), GrantError> {
        let (expires, mac) = grant.split_once('.').ok_or(GrantError::Malformed)?;
        let expires_ms: u64 = expires.parse().map_err(|_| GrantError::Malformed)?;
        let mac = unhex(mac).ok_or(GrantError::Malformed)?;
        hmac::verify(&self.key, &signed_text(scope, expires_ms), &mac)
            .map_err(|_| GrantError::Forged)?;
        if now_ms > expires_ms {
            return Err(GrantError::Expired);
        }
        Ok(())
    }
}

/// Why a grant was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the ticket carries no grant, or a malformed one")]
    Malformed,
    #[error("the ticket's grant was not issued by this cluster for this job and stage")]
    Forged,
    #[error("the ticket's grant has expired")]
    Expired,
}

fn signed_text(scope: Scope<'_>, expires_ms: u64) -> Vec<u8> {
    // Lengths first, so that no two scopes sign the same text.
    format!(
        "ember-shuffle-grant/v1/{}:{}/{}/{expires_ms}",
        scope.job_id.len(),
        scope.job_id,
        scope.stage_id
    )
    .into_bytes()
}

/// Lowercase hex only: one spelling per grant (the fuzzer found `E` for `e` accepted).
fn unhex(text: &str) -> Option<Vec<u8>> {
    let canonical = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    canonical.then(|| hex::decode(text).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: Scope<'static> = Scope {
        job_id: "job-1",
        stage_id: 2,
    };

    #[test]
    fn a_grant_opens_its_scope_until_it_expires() {
        let key = TicketKey::generate().unwrap();
        let grant = key.grant(JOB, 1_000);
        assert_eq!(key.verify(&grant, JOB, 999), Ok(()));
        assert_eq!(key.verify(&grant, JOB, 1_000), Ok(()));
        assert_eq!(key.verify(&grant, JOB, 1_001), Err(GrantError::Expired));
    }

    #[test]
    fn a_grant_opens_nothing_else() {
        let key = TicketKey::generate().unwrap();
        let grant = key.grant(JOB, 1_000);
        let other_job = Scope {
            job_id: "job-2",
            ..JOB
        };
        let other_stage = Scope { stage_id: 3, ..JOB };
        let cases = [
            (grant.clone(), other_job, GrantError::Forged),
            (grant.clone(), other_stage, GrantError::Forged),
            // Moving the expiry forward breaks the signature.
            (grant.replacen("1000", "9000", 1), JOB, GrantError::Forged),
            (
                TicketKey::generate().unwrap().grant(JOB, 1_000),
                JOB,
                GrantError::Forged,
            ),
            (String::new(), JOB, GrantError::Malformed),
            ("1000.zz".to_string(), JOB, GrantError::Malformed),
            ("x.00".to_string(), JOB, GrantError::Malformed),
            ("1000.é0".to_string(), JOB, GrantError::Malformed),
            // Found by tests/fuzz.rs: the same MAC spelt in uppercase hex.
            (grant.to_uppercase(), JOB, GrantError::Malformed),
        ];
        for (grant, scope, expected) in cases {
            assert_eq!(key.verify(&grant, scope, 0), Err(expected), "{grant}");
        }
    }

    #[test]
    fn keys_round_trip_and_hide_in_logs() {
        let key = TicketKey::generate().unwrap();
        let again = TicketKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(again.verify(&key.grant(JOB, 5), JOB, 0), Ok(()));
        assert!(TicketKey::from_bytes(&[1, 2, 3]).is_err());
        assert_eq!(format!("{key:?}"), "TicketKey(<redacted>)");
    }
}
