//! The admin requests, root's only (the dispatch in
//! [`Service::handle`](crate::service::Service::handle) refuses everyone
//! else): one function per request. `ConsumeOtp` is not here: it is an
//! OTP check, and runs the login pipeline ([`crate::login`]).
//!
//! Whatever uses the backend runs on the device's thread when the backend
//! is a YubiHSM (one exchange at a time, in order), else on the blocking
//! pool; whatever changes counters goes through the database's queue and
//! is committed before the answer.

use std::sync::Arc;

use ykhsm_core::backend::{BackendError, Unlock};
use ykhsm_core::keyhandle::KeyHandle;
use ykhsm_core::ksm;
use ykhsm_core::otp::{Otp, PublicId, Token, YubiKeySecrets};
use ykhsm_core::{Nonce, YubiKeyAead};
use ykhsm_proto::message::{AEAD_LEN, FINGERPRINT_LEN, SECRETS_LEN};
use ykhsm_proto::{CounterRecord, Response, Status};
use zeroize::Zeroizing;

use crate::audit::pid;
use crate::error::Error;
use crate::log::escape;
use crate::service::{Peer, Service};

/// A fingerprint of an AEAD, as counter resets bind them.
type Fingerprint = [u8; FINGERPRINT_LEN];

/// `ykadmin decrypt`: yubikey-ksm's answer line for the OTP, without
/// consuming it.
pub async fn decrypt(service: &Arc<Service>, otp: Zeroizing<String>) -> Response {
    let this = Arc::clone(service);
    service
        .on_device(move || {
            let backend = this.backend();
            let public_id = Otp::parse(&otp)
                .map(|o| o.public_id().to_string())
                .unwrap_or_default();
            let r = ksm::decrypt(&this.store, backend.as_ref(), &otp);
            if let Err(e) = &r {
                this.log.debug(&format!("decrypt pubid={public_id}: {e}"));
            }
            Response::Decrypted {
                line: ksm::ksm_line(&r),
                public_id,
            }
        })
        .await
}

/// `import-ykksm`, `generate`: a YubiKey's secrets sealed into an AEAD.
pub async fn wrap_secrets(
    service: &Arc<Service>,
    key_handle: u32,
    nonce: [u8; 6],
    secrets: Zeroizing<[u8; SECRETS_LEN]>,
) -> Response {
    let this = Arc::clone(service);
    service
        .on_device(move || {
            let sec = YubiKeySecrets::from_plaintext(&secrets);
            match this
                .backend()
                .wrap_secrets(KeyHandle(key_handle), &Nonce(nonce), &sec)
            {
                Ok(YubiKeyAead(aead)) => Response::Wrapped { aead },
                Err(e) => Error::Backend(e).to_response(),
            }
        })
        .await
}

/// `aeads check`, `import-ykksm`: does the AEAD open under the key handle?
pub async fn check_aead(
    service: &Arc<Service>,
    key_handle: u32,
    nonce: [u8; 6],
    aead: [u8; AEAD_LEN],
) -> Response {
    let this = Arc::clone(service);
    service
        .on_device(move || {
            // Opening the AEAD is the check; a token of zeros then fails
            // as an OTP (or, once in 2^128, decodes), either way after the
            // AEAD authenticated.
            let token = Token::from_bytes([0; 16]);
            let status = match this.backend().decode_otp(
                KeyHandle(key_handle),
                &Nonce(nonce),
                &YubiKeyAead(aead),
                &token,
            ) {
                Ok(_) | Err(BackendError::OtpInvalid) => Status::Ok,
                Err(BackendError::AeadInvalid { .. }) => Status::BadOtp,
                Err(e) => return Error::Backend(e).to_response(),
            };
            Response::Verdict { status }
        })
        .await
}

/// `ykadmin hsm unlock`: hands the secrets to the backend, the master key
/// first. Neither is kept or logged.
pub async fn hsm_unlock(
    service: &Arc<Service>,
    master_key: Zeroizing<Vec<u8>>,
    otp: Zeroizing<String>,
    peer: &Peer,
) -> Response {
    if master_key.is_empty() && otp.is_empty() {
        return Error::NothingToUnlock.to_response();
    }
    let admin = if otp.is_empty() {
        None
    } else {
        match Otp::parse(&otp) {
            Ok(o) => Some(o),
            Err(e) => return Error::AdminOtp(e).to_response(),
        }
    };
    let what = match &admin {
        Some(o) => format!("admin OTP pubid={}", o.public_id()),
        None => "master key".to_owned(),
    };
    let mut secrets = Vec::new();
    if !master_key.is_empty() {
        secrets.push(Unlock::MasterKey(master_key));
    }
    if let Some(o) = admin {
        secrets.push(Unlock::AdminOtp(o));
    }
    let this = Arc::clone(service);
    let result = service
        .on_device(move || {
            let backend = this.backend();
            secrets
                .iter()
                .try_for_each(|secret| backend.unlock(secret))
                .map_err(Error::Backend)
        })
        .await;
    match result {
        Ok(()) => {
            service.log.info(&format!(
                "hsm unlock: done ({what}), peer_pid={}",
                pid(peer)
            ));
            Response::Verdict { status: Status::Ok }
        }
        Err(e) => {
            service
                .log
                .warn(&format!("hsm unlock ({what}), peer_pid={}: {e}", pid(peer)));
            e.to_response()
        }
    }
}

/// `counters export`: every record.
pub async fn counters_export(service: &Arc<Service>) -> Response {
    match service.db.export().await {
        Ok(records) => Response::Counters { records },
        Err(e) => failed(service, &e.into()),
    }
}

/// `counters merge`, `counters import-ykval`: per key the higher record
/// wins, nothing is lowered.
pub async fn counters_merge(
    service: &Arc<Service>,
    records: Vec<CounterRecord>,
    peer: &Peer,
) -> Response {
    if let Some(bad) = records
        .iter()
        .find(|r| PublicId::parse(&r.public_id).is_err())
    {
        return Error::NotAPublicId(bad.public_id.clone()).to_response();
    }
    let n = records.len();
    match service.db.merge(records).await {
        Ok(m) => {
            service.log.info(&format!(
                "counters merge: {n} records, {} raised, {} unchanged, peer_pid={}",
                m.raised,
                m.unchanged,
                pid(peer)
            ));
            Response::Merged {
                raised: m.raised,
                unchanged: m.unchanged,
            }
        }
        Err(e) => failed(service, &e.into()),
    }
}

/// `ykadmin counters reset` (and `import-ykksm --force` of another
/// secret): the key's next generation, bound to `aeads`, or with none
/// given to every AEAD the store holds for it now. Written to the log like
/// a verification.
pub async fn counters_reset(
    service: &Arc<Service>,
    public_id: &str,
    aeads: Vec<Fingerprint>,
    reason: &str,
    peer: &Peer,
) -> Response {
    let id = match PublicId::parse(public_id) {
        Ok(id) if !id.is_empty() => id,
        _ => return Error::NotAPublicId(public_id.to_owned()).to_response(),
    };
    let aeads = if aeads.is_empty() {
        let this = Arc::clone(service);
        let id_c = id.clone();
        match service.blocking(move || current_aeads(&this, &id_c)).await {
            Ok(found) => found,
            Err(e) => return e.to_response(),
        }
    } else {
        aeads
    };
    match service.db.reset(id.to_string(), aeads).await {
        Ok(r) => {
            service.log.info(&format!(
                "counters-reset pubid={id} generation={} aeads={} reason=\"{}\" peer_uid={} peer_pid={}",
                r.generation,
                r.aeads,
                escape(reason),
                peer.uid,
                pid(peer)
            ));
            Response::Reset {
                generation: r.generation,
                aeads: r.aeads,
            }
        }
        Err(e) => failed(service, &e.into()),
    }
}

/// The fingerprints of every AEAD the store holds for `id`, one per
/// configured key handle that has one. None, or one that cannot be read,
/// refuses the reset.
fn current_aeads(service: &Service, id: &PublicId) -> Result<Vec<Fingerprint>, Error> {
    let config = &service.config;
    let mut found = Vec::new();
    for kh in &config.key_handles {
        let store = config.aead_store(vec![kh.clone()]);
        match store.lookup(id) {
            Ok(Some(a)) => found.push(a.fingerprint()),
            Ok(None) => {}
            Err(e) => return Err(Error::ResetStore(e)),
        }
    }
    if found.is_empty() {
        return Err(Error::NoAeadToReset {
            public_id: id.clone(),
            aead_dir: config.aead_dir.clone(),
        });
    }
    Ok(found)
}

/// A failure of the daemon's own (the database), logged and answered.
fn failed(service: &Service, e: &Error) -> Response {
    service.log.error(&e.to_string());
    e.to_response()
}
