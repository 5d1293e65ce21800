//! Calibration tokens: a text file tokenized with the checkpoint's tokenizer, a file of token ids,
//! or the small default text shipped in the repo; cut into sequences of `seqlen` tokens.
//!
//! The default text (data/calibration/default.txt) and the evaluation text beside it
//! (data/calibration/eval.txt) were written for this project, so they carry no third-party
//! licence. They are small (about 5 and 2 KB): enough to exercise the pipeline and to quantize the
//! tiny fixtures; a real 7B run wants ~128 x 2048 tokens of a corpus such as C4 or WikiText.

use crate::model::tokenizer::{parse_id_list, TextTokenizer, NO_TOKENIZER};
use crate::{LabError, Result};
use std::path::{Path, PathBuf};

/// The shipped calibration text.
pub const DEFAULT_TEXT: &str = include_str!("../../data/calibration/default.txt");
/// A different shipped text, for held-out perplexity.
pub const EVAL_TEXT: &str = include_str!("../../data/calibration/eval.txt");

/// The published tools' default number of calibration sequences.
pub const DEFAULT_NSAMPLES: usize = 128;
/// The published tools' default sequence length (capped by the model's context).
pub const DEFAULT_SEQLEN: usize = 2048;

#[derive(Debug, Clone, PartialEq)]
pub enum CalibSource {
    /// The shipped default text.
    Default,
    /// A UTF-8 text file, tokenized with the checkpoint's tokenizer (tokenizer.json or .model).
    Text(PathBuf),
    /// Token ids: a JSON array, or numbers separated by commas/whitespace.
    Ids(PathBuf),
}

impl CalibSource {
    pub fn describe(&self) -> String {
        match self {
            CalibSource::Default => "data/calibration/default.txt (shipped)".into(),
            CalibSource::Text(p) => format!("text {}", p.display()),
            CalibSource::Ids(p) => format!("token ids {}", p.display()),
        }
    }
}

/// All tokens of `src`. Text gets the tokenizer's BOS in front, as a prompt would.
pub fn load_tokens(src: &CalibSource, ckpt_dir: &Path, vocab_size: usize) -> Result<Vec<u32>> {
    let text_ids = |text: &str, what: &Path| -> Result<Vec<u32>> {
        let tok = TextTokenizer::from_checkpoint_dir(ckpt_dir)?.ok_or_else(|| {
            LabError::bad_checkpoint(
                ckpt_dir,
                format!(
                    "{NO_TOKENIZER} to tokenize the calibration text {}; pass token ids with \
                     --calib-ids instead",
                    what.display()
                ),
            )
        })?;
        tok.encode(text, true)
    };
    let ids = match src {
        CalibSource::Default => text_ids(DEFAULT_TEXT, Path::new("data/calibration/default.txt"))?,
        CalibSource::Text(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| LabError::io(p, e))?;
            text_ids(&text, p)?
        }
        CalibSource::Ids(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| LabError::io(p, e))?;
            let t = text.trim();
            let body = t
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(t);
            parse_id_list(body, &format!("--calib-ids {}", p.display()))?
        }
    };
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(LabError::invalid(
            format!("calibration {}", src.describe()),
            format!("token id {bad} is out of range for vocab_size {vocab_size}"),
        ));
    }
    Ok(ids)
}

/// Non-overlapping windows of `seqlen` tokens. `nsamples` given: exactly that many, or an error
/// if the tokens are too few; `None`: as many as fit, at most `DEFAULT_NSAMPLES`.
pub fn windows(
    ids: &[u32],
    seqlen: usize,
    nsamples: Option<usize>,
    what: &str,
) -> Result<Vec<Vec<u32>>> {
    if seqlen == 0 {
        return Err(LabError::invalid("--seqlen", "must be at least 1"));
    }
    let fit = ids.len() / seqlen;
    let want = nsamples.unwrap_or(fit.min(DEFAULT_NSAMPLES));
    if fit == 0 || want > fit || want == 0 {
        let need = seqlen * want.max(1);
        return Err(LabError::invalid(
            format!("calibration {what}"),
            format!(
                "too short: {} tokens, need at least {need} ({} sequence(s) of --seqlen {seqlen}); \
                 give a longer file, or lower --seqlen / --nsamples",
                ids.len(),
                want.max(1)
            ),
        ));
    }
    Ok(ids
        .chunks_exact(seqlen)
        .take(want)
        .map(<[u32]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_consecutive_and_short_input_is_an_error() {
        let ids: Vec<u32> = (0..25).collect();
        let w = windows(&ids, 8, None, "x").unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(w[1], (8..16).collect::<Vec<u32>>());
        assert_eq!(windows(&ids, 8, Some(2), "x").unwrap().len(), 2);
        let e = windows(&ids, 8, Some(4), "x").unwrap_err().to_string();
        assert!(e.contains("too short: 25 tokens, need at least 32"), "{e}");
        assert!(windows(&ids, 26, None, "x").is_err());
        assert!(windows(&ids, 0, None, "x").is_err());
    }

    #[test]
    fn ids_files_accept_json_and_plain_lists() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, "[1, 2, 3]\n").unwrap();
        let b = dir.path().join("b.txt");
        std::fs::write(&b, "4 5\n6,7").unwrap();
        let ck = dir.path();
        assert_eq!(
            load_tokens(&CalibSource::Ids(a), ck, 10).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            load_tokens(&CalibSource::Ids(b.clone()), ck, 10).unwrap(),
            vec![4, 5, 6, 7]
        );
        let e = load_tokens(&CalibSource::Ids(b), ck, 6).unwrap_err();
        assert!(e.to_string().contains("token id 6"), "{e}");
        // A bad id names the flag and the file only (not --prompt-ids, whose parser it shares).
        let c = dir.path().join("c.txt");
        std::fs::write(&c, "1 2\n-3\n").unwrap();
        let e = load_tokens(&CalibSource::Ids(c.clone()), ck, 10)
            .unwrap_err()
            .to_string();
        let want = format!(
            "invalid --calib-ids {}: '-3' is not a token id",
            c.display()
        );
        assert!(e.starts_with(&want) && !e.contains("--prompt-ids"), "{e}");
        // No tokenizer: text calibration says to pass ids instead.
        let e = load_tokens(&CalibSource::Default, ck, 10).unwrap_err();
        assert!(e.to_string().contains("--calib-ids"), "{e}");
    }
}
