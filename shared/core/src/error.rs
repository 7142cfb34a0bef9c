//! What a failure keeps of its cause, and how a log line shows the whole chain. The errors of
//! every layer (`StoreError`, `KeyError`, `ServiceError`, `OAuthError`) hold the error beneath
//! them as their `source`, so the log says why, not just what; clients never see any of it.

use std::error::Error;
use std::fmt;

/// The error beneath a failure: a driver's, an SDK's, a task's, or the lower layer's own.
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

/// An error followed by each of its sources, `: ` between them, for a log line. A source that
/// reads exactly as the error before it is left out: the AWS SDK's operation errors display
/// their inner error and also return it as their source.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut next = self.0.source();
        while let Some(error) = next {
            let text = error.to_string();
            if text != previous {
                write!(f, ": {text}")?;
            }
            previous = text;
            next = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Layer {
        message: &'static str,
        #[source]
        source: Option<Cause>,
    }

    fn layer(message: &'static str, source: Option<Cause>) -> Cause {
        Box::new(Layer { message, source })
    }

    #[test]
    fn a_chain_shows_the_error_then_every_source_in_order() {
        let error = layer(
            "internal",
            Some(layer("store failure", Some(layer("disk I/O error", None)))),
        );
        assert_eq!(
            Chain(error.as_ref()).to_string(),
            "internal: store failure: disk I/O error"
        );
    }

    #[test]
    fn a_source_that_repeats_the_error_before_it_is_shown_once() {
        let error = layer(
            "GetItem: service error",
            Some(layer(
                "ThrottlingException: slow down",
                Some(layer("ThrottlingException: slow down", None)),
            )),
        );
        assert_eq!(
            Chain(error.as_ref()).to_string(),
            "GetItem: service error: ThrottlingException: slow down"
        );
    }
}
