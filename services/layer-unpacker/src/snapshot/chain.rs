//! chainID (OCI image spec, config.md "Layer ChainID"):
//! `ChainID(L0) = DiffID(L0)`, `ChainID(L0|…|Ln) = sha256(ChainID(L0|…|Ln-1) + " " + DiffID(Ln))`.

use sha2::{Digest, Sha256};

/// A diff_id that is not a well-formed `sha256:<64 hex>` digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {0:?} (want sha256:<64 lowercase hex>)")]
pub struct ChainError(pub String);

/// Checks `sha256:<64 lowercase hex>`; the value is used in paths and hashes, so
/// nothing looser is accepted.
pub fn validate_digest(d: &str) -> Result<(), ChainError> {
    let ok = d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(ChainError(d.to_string()))
    }
}

/// chainIDs of every prefix of `diff_ids` (bottom layer first), same order.
pub fn chain_ids<S: AsRef<str>>(diff_ids: &[S]) -> Result<Vec<String>, ChainError> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let d = d.as_ref();
        validate_digest(d)?;
        let id = match out.last() {
            None => d.to_string(),
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(parent.as_bytes());
                h.update(b" ");
                h.update(d.as_bytes());
                format!("sha256:{}", hex::encode(h.finalize()))
            }
        };
        out.push(id);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())))
    }

    #[test]
    fn chain_of_one_is_the_diff_id() {
        let d = sha("a");
        assert_eq!(chain_ids(std::slice::from_ref(&d)).expect("valid"), vec![d]);
    }

    #[test]
    fn chain_follows_the_spec_formula() {
        let (a, b, c) = (sha("a"), sha("b"), sha("c"));
        let ids = chain_ids(&[&a, &b, &c]).expect("valid");
        let ab = sha(&format!("{a} {b}"));
        let abc = sha(&format!("{ab} {c}"));
        assert_eq!(ids, vec![a, ab, abc]);
    }

    #[test]
    fn known_vector() {
        // Computed independently with `printf '%s %s' A B | sha256sum`.
        let a = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
        let b = "sha256:0000000000000000000000000000000000000000000000000000000000000002";
        let ids = chain_ids(&[a, b]).expect("valid");
        assert_eq!(
            ids[1],
            "sha256:e0213565073dd272477933ef550455db21856966e444074f1492aef0939305ac"
        );
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:ABCDEF0000000000000000000000000000000000000000000000000000000000",
            "sha256:../../etc/passwd",
        ] {
            assert!(chain_ids(&[bad]).is_err(), "{bad:?} accepted");
        }
    }
}
