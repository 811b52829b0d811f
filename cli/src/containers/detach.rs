//! Detach keys: the key sequence that, typed into an attached terminal, leaves the
//! container running and ends the CLI. Docker's grammar and default (`ctrl-p,ctrl-q`).

/// Docker's default sequence.
pub const DEFAULT: &str = "ctrl-p,ctrl-q";

/// Parses Docker's `--detach-keys` grammar: comma-separated keys, each a single
/// character or `ctrl-<c>` with `<c>` one of `a-z @ [ \ ] ^ _`. Empty means the default.
pub fn parse(spec: &str) -> Result<Vec<u8>, String> {
    let spec = if spec.is_empty() { DEFAULT } else { spec };
    let mut keys = Vec::new();
    for key in spec.split(',') {
        let lower = key.to_ascii_lowercase();
        let byte = match lower.strip_prefix("ctrl-") {
            Some(rest) if rest.len() == 1 => match rest.as_bytes()[0] {
                c @ b'a'..=b'z' => c - b'a' + 1,
                b'@' => 0,
                b'[' => 27,
                b'\\' => 28,
                b']' => 29,
                b'^' => 30,
                b'_' => 31,
                _ => return Err(unknown(key)),
            },
            _ if key.len() == 1 => key.as_bytes()[0],
            _ => return Err(unknown(key)),
        };
        keys.push(byte);
    }
    Ok(keys)
}

fn unknown(key: &str) -> String {
    format!(
        "invalid detach keys: unknown character {key:?} (use a single character or ctrl-<value> with <value> one of a-z, @, [, \\, ], ^, _)"
    )
}

/// Watches the input for the sequence. Bytes held back as a possible start of it are
/// forwarded unchanged as soon as the input diverges.
#[derive(Debug)]
pub struct Matcher {
    keys: Vec<u8>,
    matched: usize,
}

/// What one chunk of input comes to.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes to send to the container now.
    pub forward: Vec<u8>,
    /// The whole sequence was typed: detach (nothing after it is sent).
    pub detach: bool,
}

impl Matcher {
    pub fn new(keys: Vec<u8>) -> Matcher {
        Matcher { keys, matched: 0 }
    }

    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut forward = Vec::with_capacity(input.len());
        for &byte in input {
            if self.keys.get(self.matched) == Some(&byte) {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return Fed {
                        forward,
                        detach: true,
                    };
                }
                continue;
            }
            // Diverged: what was held back goes out, and this byte may start a new try.
            forward.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if self.keys.first() == Some(&byte) {
                self.matched = 1;
                if self.keys.len() == 1 {
                    return Fed {
                        forward,
                        detach: true,
                    };
                }
            } else {
                forward.push(byte);
            }
        }
        Fed {
            forward,
            detach: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_grammar_parses() {
        assert_eq!(parse(""), Ok(vec![16, 17]));
        assert_eq!(parse(DEFAULT), Ok(vec![16, 17]));
        assert_eq!(parse("ctrl-x,y"), Ok(vec![24, b'y']));
        assert_eq!(
            parse("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_"),
            Ok(vec![0, 27, 28, 29, 30, 31])
        );
        assert_eq!(parse("CTRL-A,a"), Ok(vec![1, b'a']));
        for bad in [",", "ctrl-", "ctrl-1", "ctrl-ab", "abc", "a,,b", "ctrl-x,"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("invalid detach keys"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_sequence_detaches_and_is_not_forwarded() {
        let mut m = Matcher::new(vec![16, 17]);
        assert_eq!(
            m.feed(b"ab\x10\x11cd"),
            Fed {
                forward: b"ab".to_vec(),
                detach: true
            }
        );
        // Split over two reads.
        let mut m = Matcher::new(vec![16, 17]);
        assert_eq!(m.feed(b"x\x10").forward, b"x".to_vec());
        assert!(m.feed(b"\x11").detach);
    }

    #[test]
    fn a_partial_match_that_diverges_is_forwarded_unchanged() {
        let mut m = Matcher::new(vec![16, 17]);
        let first = m.feed(b"\x10");
        assert_eq!((first.forward.len(), first.detach), (0, false));
        assert_eq!(
            m.feed(b"z"),
            Fed {
                forward: b"\x10z".to_vec(),
                detach: false
            }
        );
        // A repeated first key: the first goes out, the second starts the sequence.
        let mut m = Matcher::new(vec![16, 17]);
        assert_eq!(
            m.feed(b"\x10\x10\x11"),
            Fed {
                forward: b"\x10".to_vec(),
                detach: true
            }
        );
        let mut m = Matcher::new(vec![24, b'y']);
        assert_eq!(m.feed(b"\x18x").forward, b"\x18x".to_vec());
    }
}
