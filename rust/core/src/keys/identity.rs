//! Who can open a file and who a file is sealed for, as traits, in the
//! spirit of age's `Identity` and `Recipient`: the reader asks identities
//! to unwrap stanzas, the writer asks key wrappers to wrap the data key it
//! drew. JWKs implement both; the Python binding wraps key providers (an
//! HSM, a key service) as trait objects, so that one open asks every
//! source in order without an exception, a second header read or a reopen.
//!
//! Nothing an identity returns is believed: the reader checks each
//! candidate data key against the file's key commitment and header MAC
//! (FORMAT.md §4.4, §6.3) before any tensor is decrypted with it.

use std::fmt;
use std::sync::Arc;

use super::{Jwk, Recipient};
use crate::crypto::DataKey;
use crate::error::{Error, Result};

/// Something that may unwrap a file's data key from a recipient stanza.
pub trait Identity: Send + Sync + fmt::Debug {
    /// `None`: not this identity's stanza. `Some(Ok(key))`: a candidate
    /// data key, which the reader still checks. `Some(Err(Error::Integrity))`:
    /// its stanza, but it does not open; the search goes on. Any other
    /// error (a key service that fails, a malformed answer) ends the open.
    fn unwrap_stanza(&self, stanza: &Recipient) -> Option<Result<DataKey>>;
}

/// Something a file's data key can be sealed for: it returns one stanza,
/// which the writer checks ([`Recipient::check`]) before writing it.
pub trait KeyWrapper: Send + Sync + fmt::Debug {
    /// Wraps `key`, the data key the writer drew, into a stanza.
    fn wrap_data_key(&self, key: &DataKey) -> Result<Recipient>;

    /// The kid its stanzas carry, when it says so before wrapping (a rekey
    /// matches wrappers to the recipients that stay by it).
    fn kid(&self) -> Option<String> {
        None
    }
}

/// A key wrapper held to the stanza it stands for: what it returns must
/// carry `kid` (and `alg`, when given), else the write is refused. A rewrap
/// or rekey plans by the kid a wrapper names ([`KeyWrapper::kid`]); this
/// keeps the stanza written the one the plan was made for.
#[derive(Debug)]
pub(crate) struct Pinned {
    pub(crate) inner: Arc<dyn KeyWrapper>,
    pub(crate) kid: String,
    pub(crate) alg: Option<String>,
}

impl KeyWrapper for Pinned {
    fn wrap_data_key(&self, key: &DataKey) -> Result<Recipient> {
        let stanza = self.inner.wrap_data_key(key)?;
        let alg_ok = self.alg.as_ref().is_none_or(|alg| *alg == stanza.alg);
        if stanza.kid != self.kid || !alg_ok {
            return Err(Error::InvalidArgument(format!(
                "the key wrapper of kid {:?} returned a stanza of another kid or alg",
                self.kid
            )));
        }
        Ok(stanza)
    }

    fn kid(&self) -> Option<String> {
        Some(self.kid.clone())
    }
}

/// Key providers: identities asked after the loader's key ring, and only
/// when the ring opens nothing. They are listed only then, because listing
/// them may load plugins.
pub trait Providers: Send + Sync + fmt::Debug {
    /// The providers, in the order they are asked.
    fn identities(&self) -> Result<Vec<Arc<dyn Identity>>>;
}

impl Identity for Jwk {
    fn unwrap_stanza(&self, stanza: &Recipient) -> Option<Result<DataKey>> {
        super::unwrap(stanza, self)
    }
}

impl KeyWrapper for Jwk {
    fn wrap_data_key(&self, key: &DataKey) -> Result<Recipient> {
        super::wrap(key, self)
    }

    fn kid(&self) -> Option<String> {
        Some(Jwk::kid(self).to_owned())
    }
}

/// The data key in bytes a provider outside this crate returned: an
/// error, never a panic, unless it is exactly 32 bytes.
pub fn provided_key(bytes: &[u8]) -> Result<DataKey> {
    DataKey::from_bytes(bytes).ok_or_else(|| {
        Error::InvalidKey(format!(
            "a key provider returned a data key of {} bytes, not 32",
            bytes.len()
        ))
    })
}

/// A fixed list of providers.
impl Providers for Vec<Arc<dyn Identity>> {
    fn identities(&self) -> Result<Vec<Arc<dyn Identity>>> {
        Ok(self.clone())
    }
}
